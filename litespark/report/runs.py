"""Read what a training run left behind: ``metrics.jsonl``, ``config.yaml``, ``environment.json``.

The trainer appends one JSON object per event to ``metrics.jsonl`` on rank 0, with energy already
summed over every rank of every node: ``setup`` (process start to the first step), ``train``
(a logging interval: time and energy of training alone; the first step of each start is an interval
of its own marked ``warmup``), ``reference`` (DPO's reference pass, once per run, timed apart from
the set-up it belongs to), ``eval`` and ``checkpoint`` (pauses, with
their own time and energy) and ``valid`` (validation loss).  A run that is still going or was killed
may end in a half-written line; it is skipped and counted, never fatal.  A resumed run logs again
the steps after its checkpoint; the later records are the ones the final model trained through,
the earlier ones are work that was lost (still counted in time and energy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from litespark.config import ConfigError


@dataclass
class Run:
    """One run directory's records, parsed."""

    path: Path
    train: list[dict]
    """Training intervals the final model went through (by step, last record of each step wins)."""
    redone: list[dict]
    """Training intervals whose steps were trained again after a resume (lost work)."""
    valid: list[dict]
    setup: list[dict]
    pauses: list[dict]
    """``eval`` and ``checkpoint`` records."""
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    skipped_lines: int = 0
    reference: list[dict] = field(default_factory=list)
    """DPO's reference passes (``cached`` when read from the cache instead)."""

    @property
    def packed(self) -> bool:
        """Fine-tuning data (SFT, DPO): rows are packed examples, not full sequences."""
        return self.config.get("data", {}).get("source") in ("sft", "dpo")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def world_size(self) -> int:
        for record in self.setup:
            if "world_size" in record:
                return int(record["world_size"])
        return int(self.environment.get("world_size", 1))

    @property
    def tokens_per_step(self) -> int:
        return int(self.config["data"]["global_batch_size"]) * int(self.config["model"]["seq_length"])


def load_run(path: str | Path) -> Run:
    """Parse ``path`` (a run directory); one-line ConfigError when it holds no metrics."""
    root = Path(path)
    metrics = root / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{root}: no metrics.jsonl (not a Litespark run directory, or it has not logged yet)")
    records, skipped = [], 0
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            skipped += 1
    by_split: dict[str, list[dict]] = {}
    for r in records:
        by_split.setdefault(r.get("split", "train"), []).append(r)
    train, redone = _dedupe(by_split.get("train", []))
    if not train:
        raise ConfigError(f"{root}: metrics.jsonl has no complete training interval yet")
    config = yaml.safe_load((root / "config.yaml").read_text()) if (root / "config.yaml").is_file() else {}
    env = json.loads((root / "environment.json").read_text()) if (root / "environment.json").is_file() else {}
    if not config:
        raise ConfigError(f"{root}: config.yaml is missing (the trainer writes it at start)")
    pauses = by_split.get("eval", []) + by_split.get("checkpoint", [])
    return Run(
        root,
        train,
        redone,
        by_split.get("valid", []),
        by_split.get("setup", []),
        pauses,
        config,
        env,
        skipped,
        by_split.get("reference", []),
    )


def _dedupe(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Intervals in file order; when a step shows up again (after a resume), the earlier intervals
    from that step on were lost work."""
    kept: list[dict] = []
    redone: list[dict] = []
    for r in records:
        while kept and kept[-1]["step"] >= r["step"]:
            redone.append(kept.pop())
        kept.append(r)
    return kept, redone
