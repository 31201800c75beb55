"""The rules that decide the automatic settings of a config, each a pure function of the config and
of what has been decided before it.

Fields left ``None`` (or ``'auto'``) are decided by :func:`litespark.config.resolve.resolve`, in this
order: the kernel backend (from the host), the micro-batch (from the planner), whether the layers run
as CUDA graphs, whether gradients accumulate in fp32 buffers that Transformer Engine writes, whether
the output layer runs in FP8, and how the optimizer's parameters are grouped.  Each rule also says
why an explicit setting would be refused (the ``*_refusal`` functions).  docs/performance.md has
the measurements the rules follow.
"""

from __future__ import annotations

from litespark.config.schema import PACKED_SOURCES, LitesparkConfig

# kernels.cuda_graphs=None turns the graphs on up to this micro-batch, where the step is launch-bound.
GRAPHS_AUTO_MAX_MICRO_BATCH = 2

# parallel.zero_sub_group_size=None splits the optimizer step into groups of this many parameters,
# except where fp32 gradients are on.
ZERO_SUB_GROUP_SIZE = 250_000_000


def host_backend() -> str:
    """The kernel backend this host runs for ``kernels.backend='auto'``: 'te' with CUDA and
    Transformer Engine, else 'torch'."""
    from litespark.environment import te_available  # local: avoids importing torch for config work

    return "te" if te_available() else "torch"


def backend_refusal(cfg: LitesparkConfig, backend: str) -> str | None:
    """Why ``cfg`` cannot run on kernel backend ``backend`` (what it resolved to), or None."""
    if backend == "te":
        return qkv_rope_kernel_refusal(cfg)
    how = "needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')"
    if cfg.precision.fp8:
        return f"precision.fp8=true {how}"
    if cfg.parallel.sequence_parallel:
        return f"parallel.sequence_parallel=true {how}"
    if cfg.kernels.cuda_graphs:
        return f"kernels.cuda_graphs=true {how}"
    return None


def cuda_graphs_refusal(cfg: LitesparkConfig, backend: str) -> str | None:
    """Why the layers of ``cfg`` cannot be captured as CUDA graphs on ``backend``, or None when they
    can; the automatic setting turns them on only where this is None."""
    if backend == "torch":
        return "kernels.cuda_graphs=true needs kernels.backend 'te' (or 'auto' on a CUDA host with Transformer Engine)"
    if cfg.parallel.tensor_parallel != 1:
        return (
            "kernels.cuda_graphs=true needs parallel.tensor_parallel=1 "
            "(TP collectives inside captured layers are not supported)"
        )
    if cfg.parallel.zero_stage == 3:
        return (
            "kernels.cuda_graphs=true needs parallel.zero_stage 1 or 2 "
            "(ZeRO-3 gathers weights into new buffers each forward; a graph needs fixed addresses)"
        )
    if cfg.precision.fp32_grad_accumulation:
        return "kernels.cuda_graphs=true cannot be combined with precision.fp32_grad_accumulation=true (not supported together)"
    if cfg.data.source in PACKED_SOURCES:
        return (
            f"kernels.cuda_graphs=true cannot run packed {cfg.data.source.upper()} rows (their document boundaries "
            "change every micro-batch)"
        )
    return None


def cuda_graphs(cfg: LitesparkConfig, backend: str, micro_batch: int) -> bool:
    """Whether the layers run as CUDA graphs: ``kernels.cuda_graphs``, or (None) on where they can be
    captured and the micro-batch is at most GRAPHS_AUTO_MAX_MICRO_BATCH."""
    if cfg.kernels.cuda_graphs is not None:
        return cfg.kernels.cuda_graphs
    return cuda_graphs_refusal(cfg, backend) is None and micro_batch <= GRAPHS_AUTO_MAX_MICRO_BATCH


def fp8_output_layer(cfg: LitesparkConfig) -> bool:
    """Whether ``cfg``'s output layer runs in FP8 (``precision.fp8_output_layer``).

    The automatic setting (None) is on with fp8 and untied embeddings, with eager and with
    CUDA-graphed layers alike.  Tied embeddings keep Megatron's head, whose weight is the embedding's."""
    p = cfg.precision
    if not p.fp8:
        return False
    if p.fp8_output_layer is not None:
        return p.fp8_output_layer
    return not cfg.model.tie_embeddings


def fp32_grad_accumulation_refusal(cfg: LitesparkConfig, graphs: bool) -> str | None:
    """Why ``precision.fp32_grad_accumulation=true`` cannot be used with ``cfg`` whose layers are
    (``graphs``) or are not captured as CUDA graphs, or None."""
    if not cfg.precision.bf16:
        return (
            "precision.fp32_grad_accumulation=true needs precision.bf16=true (fp32 training has fp32 gradients already)"
        )
    if cfg.parallel.zero_stage != 1:
        return (
            f"precision.fp32_grad_accumulation=true needs parallel.zero_stage=1, not {cfg.parallel.zero_stage} "
            "(DeepSpeed's BF16 optimizer, which owns the fp32 buffers, is ZeRO-1 only)"
        )
    if graphs:
        return (
            "precision.fp32_grad_accumulation=true cannot be combined with kernels.cuda_graphs=true "
            "(not supported together; the graphs are for memory-bound micro-batches)"
        )
    return None


def fp32_grad_accumulation(cfg: LitesparkConfig, backend: str, graphs: bool) -> bool:
    """Whether ``cfg`` accumulates gradients in fp32 buffers (``precision.fp32_grad_accumulation``).

    The automatic setting (None) is on with the te backend where it is allowed: BF16, ZeRO-1, and
    the layers not captured as CUDA graphs (graphs are used at small micro-batches, where memory is
    short and the extra 4 bytes per parameter would not fit)."""
    if cfg.precision.fp32_grad_accumulation is not None:
        return cfg.precision.fp32_grad_accumulation
    return backend == "te" and not graphs and cfg.precision.bf16 and cfg.parallel.zero_stage == 1


def zero_sub_group_size(cfg: LitesparkConfig, fp32_grads: bool) -> int | None:
    """The most parameters per optimizer group (``parallel.zero_sub_group_size``), None for one group.

    The groups bound the transient fp32 copy that DeepSpeed's ZeRO optimizer makes of each group's
    bf16 gradients at the step (and ZeRO-3's sub-groups).  With fp32 gradients (ZeRO-1's
    ``BF16_Optimizer``) the gradients already are in fp32 and nothing is copied, so the automatic
    setting keeps the weight matrices in one group there: fewer, larger kernels in the step.
    """
    if cfg.parallel.zero_sub_group_size is not None:
        return cfg.parallel.zero_sub_group_size
    if cfg.parallel.zero_stage != 3 and fp32_grads:
        return None
    return ZERO_SUB_GROUP_SIZE


def overlap_copy(cfg: LitesparkConfig, backend: str) -> bool:
    """Whether an asynchronous save's device-to-host copy runs during the next step:
    ``checkpoint.overlap_copy``, or (None) on with asynchronous saves on the te backend (a CUDA host)."""
    if cfg.checkpoint.overlap_copy is not None:
        return cfg.checkpoint.overlap_copy
    return cfg.checkpoint.async_save and backend == "te"


def norm_kernel(cfg: LitesparkConfig) -> str:
    """Which RMSNorm kernels Transformer Engine runs (``kernels.norm_kernel``): as given, or (None)
    cuDNN's graphs where every micro-batch has the same shape, TE's own on packed rows (cuDNN builds a
    graph for each new number of tokens: up to 0.7 s that the GPU waits, measured on llama-3b)."""
    if cfg.kernels.norm_kernel is not None:
        return cfg.kernels.norm_kernel
    return "te" if cfg.data.source in PACKED_SOURCES else "cudnn"


def fused_qkv_rope(cfg: LitesparkConfig, backend: str) -> bool:
    """Whether the model rotates the unsplit QKV output in one kernel (Megatron's
    ``fused_single_qkv_rope``): ``kernels.fused_qkv_rope`` with the te backend and ``rope_fusion``,
    except on packed SFT and DPO rows, whose rotary positions restart at each document (``cu_seqlens``), which
    only Megatron's split path passes to the rotation."""
    k = cfg.kernels
    return backend == "te" and k.rope_fusion and k.fused_qkv_rope and cfg.data.source not in PACKED_SOURCES


def qkv_rope_kernel_refusal(cfg: LitesparkConfig) -> str | None:
    """Why ``kernels.qkv_rope_kernel`` cannot run this model on the TE backend, or None."""
    k, m = cfg.kernels, cfg.model
    head_dim = m.hidden_size // m.num_attention_heads
    if fused_qkv_rope(cfg, "te") and k.qkv_rope_kernel == "triton" and head_dim & (head_dim - 1):
        return (
            f"kernels.qkv_rope_kernel=triton needs a power-of-two head dimension, got {head_dim}: "
            "set kernels.qkv_rope_kernel=te"
        )
    return None
