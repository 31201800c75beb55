"""Small FP8-friendly models on one GPU, shared by the GPU tests (marker ``gpu``) of every tier."""

from __future__ import annotations

import torch

from litespark.config import apply_overrides, resolve
from litespark.config.presets import get_preset
from litespark.model.build import build_model
from litespark.runtime.distributed import init_distributed
from tests.helpers.batches import micro_batches

# Small, but FP8-friendly: every GEMM dimension a multiple of 16, tokens per batch a multiple of 16.
SHAPE = [
    "model.num_layers=2",
    "model.hidden_size=256",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=512",
    "model.vocab_size=1024",
    "model.seq_length=128",
    "data.micro_batch_size=2",
    "precision.bf16=true",
    "kernels.cuda_graphs=false",
]  # the graph tests turn them on


def build_on_gpu(backend: str, *overrides: str):
    """The tiny preset in :data:`SHAPE` with ``backend`` and ``overrides``, resolved into a plan, its
    process group up, and its model on the GPU; returns ``(plan, model)``."""
    plan = resolve(apply_overrides(get_preset("tiny"), [*SHAPE, f"kernels.backend={backend}", *overrides]))
    init_distributed(plan.tensor_parallel, plan.config.run.seed, graph_safe_rng=plan.cuda_graphs)
    return plan, build_model(plan).cuda()


def random_batch(plan, seed=0):
    """One micro-batch of random token ids on the GPU: ``(inputs, labels)``."""
    g = torch.Generator().manual_seed(seed)
    m = plan.config.model
    tokens = torch.randint(0, m.vocab_size, (plan.micro_batch_size, m.seq_length + 1), generator=g).cuda()
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def parameter_names(model) -> set[str]:
    """The model's parameter and buffer names without TE's FP8 ``_extra_state``."""
    return {k for k in model.state_dict() if not k.endswith("_extra_state")}


def losses_and_norms(engine, plan, steps: int, seed: int = 7) -> list[tuple[float, float]]:
    """(loss, gradient norm) of ``steps`` trainer steps of 2 micro-batches of 2 on one fixed batch
    (4 sequences of token ids below 64 drawn from ``seed``)."""
    from litespark.training.step import train_step

    seq = plan.config.model.seq_length
    data = torch.randint(0, 64, (4, seq + 1), generator=torch.Generator().manual_seed(seed)).cuda()
    batches = micro_batches(data)
    return [(float(train_step(engine, batches)), float(engine.get_global_grad_norm())) for _ in range(steps)]
