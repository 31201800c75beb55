"""Data-parallel training of the TE-like toy model with the fp32-gradient link on or off.

Each rank trains on its share of one global batch through ``build_engine`` and ``train_step``
(DeepSpeed's ``BF16_Optimizer`` all-reduces the fp32 buffers, then each rank steps its partition);
rank 0 writes the gradient norms and the weights.  ``tests/runtime/test_fp32_grads.py`` compares the linked
run (first backward overwrites the buffers, reduced in fp32) with DeepSpeed's own accumulation.

    torchrun --nproc-per-node 2 tests/helpers/workers/fp32_link_worker.py --link 1 --out OUT.pt
"""

from __future__ import annotations

import argparse
import os

import torch

from litespark.config.cli import quiet_optional_dependency_warnings
from litespark.runtime.distributed import destroy_distributed
from tests.helpers.te_like import train_toy


def main() -> int:
    quiet_optional_dependency_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--link", type=int, choices=(0, 1), required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        engine, _, weights, norms = train_toy(True, bool(args.link), world_size=int(os.environ["WORLD_SIZE"]))
        linked = len(engine.litespark_fp32_grads.slots)
        if torch.distributed.get_rank() == 0:
            torch.save({"weights": weights, "norms": norms, "linked": linked}, args.out)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
