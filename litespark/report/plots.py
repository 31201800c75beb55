"""PNG plots of one run, or of several overlaid (A/B), from parsed runs (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from litespark.report.runs import Run
from litespark.report.summary import JOULES_PER_KWH, cumulative_tokens


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    _plt().close(fig)
    return path


def _series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(t, r[key]) for t, r in zip(cumulative_tokens(run), run.train) if r.get(key) is not None]
    return (np.array([p[0] for p in pts]) / 1e6, np.array([p[1] for p in pts])) if pts else (np.array([]), np.array([]))


def plot_runs(runs: list[Run], out_dir: Path, prefix: str = "") -> list[Path]:
    """loss, throughput (tokens/s per GPU, MFU), energy (W per GPU, cumulative kWh), optimizer
    (grad norm, LR) against tokens trained; one line per run.  Panels without data say so."""
    plt = _plt()
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        x, y = _series(run, "loss")
        ax.plot(x, y, label=f"{run.name} train")
        if run.valid:
            steps = {r["step"]: t for t, r in zip(cumulative_tokens(run), run.train)}
            vx = [steps.get(v["step"]) for v in run.valid]
            pts = [(t / 1e6, v["loss"]) for t, v in zip(vx, run.valid) if t is not None]
            if pts:
                ax.plot(*zip(*pts), "o--", label=f"{run.name} valid")
    ax.set_xlabel("tokens trained (M)")
    ax.set_ylabel("loss")
    ax.legend()
    paths.append(_save(fig, out_dir / f"{prefix}loss.png"))

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        a.plot(*_series(run, "tokens_per_s_per_gpu"), label=run.name)
        x, y = _series(run, "mfu")
        if len(x):
            b.plot(x, 100 * y, label=run.name)
    a.set_xlabel("tokens trained (M)"), a.set_ylabel("tokens/s per GPU"), a.legend()
    b.set_xlabel("tokens trained (M)"), b.set_ylabel("MFU (% of dense BF16 peak)")
    if not any(len(_series(r, "mfu")[0]) for r in runs):
        b.text(0.5, 0.5, "no MFU (CPU run or unknown GPU)", ha="center", transform=b.transAxes)
    paths.append(_save(fig, out_dir / f"{prefix}throughput.png"))

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    any_energy = False
    for run in runs:
        x, y = _series(run, "power_w_per_gpu")
        if len(x):
            any_energy = True
            a.plot(x, y, label=run.name)
            ex, ey = _series(run, "energy_j")
            b.plot(ex, np.cumsum(ey) / JOULES_PER_KWH, label=run.name)
    a.set_xlabel("tokens trained (M)"), a.set_ylabel("average power per GPU (W)")
    b.set_xlabel("tokens trained (M)"), b.set_ylabel("cumulative training energy, all GPUs (kWh)")
    for ax in (a, b):
        if not any_energy:
            ax.text(0.5, 0.5, "no energy counter (CPU run)", ha="center", transform=ax.transAxes)
        elif len(runs) > 1:
            ax.legend()
    paths.append(_save(fig, out_dir / f"{prefix}energy.png"))

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        a.plot(*_series(run, "grad_norm"), label=run.name)
        b.plot(*_series(run, "lr"), label=run.name)
    a.set_xlabel("tokens trained (M)"), a.set_ylabel("gradient norm (before clipping)")
    b.set_xlabel("tokens trained (M)"), b.set_ylabel("learning rate")
    if len(runs) > 1:
        a.legend()
    paths.append(_save(fig, out_dir / f"{prefix}optimizer.png"))
    if any("rewards/margins" in r.train[-1] for r in runs):
        paths.append(_plot_preferences(plt, runs, out_dir / f"{prefix}preferences.png"))
    return paths


def _plot_preferences(plt, runs: list[Run], path: Path) -> Path:
    """DPO: the reward margin and accuracy, training and validation, against tokens trained."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("rewards/margins", "rewards/accuracies")):
        for run in runs:
            ax.plot(*_series(run, key), label=f"{run.name} train")
            steps = {r["step"]: t for t, r in zip(cumulative_tokens(run), run.train)}
            pts = [(steps[v["step"]] / 1e6, v[key]) for v in run.valid if key in v and v["step"] in steps]
            if pts:
                ax.plot(*zip(*pts), "o--", label=f"{run.name} valid")
        ax.set_xlabel("tokens trained (M)"), ax.set_ylabel(key)
        ax.legend()
    return _save(fig, path)
