"""One forward/backward of a preset on fixed random tokens; rank 0 writes loss and grad norm as JSON.

Run under torchrun by tests (TP parity): ``torchrun --nproc-per-node N tests/helpers/workers/loss_worker.py
--out FILE --set parallel.tensor_parallel=N``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from litespark.config import apply_overrides, resolve
from litespark.config.cli import quiet_optional_dependency_warnings
from litespark.config.presets import get_preset
from litespark.model.build import build_model, position_ids_for
from litespark.runtime.distributed import destroy_distributed, init_distributed


def main() -> int:
    quiet_optional_dependency_warnings()
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    plan = resolve(apply_overrides(get_preset(args.preset), args.overrides), int(os.environ.get("WORLD_SIZE", "1")))
    m = plan.config.model
    init_distributed(plan.tensor_parallel, plan.config.run.seed)
    try:
        model = build_model(plan)
        gen = torch.Generator().manual_seed(4321)  # same tokens on every rank and every TP size
        tokens = torch.randint(0, m.vocab_size, (plan.micro_batch_size, m.seq_length + 1), generator=gen)
        inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        loss = model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels).mean()
        loss.backward()
        # Sum of squared grads over this rank's shard; TP-replicated params (norms) counted once.
        local, replicated = 0.0, 0.0
        for p in model.parameters():
            sq = float(p.grad.double().pow(2).sum())
            if getattr(p, "tensor_model_parallel", False):
                local += sq
            else:
                replicated += sq
        total = torch.tensor([local], dtype=torch.float64)
        from megatron.core import parallel_state

        torch.distributed.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
        if torch.distributed.get_rank() == 0:
            with open(args.out, "w") as f:
                json.dump({"loss": float(loss), "grad_sq": float(total) + replicated}, f)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
