"""Each rank resolves a micro-batch (``--differ``: 1 + rank, as GPUs of different memory would), then the
trainer's start-up check runs; each rank writes what it said to ``OUT.rankR``.

``torchrun --nproc-per-node 2 tests/helpers/workers/micro_batch_worker.py --out FILE [--differ]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from litespark.config import ConfigError, resolve
from litespark.config.presets import get_preset
from litespark.runtime.distributed import destroy_distributed, init_distributed
from litespark.training.loop import _check_same_micro_batch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--differ", action="store_true")
    args = parser.parse_args()
    cfg = get_preset("tiny")
    rank = int(os.environ["RANK"])
    cfg.data.micro_batch_size = 1 + rank if args.differ else 2
    plan = resolve(cfg, int(os.environ["WORLD_SIZE"]))
    init_distributed(1, cfg.run.seed)
    try:
        _check_same_micro_batch(plan)
        said = "ok"
    except ConfigError as exc:
        said = str(exc)
    finally:
        destroy_distributed()
    Path(f"{args.out}.rank{rank}").write_text(said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
