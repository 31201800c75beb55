"""Litespark's own forward from a checkpoint, through the training path (model + DeepSpeed engine +
``checkpoint.load``), at any TP size; rank 0 writes the full-vocabulary logits.

    torchrun --nproc-per-node TP tests/helpers/workers/logits_worker.py --checkpoint RUN_DIR \
        --config-json CFG.json --tokens TOKENS.pt --out LOGITS.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from litespark.config import from_dict, resolve
from litespark.config.cli import quiet_optional_dependency_warnings
from litespark.model.build import build_model, position_ids_for
from litespark.runtime.distributed import destroy_distributed, init_distributed
from litespark.runtime.engine import build_engine
from litespark.training.resume import check_weights_source, load_weights


def main() -> int:
    quiet_optional_dependency_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config-json", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = from_dict(json.loads(Path(args.config_json).read_text()))
    cfg.parallel.tensor_parallel, cfg.parallel.zero_stage = world, 1
    cfg.data.global_batch_size = cfg.data.micro_batch_size  # set by the test: the tokens' batch
    plan = resolve(cfg, world)
    init_distributed(world, cfg.run.seed)
    try:
        from megatron.core import parallel_state as ps

        engine, _, _ = build_engine(plan, build_model(plan))
        load_weights(engine, check_weights_source(cfg, args.checkpoint))
        tokens = torch.load(args.tokens)
        engine.module.eval()
        with torch.no_grad():
            logits = engine.module(input_ids=tokens, position_ids=position_ids_for(tokens), attention_mask=None)
            parts = [torch.empty_like(logits) for _ in range(ps.get_tensor_model_parallel_world_size())]
            torch.distributed.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
            logits = torch.cat(parts, dim=-1)  # the vocabulary-parallel shards, in TP-rank order
        if torch.distributed.get_rank() == 0:
            torch.save(logits[..., : cfg.model.vocab_size].float().contiguous(), args.out)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
