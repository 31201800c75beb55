"""Summarise trainer metrics.jsonl files into a markdown table, a JSON file and a bar chart.

    python benchmarks/summarize_train_runs.py OUT_STEM RUN.jsonl[=LABEL] ...

The steady-state figures are the last logging interval of each run (the first interval holds
start-up, TE kernel selection and the zero-lr warm-up steps).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def last_interval(path: Path) -> dict:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    if not train:
        raise SystemExit(f"{path}: no train records")
    return train[-1]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    stem, rows = Path(argv[0]), []
    for item in argv[1:]:
        path, _, label = item.partition("=")
        r = last_interval(Path(path))
        rows.append({"run": label or Path(path).stem, "step": r["step"], "loss": r["loss"],
                     "tokens_per_s_per_gpu": r["tokens_per_s_per_gpu"], "mfu": r.get("mfu"),
                     "power_w_per_gpu": r.get("power_w_per_gpu"), "joules_per_token": r.get("joules_per_token"),
                     "peak_memory_gib": r.get("peak_memory_gib")})
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| run | tokens/s/GPU | MFU (BF16 peak) | W/GPU | J/token | peak GiB | loss @ step |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        lines.append(f"| {r['run']} | {r['tokens_per_s_per_gpu']:,.0f} | {fmt(r['mfu'] and 100 * r['mfu'], '.1f')}% | "
                     f"{fmt(r['power_w_per_gpu'], '.0f')} | {fmt(r['joules_per_token'], '.4f')} | "
                     f"{fmt(r['peak_memory_gib'], '.1f')} | {r['loss']:.3f} @ {r['step']} |")
    stem.with_suffix(".table.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["run"] for r in rows]
    a.barh(names, [r["tokens_per_s_per_gpu"] for r in rows], color="tab:blue")
    a.set_xlabel("tokens/s per GPU")
    b.barh(names, [r["joules_per_token"] or 0 for r in rows], color="tab:green")
    b.set_xlabel("joules per token")
    b.set_yticks([])
    fig.suptitle(stem.name)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
