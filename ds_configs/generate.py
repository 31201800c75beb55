"""Regenerate the reference DeepSpeed configs in this folder from the presets.

    python ds_configs/generate.py            # rewrite zero1.json, zero2.json, zero3.json
    python ds_configs/generate.py --check    # exit 1 if a file differs from what the code derives

They are snapshots of ``to_deepspeed_config`` for the plan of the ``llama-3b`` preset on one 8-GPU H200
node (TP=1, global batch 64, the te backend, the micro-batch the planner takes there), so that a reader
can see the exact DeepSpeed settings a run uses; training never reads them.
Never edit them by hand: ``tests/config/test_ds_configs.py`` fails when they drift from the code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from litespark.config import apply_overrides, resolve
from litespark.config.presets import get_preset
from litespark.planner.gpus import GPUS
from litespark.runtime.deepspeed_config import to_deepspeed_config

HERE = Path(__file__).resolve().parent
PRESET, WORLD_SIZE = "llama-3b", 8


def render(stage: int) -> str:
    """The JSON text of ``zero{stage}.json``."""
    cfg = apply_overrides(get_preset(PRESET), [f"parallel.zero_stage={stage}", "data.global_batch_size=64"])
    plan = resolve(cfg, WORLD_SIZE, backend="te", gpu=GPUS["h200"])  # the micro-batch: the planner's
    return json.dumps(to_deepspeed_config(plan), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for stage in (1, 2, 3):
        path, text = HERE / f"zero{stage}.json", render(stage)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        fd, tmp = tempfile.mkstemp(dir=HERE, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python ds_configs/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
