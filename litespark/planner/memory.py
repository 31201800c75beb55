"""Predicted peak GPU memory of a Litespark run on the Transformer Engine backend, term by term.

Nothing here is fitted to a measurement: each term is bytes per parameter or per token from what the
code keeps alive at the peak, which is the start of the backward pass (every activation saved, the
logits and their gradient alive, the optimizer state resident).  Per GPU, with P the parameters held
by its tensor-parallel rank, d the data-parallel size and T = micro-batch x sequence tokens:

- weights: 2 bytes (BF16) or 4 (fp32) per parameter; ZeRO-3 keeps 1/d of them;
- optimizer: fp32 master weights and Adam's two moments, 12 bytes per parameter over d (8 in fp32
  training, where the weights are the master copy);
- gradients: fp32 buffers of the whole model (``precision.fp32_grad_accumulation``: 4 bytes), else
  the parameters' BF16 gradients (ZeRO-1: whole; ZeRO-2/3: 1/d), and, in ZeRO-1/2, DeepSpeed's
  contiguous BF16 copy of this rank's 1/d of them and its reduce buckets (two with
  ``overlap_comm``), and the optimizer step's fp32 copy of one parameter group
  (``zero_sub_group_size`` x 4 bytes);
- FP8 weight caches: an FP8 copy and an FP8 transpose of every FP8 weight, 2 bytes per parameter;
- activations, per layer and token (h hidden, f FFN, kv the key/value width, a the bytes of a GEMM
  input: 1 in FP8, 2 in BF16): the RMSNorm inputs (2 x 2h), the GEMM inputs (a h for QKV and FC1,
  a h / TP for the projection, a f / TP for FC2; in BF16 the projection's input is the attention
  output itself), Q, K and V after RoPE (2 (h + 2 kv) / TP), the attention output (2h / TP), FC1's
  output kept by SwiGLU (4f / TP);
- logits: BF16 logits and their fp32 gradient, 6 bytes per token and vocabulary entry / TP;
- a fixed allowance for cuBLAS / TE workspaces and the CUDA context's allocations.

docs/planner.md compares the prediction with measured peaks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from litespark.config import LitesparkConfig, RunPlan
from litespark.runtime.deepspeed_config import BUCKET_ELEMENTS, OVERLAP_COMM
from litespark.training.metrics import count_parameters

GIB = 2**30
WORKSPACE_BYTES = 1.0 * GIB
"""cuBLAS and TE workspaces, RNG states, the allocator's rounding: a fixed allowance."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes per GPU at the peak, by term."""

    weights: float
    optimizer: float
    gradients: float
    fp8_caches: float
    activations: float
    logits: float
    workspace: float

    @property
    def total(self) -> float:
        return sum(dataclasses.astuple(self))

    def gib(self) -> dict[str, float]:
        return {**{k: v / GIB for k, v in dataclasses.asdict(self).items()}, "total": self.total / GIB}


def activation_bytes_per_token_layer(cfg: LitesparkConfig) -> float:
    """Bytes one token keeps alive in one layer until its backward (see the module docstring)."""
    m, tp = cfg.model, cfg.parallel.tensor_parallel
    h, f = m.hidden_size, m.ffn_hidden_size
    kv = m.num_query_groups * (h // m.num_attention_heads)
    a = 1 if cfg.precision.fp8 else 2 if cfg.precision.bf16 else 4
    wide = 2 if cfg.precision.bf16 else 4  # bytes of an activation kept in the compute format
    norms = 2 * wide * h
    gemm_inputs = a * h + a * h + (a * h / tp if cfg.precision.fp8 else 0) + a * f / tp
    qkv = wide * (h + 2 * kv) / tp
    attention_out = wide * h / tp
    swiglu_in = 2 * wide * f / tp
    return norms + gemm_inputs + qkv + attention_out + swiglu_in


def estimate_memory(plan: RunPlan) -> MemoryEstimate:
    """Peak bytes per GPU of ``plan`` (te backend)."""
    cfg = plan.config
    m, par, prec = cfg.model, cfg.parallel, cfg.precision
    tp, dp = plan.tensor_parallel, plan.data_parallel
    n = count_parameters(m)
    params = n.total / tp
    weight_bytes = 2 if prec.bf16 else 4
    shard = dp if par.zero_stage == 3 else 1
    weights = params * weight_bytes / shard
    optimizer = params * (12 if prec.bf16 else 8) / dp
    if plan.fp32_grad_accumulation:
        gradients = params * 4
    else:
        grad_shard = 1 if par.zero_stage == 1 else dp
        gradients = params * weight_bytes / grad_shard
        if par.zero_stage in (1, 2):
            # DeepSpeed's grads_in_partition (ZeRO-2: the gradients above are views of it) and its
            # reduce buckets, both allocated at the first backward and kept for the run.
            if par.zero_stage == 1:
                gradients += params * weight_bytes / dp
            gradients += (2 if OVERLAP_COMM else 1) * BUCKET_ELEMENTS * weight_bytes
        if prec.bf16:
            group = min(plan.zero_sub_group_size or params, params / dp)
            gradients += group * 4
    fp8_caches = 0.0
    if prec.fp8:
        fp8_params = n.transformer_matmul + (n.lm_head if plan.fp8_output_layer else 0)
        fp8_caches = 2 * fp8_params / tp
    tokens = plan.micro_batch_size * m.seq_length
    activations = tokens * m.num_layers * activation_bytes_per_token_layer(cfg)
    logits = tokens * m.vocab_size / tp * 6
    return MemoryEstimate(weights, optimizer, gradients, fp8_caches, activations, logits, WORKSPACE_BYTES)
