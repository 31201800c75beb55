"""Predicted step time, tokens/s and MFU of a Litespark run, as a sum of named costs.

Per micro-batch of T tokens on one GPU (TP the tensor-parallel size):

- GEMMs: 6 FLOPs per matmul parameter and token / TP, at :data:`GEMM_EFFICIENCY` of the FP8 peak
  (FP8 weights) or the BF16 peak (the rest);
- attention: 12 L h s FLOPs per token / TP at :data:`ATTENTION_EFFICIENCY` of the BF16 peak (causal
  flash attention skips half the counted FLOPs and recomputes in the backward; the efficiency is
  relative to the counted ones);
- element-wise kernels (norms, RoPE, SwiGLU, residuals, FP8 casts, cross-entropy):
  :data:`ELEMENTWISE_BYTES_PER_H` x h bytes of HBM traffic per layer and token / TP;
- kernel launches, without CUDA graphs: :data:`KERNELS_PER_LAYER` launches per layer at
  :data:`LAUNCH_SECONDS` each;
- a fixed :data:`MICRO_BATCH_SECONDS` per micro-batch (the engine's per-micro-batch work: gradient
  hooks and accumulation, FP8 scaling updates, Python);
- TP all-reduces: four per layer of T x h BF16 values, ring over NVLink at :data:`NVLINK_BUS_GB_S`,
  not overlapped.

Per optimizer step: Adam over this rank's share (:data:`OPTIMIZER_BYTES_PER_PARAMETER` of HBM
traffic), a fixed :data:`STEP_SECONDS`, the data-parallel gradient reduction (ring, NVLink inside a
node of :data:`GPUS_PER_NODE`, :data:`INTERNODE_GB_S` per GPU across nodes, not overlapped), and
ZeRO-3's weight gathers per micro-batch.  Two numbers are taken from measurements of llama-3b FP8
on one H200: the GEMM and attention efficiencies (micro-batch 8, 41.2k tokens/s) and the
per-micro-batch cost (micro-batch 2 with CUDA graphs, 35.9k tokens/s); the rest are stated
assumptions.  docs/planner.md compares the prediction with runs not used for these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from litespark.config import RunPlan
from litespark.planner.gpus import Gpu
from litespark.training.metrics import count_parameters, flops_per_token

GEMM_EFFICIENCY = 0.75
ATTENTION_EFFICIENCY = 0.60
ELEMENTWISE_BYTES_PER_H = 140
KERNELS_PER_LAYER = 60
LAUNCH_SECONDS = 4e-6
MICRO_BATCH_SECONDS = 0.039
OPTIMIZER_BYTES_PER_PARAMETER = 34
STEP_SECONDS = 0.02
NVLINK_BUS_GB_S = 300.0
INTERNODE_GB_S = 45.0
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class SpeedEstimate:
    step_seconds: float
    tokens_per_s_per_gpu: float
    mfu: float
    terms: dict[str, float]
    """Seconds per optimizer step, by cost."""


def _ring_seconds(nbytes: float, ranks: int, gb_per_s: float) -> float:
    return 0.0 if ranks <= 1 else 2 * (ranks - 1) / ranks * nbytes / (gb_per_s * 1e9)


def estimate_speed(plan: RunPlan, gpu: Gpu) -> SpeedEstimate:
    """Seconds per optimizer step and tokens/s per GPU of ``plan`` on ``gpu``s."""
    cfg, world_size = plan.config, plan.world_size
    m, par, prec = cfg.model, cfg.parallel, cfg.precision
    tp, dp = plan.tensor_parallel, plan.data_parallel
    micro_batches = plan.gradient_accumulation_steps
    tokens = plan.micro_batch_size * m.seq_length
    n = count_parameters(m)
    fp8_params = (n.transformer_matmul + (n.lm_head if plan.fp8_output_layer else 0)) if prec.fp8 else 0
    bf16_params = n.matmul - fp8_params
    bf16_peak = gpu.bf16_tflops * 1e12 * (1.0 if prec.bf16 else 0.5)
    gemm = 6 * tokens * (fp8_params / (gpu.fp8_tflops * 1e12) + bf16_params / bf16_peak) / tp / GEMM_EFFICIENCY
    attention = 12 * m.num_layers * m.hidden_size * m.seq_length * tokens / tp / (bf16_peak * ATTENTION_EFFICIENCY)
    elementwise = tokens * m.num_layers * ELEMENTWISE_BYTES_PER_H * m.hidden_size / tp / (gpu.hbm_tb_per_s * 1e12)
    launches = 0.0 if plan.cuda_graphs else m.num_layers * KERNELS_PER_LAYER * LAUNCH_SECONDS
    tp_comm = m.num_layers * 4 * _ring_seconds(tokens * m.hidden_size * 2, tp, NVLINK_BUS_GB_S)
    params = n.total / tp
    zero3_gather = 0.0
    if par.zero_stage == 3:
        zero3_gather = 2 * _ring_seconds(params * 2, dp, _dp_link(world_size)) / 2  # an all-gather is half a ring
    terms = {
        "gemm": micro_batches * gemm,
        "attention": micro_batches * attention,
        "elementwise": micro_batches * elementwise,
        "launches": micro_batches * launches,
        "per_micro_batch": micro_batches * MICRO_BATCH_SECONDS,
        "tensor_parallel": micro_batches * tp_comm,
        "zero3_gathers": micro_batches * zero3_gather,
        "optimizer": params
        / (dp if par.zero_stage >= 1 else 1)
        * OPTIMIZER_BYTES_PER_PARAMETER
        / (gpu.hbm_tb_per_s * 1e12)
        + STEP_SECONDS,
        "data_parallel": _ring_seconds(params * (4 if plan.fp32_grad_accumulation else 2), dp, _dp_link(world_size)),
    }
    step = sum(terms.values())
    tokens_per_s = cfg.data.global_batch_size * m.seq_length / step / world_size
    mfu = tokens_per_s * flops_per_token(m) / (gpu.bf16_tflops * 1e12)
    return SpeedEstimate(step, tokens_per_s, mfu, terms)


def _dp_link(world_size: int) -> float:
    """Bandwidth of the data-parallel ring: NVLink inside one node, the network across nodes."""
    return NVLINK_BUS_GB_S if world_size <= GPUS_PER_NODE else INTERNODE_GB_S
