"""The numbers of a run report and of an A/B comparison, as pure functions of parsed runs.

Conventions: energy is NVML's counter summed over all GPUs of all nodes; "training" time and energy
are the logging intervals alone; pauses (evaluation, checkpoint saves), start-up and work lost to a
resume are accounted separately and included in the totals.  An interval without an energy reading
from every GPU leaves the energy figures to the intervals that have one, and says how many.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from litespark.report.runs import Run

DEFAULT_GRID_GCO2_PER_KWH = 450.0
"""Grams CO2-equivalent per kWh when none is given: roughly the world's average grid intensity in
the mid-2020s.  Pass your grid's (or your provider's) figure for a real estimate."""
JOULES_PER_KWH = 3.6e6


def _sum(records: list[dict], key: str) -> float:
    return float(sum(r.get(key) or 0.0 for r in records))


def goodput(productive_s: float, wall_s: float, once_per_job_s: float) -> dict:
    """Goodput: the share of the wall time spent on training steps the final model went through, minus
    waits for data; also in steady state, without what each job pays once (start-up, and the wait for
    its last checkpoint to be written), which a longer job amortises."""
    steady = wall_s - once_per_job_s
    return {
        "productive_seconds": productive_s,
        "goodput": productive_s / wall_s if wall_s > 0 else None,
        "steady_goodput": productive_s / steady if steady > 0 else None,
    }


def summarize(
    run: Run, grid_gco2_per_kwh: float = DEFAULT_GRID_GCO2_PER_KWH, price_per_gpu_hour: float | None = None
) -> dict:
    """Totals, rates and the energy account of ``run`` (see the module docstring)."""
    world = run.world_size
    # The first step of each start (``warmup``) counts with the start-up: first launches, FP8 state,
    # the checkpoint buffers.  Its tokens are trained tokens all the same.
    steady = [r for r in run.train if not r.get("warmup")]
    warmup = [r for r in run.train if r.get("warmup")]
    train_s = _sum(steady, "seconds")
    train_tokens = _sum(steady, "tokens")
    pause_s = {kind: _sum([p for p in run.pauses if p["split"] == kind], "seconds") for kind in ("eval", "checkpoint")}
    final_save_s = _sum([p for p in run.pauses if p["split"] == "checkpoint" and p.get("final")], "seconds")
    reference_s = _sum(run.reference, "seconds")
    setup_s = _sum(run.setup, "seconds") + _sum(warmup, "seconds") + reference_s
    redone_s = _sum(run.redone, "seconds")
    wall = train_s + sum(pause_s.values()) + setup_s + redone_s
    last = run.train[-1]
    if run.packed:  # rows of packed examples: the records count their real tokens
        tokens = int(_sum(run.train, "tokens"))
    else:
        tokens = int(last.get("consumed_samples", 0)) * int(run.config["model"]["seq_length"]) or int(train_tokens)
    out = {
        "run": run.name,
        "world_size": world,
        "steps": int(last["step"]),
        "tokens": tokens,
        "wall_seconds": wall,
        "train_seconds": train_s,
        "gpu_hours": wall * world / 3600.0,
        "setup_seconds": setup_s,
        "reference_seconds": reference_s if run.reference else None,
        "eval_seconds": pause_s["eval"],
        "checkpoint_seconds": pause_s["checkpoint"] - final_save_s,
        "final_checkpoint_seconds": final_save_s,
        "redone_seconds": redone_s,
        "redone_intervals": len(run.redone),
        "data_wait_seconds": _sum(steady, "data_wait_s"),
        **goodput(train_s - _sum(steady, "data_wait_s"), wall, setup_s + final_save_s),
        "tokens_per_s_per_gpu": train_tokens / train_s / world if train_s else None,
        "final_loss": last["loss"],
        "final_valid_loss": run.valid[-1]["loss"] if run.valid else None,
        "skipped_lines": run.skipped_lines,
        "preference": preference_metrics(run),
    }
    mfus = [(r["mfu"], r["tokens"]) for r in steady if r.get("mfu") is not None]
    out["mfu"] = sum(m * t for m, t in mfus) / sum(t for _, t in mfus) if mfus else None
    measured = [r for r in steady if r.get("energy_j") is not None]
    out["energy_intervals_measured"], out["energy_intervals"] = len(measured), len(steady)
    if not measured:
        out["energy"] = None
        if price_per_gpu_hour is not None:
            out["cost"] = out["gpu_hours"] * price_per_gpu_hour
        return out
    train_j = _sum(measured, "energy_j")
    measured_tokens = _sum(measured, "tokens")
    measured_s = _sum(measured, "seconds")
    pause_j = {kind: _sum([p for p in run.pauses if p["split"] == kind], "energy_j") for kind in ("eval", "checkpoint")}
    setup_j, redone_j = _sum(run.setup, "energy_j") + _sum(warmup, "energy_j"), _sum(run.redone, "energy_j")
    total_j = train_j + sum(pause_j.values()) + setup_j + redone_j
    kwh = total_j / JOULES_PER_KWH
    out["energy"] = {
        "total_kwh": kwh,
        "train_kwh": train_j / JOULES_PER_KWH,
        "eval_kwh": pause_j["eval"] / JOULES_PER_KWH,
        "checkpoint_kwh": pause_j["checkpoint"] / JOULES_PER_KWH,
        "setup_kwh": setup_j / JOULES_PER_KWH,
        "redone_kwh": redone_j / JOULES_PER_KWH,
        "train_joules_per_token": train_j / measured_tokens,
        "all_in_joules_per_token": total_j / tokens if tokens else None,
        "kwh_per_billion_tokens": kwh / (tokens / 1e9) if tokens else None,
        "avg_power_w_per_gpu": train_j / measured_s / world,
        "grid_gco2_per_kwh": grid_gco2_per_kwh,
        "co2_kg": kwh * grid_gco2_per_kwh / 1000.0,
    }
    if price_per_gpu_hour is not None:
        out["cost"] = out["gpu_hours"] * price_per_gpu_hour
    return out


def preference_metrics(run: Run) -> dict | None:
    """DPO: TRL's metrics of the last training interval and the last evaluation (None otherwise)."""
    from litespark.dpo.loss import METRICS

    if METRICS[0] not in run.train[-1]:
        return None
    valid = run.valid[-1] if run.valid and METRICS[0] in run.valid[-1] else {}
    return {name: (run.train[-1][name], valid.get(name)) for name in METRICS}


def cumulative_tokens(run: Run) -> np.ndarray:
    return np.cumsum([r["tokens"] for r in run.train], dtype=np.float64)


def loss_at_tokens(run: Run, tokens: float) -> float:
    """Training loss interpolated at ``tokens`` (each interval's loss placed at its end)."""
    x = cumulative_tokens(run)
    y = np.array([r["loss"] for r in run.train], dtype=np.float64)
    return float(np.interp(tokens, x, y))


def compare(a: Run, b: Run, **kwargs) -> dict:
    """B against A: throughput ratio, energy saving, MFU of each, loss at equal tokens."""
    sa, sb = summarize(a, **kwargs), summarize(b, **kwargs)
    out: dict[str, Any] = {"a": sa, "b": sb}
    ta, tb = sa["tokens_per_s_per_gpu"], sb["tokens_per_s_per_gpu"]
    out["throughput_ratio"] = tb / ta if ta and tb else None
    ea, eb = sa["energy"], sb["energy"]
    if ea and eb:
        out["energy_per_token_ratio"] = eb["train_joules_per_token"] / ea["train_joules_per_token"]
        out["energy_saving_percent"] = 100.0 * (1.0 - out["energy_per_token_ratio"])
    else:
        out["energy_per_token_ratio"] = out["energy_saving_percent"] = None
    common = float(min(cumulative_tokens(a)[-1], cumulative_tokens(b)[-1]))
    out["equal_tokens"] = common
    out["loss_at_equal_tokens"] = {"a": loss_at_tokens(a, common), "b": loss_at_tokens(b, common)}
    return out
