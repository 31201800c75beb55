"""``python -m litespark.report``: what a run cost and what it bought, from its own records.

    python -m litespark.report RUN_DIR [--grid-gco2-per-kwh G] [--price-per-gpu-hour P]
    python -m litespark.report --compare RUN_A RUN_B [--out DIR]

The first writes ``RUN_DIR/report.md`` and ``RUN_DIR/report_{loss,throughput,energy,optimizer}.png``;
the second ``DIR/compare.md`` and ``DIR/compare_*.png`` (DIR defaults to RUN_B), B measured against
A.  Nothing is re-run: only ``metrics.jsonl``, ``config.yaml`` and ``environment.json`` are read, so a
run still in progress is reported up to its last complete interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from litespark.config import ConfigError
from litespark.config.cli import user_errors_exit_2
from litespark.files import atomic_write_text
from litespark.log import get_logger, setup_logging
from litespark.report.plots import plot_runs
from litespark.report.runs import Run, load_run
from litespark.report.summary import DEFAULT_GRID_GCO2_PER_KWH, compare, summarize

log = get_logger(__name__)


def _f(value, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_markdown(run: Run, s: dict, plots: list[Path]) -> str:
    env, m = run.environment, run.config["model"]
    hw = f"{s['world_size']} x {env.get('gpu', 'CPU')}"
    lines = [
        f"# Run report: {run.name}",
        "",
        f"{run.config.get('preset', 'custom')} ({m['num_layers']} x {m['hidden_size']}, sequence {m['seq_length']}), "
        f"{hw}, git {str(env.get('git_revision') or '?')[:10]}; versions: "
        + ", ".join(f"{k} {env[k]}" for k in ("torch", "megatron_core", "deepspeed", "transformer_engine") if k in env)
        + ".",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {s['steps']:,} |",
        f"| tokens trained | {s['tokens']:,} ({s['tokens'] / 1e9:.3f} B) |",
        f"| wall time | {_hms(s['wall_seconds'])} (training {_hms(s['train_seconds'])}) |",
        f"| goodput (productive training time / wall time) | {_f(s['goodput'] and 100 * s['goodput'], '.1f', '%')}"
        f" ({_f(s['steady_goodput'] and 100 * s['steady_goodput'], '.1f', '%')} without start-up and the final save) |",
        f"| GPU-hours | {s['gpu_hours']:.3f} |",
        f"| tokens/s per GPU (training intervals) | {_f(s['tokens_per_s_per_gpu'])} |",
        f"| MFU (token-weighted, of dense BF16 peak) | {_f(s['mfu'] and 100 * s['mfu'], '.1f', '%')} |",
        f"| final training loss | {s['final_loss']:.4f} |",
        f"| final validation loss | {_f(s['final_valid_loss'], '.4f')} |",
    ]
    if "cost" in s:
        lines.append(f"| cost at the given price per GPU-hour | {s['cost']:,.2f} |")
    e = s["energy"]
    lines += ["", "## Energy", ""]
    if e is None:
        lines.append(
            "No energy figures: this run had no NVML energy counter on every GPU (a CPU run, or GPUs "
            "without the counter), so energy is not reported rather than guessed."
        )
    else:
        partial = s["energy_intervals_measured"] < s["energy_intervals"]
        lines += [
            "| | |",
            "|---|---|",
            f"| energy, all GPUs of all nodes | {e['total_kwh']:.4f} kWh |",
            f"| joules per token (training intervals) | {e['train_joules_per_token']:.4f} |",
            f"| joules per token, all-in (with start-up, pauses and lost work) | {_f(e['all_in_joules_per_token'], '.4f')} |",
            f"| kWh per billion tokens | {_f(e['kwh_per_billion_tokens'], ',.1f')} |",
            f"| average power per GPU while training | {e['avg_power_w_per_gpu']:.0f} W |",
            f"| estimated CO2e at {e['grid_gco2_per_kwh']:.0f} g/kWh | {e['co2_kg']:.3f} kg |",
        ]
        if e["grid_gco2_per_kwh"] == DEFAULT_GRID_GCO2_PER_KWH:
            lines.append(
                f"\nThe grid intensity is the default ({DEFAULT_GRID_GCO2_PER_KWH:.0f} g CO2e/kWh, roughly "
                "the world average); pass `--grid-gco2-per-kwh` for your grid."
            )
        if partial:
            lines.append(
                f"\nOnly {s['energy_intervals_measured']} of {s['energy_intervals']} intervals had a reading "
                "from every GPU; the energy figures cover those intervals."
            )
    lines += ["", "## Where the time went", "", "| phase | time | share | energy |", "|---|---|---|---|"]
    kwh = (lambda k: f"{e[k]:.4f} kWh") if e else (lambda k: "-")
    share = (lambda k: _f(100 * s[k] / s["wall_seconds"], ".1f", "%")) if s["wall_seconds"] else (lambda k: "-")
    lines += [
        f"| productive training (goodput) | {_hms(s['productive_seconds'])} | {share('productive_seconds')} | "
        "(inside the intervals) |",
        f"| training intervals | {_hms(s['train_seconds'])} | {share('train_seconds')} | {kwh('train_kwh')} |",
        f"| ... of which waiting for data | {_hms(s['data_wait_seconds'])} | {share('data_wait_seconds')} | "
        "(inside the intervals) |",
        f"| evaluation | {_hms(s['eval_seconds'])} | {share('eval_seconds')} | {kwh('eval_kwh')} |",
        f"| checkpoint saves (training blocked) | {_hms(s['checkpoint_seconds'])} | {share('checkpoint_seconds')} | "
        f"{kwh('checkpoint_kwh')} |",
        f"| final checkpoint (after the last step: its copy and write) | {_hms(s['final_checkpoint_seconds'])} | "
        f"{share('final_checkpoint_seconds')} | (in the checkpoint energy) |",
        f"| start-up (model build, data, resume, each start's first step) | {_hms(s['setup_seconds'])} | {share('setup_seconds')} | "
        f"{kwh('setup_kwh')} |",
        *(
            [
                f"| ... of which the DPO reference pass | {_hms(s['reference_seconds'])} | {share('reference_seconds')} | - |"
            ]
            if s["reference_seconds"] is not None
            else []
        ),
        f"| lost to restarts ({s['redone_intervals']} intervals trained again after a resume) | "
        f"{_hms(s['redone_seconds'])} | {share('redone_seconds')} | {kwh('redone_kwh')} |",
    ]
    if s["preference"] is not None:
        lines += [
            "",
            "## Preferences (DPO)",
            "",
            "| metric | last training interval | last validation |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {t:.4f} | {_f(v, '.4f')} |" for k, (t, v) in s["preference"].items()]
    if s["skipped_lines"]:
        lines.append(
            f"\n{s['skipped_lines']} incomplete line(s) at the end of metrics.jsonl ignored "
            "(the run is still going or was killed mid-write)."
        )
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def compare_markdown(a: Run, b: Run, c: dict, plots: list[Path]) -> str:
    sa, sb = c["a"], c["b"]
    ea, eb = sa["energy"], sb["energy"]
    lines = (
        [
            f"# {b.name} against {a.name}",
            "",
            "| | A: " + a.name + " | B: " + b.name + " | B / A |",
            "|---|---|---|---|",
            f"| tokens/s per GPU | {_f(sa['tokens_per_s_per_gpu'])} | {_f(sb['tokens_per_s_per_gpu'])} | "
            f"{_f(c['throughput_ratio'], '.2f', 'x')} |",
            f"| MFU | {_f(sa['mfu'] and 100 * sa['mfu'], '.1f', '%')} | {_f(sb['mfu'] and 100 * sb['mfu'], '.1f', '%')} | |",
            f"| joules per token | {_f(ea and ea['train_joules_per_token'], '.4f')} | {_f(eb and eb['train_joules_per_token'], '.4f')} | "
            f"{_f(c['energy_per_token_ratio'], '.2f', 'x')} |",
            f"| kWh per billion tokens | {_f(ea and ea['kwh_per_billion_tokens'], ',.1f')} | "
            f"{_f(eb and eb['kwh_per_billion_tokens'], ',.1f')} | |",
            f"| training loss at {c['equal_tokens'] / 1e6:,.1f} M tokens | {c['loss_at_equal_tokens']['a']:.4f} | "
            f"{c['loss_at_equal_tokens']['b']:.4f} | |",
            "",
            f"Energy saving of B per token: {_f(c['energy_saving_percent'], '.1f', '%')}"
            + ("" if c["energy_saving_percent"] is not None else " (a run without energy readings)")
            + ".",
            "",
            "## Plots",
            "",
        ]
        + [f"![{p.stem}]({p.name})" for p in plots]
        + [""]
    )
    return "\n".join(lines)


@user_errors_exit_2("litespark.report")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m litespark.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="run directory")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="B against A")
    p.add_argument("--out", help="output directory for --compare (default: RUN_B)")
    p.add_argument(
        "--grid-gco2-per-kwh",
        type=float,
        default=DEFAULT_GRID_GCO2_PER_KWH,
        help=f"grid carbon intensity for the CO2 estimate (default {DEFAULT_GRID_GCO2_PER_KWH:.0f})",
    )
    p.add_argument("--price-per-gpu-hour", type=float, help="adds a cost line")
    args = p.parse_args(argv)
    setup_logging()
    if bool(args.run) == bool(args.compare):
        raise ConfigError("give either RUN_DIR or --compare RUN_A RUN_B")
    kwargs = {"grid_gco2_per_kwh": args.grid_gco2_per_kwh, "price_per_gpu_hour": args.price_per_gpu_hour}
    if args.run:
        run = load_run(args.run)
        s = summarize(run, **kwargs)
        plots = plot_runs([run], run.path, prefix="report_")
        text = run_markdown(run, s, plots)
        atomic_write_text(run.path / "report.md", text)
        print(text)
        log.info("wrote %s and %d plots", run.path / "report.md", len(plots))
        return 0
    a, b = load_run(args.compare[0]), load_run(args.compare[1])
    out = Path(args.out) if args.out else b.path
    out.mkdir(parents=True, exist_ok=True)
    c = compare(a, b, **kwargs)
    plots = plot_runs([a, b], out, prefix="compare_")
    text = compare_markdown(a, b, c, plots)
    atomic_write_text(out / "compare.md", text)
    print(text)
    log.info("wrote %s", out / "compare.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
