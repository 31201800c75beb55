"""What the automatic settings of a config become.

Fields left ``None`` (or ``'auto'``) are decided here, from the rest of the config and, for the
backend, from the host: whether the layers run as CUDA graphs, whether gradients accumulate in fp32
buffers that Transformer Engine writes, whether the output layer runs in FP8, how the optimizer's
parameters are grouped, and which kernel backend fills the layer spec.  Each rule also says why an
explicit setting would be refused (the ``*_refusal`` functions), which is what
:func:`litespark.config.validate.validate` reports.  docs/performance.md has the measurements the
rules follow.
"""

from __future__ import annotations

from litespark.config.schema import ConfigError, LitesparkConfig

# kernels.cuda_graphs=None turns the graphs on up to this micro-batch, where the step is launch-bound.
GRAPHS_AUTO_MAX_MICRO_BATCH = 2


def cuda_graphs_refusal(cfg: LitesparkConfig) -> str | None:
    """Why the layers of ``cfg`` cannot be captured as CUDA graphs (validate's error), or None when
    they can; the automatic setting turns them on only where this is None."""
    if cfg.kernels.backend == "torch":
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
    return None


def _cuda_graphs_automatic(cfg: LitesparkConfig) -> bool:
    """What ``kernels.cuda_graphs=None`` resolves to: on where the layers can be captured and the
    micro-batch is at most GRAPHS_AUTO_MAX_MICRO_BATCH."""
    mb = cfg.data.micro_batch_size
    return cuda_graphs_refusal(cfg) is None and mb is not None and mb <= GRAPHS_AUTO_MAX_MICRO_BATCH


def _cuda_graphs_as_resolved(cfg: LitesparkConfig) -> bool:
    """``kernels.cuda_graphs``, or what its automatic setting (None) resolves to on a GPU host with TE."""
    return cfg.kernels.cuda_graphs if cfg.kernels.cuda_graphs is not None else _cuda_graphs_automatic(cfg)


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


def fp32_grad_accumulation_refusal(cfg: LitesparkConfig) -> str | None:
    """Why ``precision.fp32_grad_accumulation=true`` cannot be used with ``cfg`` (validate's error), or
    None."""
    if not cfg.precision.bf16:
        return (
            "precision.fp32_grad_accumulation=true needs precision.bf16=true (fp32 training has fp32 gradients already)"
        )
    if cfg.parallel.zero_stage != 1:
        return (
            f"precision.fp32_grad_accumulation=true needs parallel.zero_stage=1, not {cfg.parallel.zero_stage} "
            "(DeepSpeed's BF16 optimizer, which owns the fp32 buffers, is ZeRO-1 only)"
        )
    if cfg.kernels.cuda_graphs:
        return (
            "precision.fp32_grad_accumulation=true cannot be combined with kernels.cuda_graphs=true "
            "(not supported together; the graphs are for memory-bound micro-batches)"
        )
    return None


def fp32_grad_accumulation(cfg: LitesparkConfig) -> bool:
    """Whether ``cfg`` accumulates gradients in fp32 buffers (``precision.fp32_grad_accumulation``).

    The automatic setting (None) is on with the te backend where it is allowed: BF16, ZeRO-1, and
    the layers not captured as CUDA graphs (graphs are used at small micro-batches, where memory is
    short and the extra 4 bytes per parameter would not fit).  A config whose
    backend or graphs are still automatic is judged as it resolves on a GPU host with Transformer
    Engine, so that ``to_deepspeed_config`` stays a pure function of the config.
    """
    if cfg.precision.fp32_grad_accumulation is not None:
        return cfg.precision.fp32_grad_accumulation
    graphs = _cuda_graphs_as_resolved(cfg)
    return cfg.kernels.backend != "torch" and not graphs and cfg.precision.bf16 and cfg.parallel.zero_stage == 1


# parallel.zero_sub_group_size=None splits the optimizer step into groups of this many parameters,
# except where fp32 gradients are on.
ZERO_SUB_GROUP_SIZE = 250_000_000


def zero_sub_group_size(cfg: LitesparkConfig) -> int | None:
    """The most parameters per optimizer group (``parallel.zero_sub_group_size``), None for one group.

    The groups bound the transient fp32 copy that DeepSpeed's ZeRO optimizer makes of each group's
    bf16 gradients at the step (and ZeRO-3's sub-groups).  With fp32 gradients (ZeRO-1's
    ``BF16_Optimizer``) the gradients already are in fp32 and nothing is copied, so the automatic
    setting keeps the weight matrices in one group there: fewer, larger kernels in the step.
    """
    if cfg.parallel.zero_sub_group_size is not None:
        return cfg.parallel.zero_sub_group_size
    if cfg.parallel.zero_stage != 3 and fp32_grad_accumulation(cfg):
        return None
    return ZERO_SUB_GROUP_SIZE


def qkv_rope_kernel_refusal(cfg: LitesparkConfig) -> str | None:
    """Why ``kernels.qkv_rope_kernel`` cannot run this model on the TE backend, or None."""
    k, m = cfg.kernels, cfg.model
    head_dim = m.hidden_size // m.num_attention_heads
    if k.rope_fusion and k.fused_qkv_rope and k.qkv_rope_kernel == "triton" and head_dim & (head_dim - 1):
        return (
            f"kernels.qkv_rope_kernel=triton needs a power-of-two head dimension, got {head_dim}: "
            "set kernels.qkv_rope_kernel=te"
        )
    return None


def resolve_backend(cfg: LitesparkConfig, world_size: int = 1) -> LitesparkConfig:
    """Replace the automatic choices by what this host and config run (in place):
    kernels.backend='auto' by the backend this host can run, data.micro_batch_size=None by the
    planner's choice for this host's GPU and ``world_size`` (1 on the torch backend),
    kernels.cuda_graphs=None by whether the layers are captured (Transformer Engine, TP 1, ZeRO 1/2,
    micro-batch <= GRAPHS_AUTO_MAX_MICRO_BATCH), precision.fp32_grad_accumulation=None by
    :func:`fp32_grad_accumulation`."""
    if cfg.kernels.backend == "auto":
        from litespark.environment import te_available  # local: avoids importing torch for config work

        cfg.kernels.backend = "te" if te_available() else "torch"
    refusal = qkv_rope_kernel_refusal(cfg) if cfg.kernels.backend == "te" else None
    if refusal:
        raise ConfigError(refusal)
    if cfg.kernels.backend != "te":
        if cfg.precision.fp8:
            raise ConfigError(
                "precision.fp8=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')"
            )
        if cfg.parallel.sequence_parallel:
            raise ConfigError(
                "parallel.sequence_parallel=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')"
            )
        if cfg.kernels.cuda_graphs:
            raise ConfigError(
                "kernels.cuda_graphs=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')"
            )
    if cfg.data.micro_batch_size is None:
        cfg.data.micro_batch_size = _automatic_micro_batch(cfg, world_size)
    if cfg.kernels.cuda_graphs is None:
        cfg.kernels.cuda_graphs = _cuda_graphs_automatic(cfg)
    if cfg.precision.fp32_grad_accumulation is None:
        cfg.precision.fp32_grad_accumulation = fp32_grad_accumulation(cfg)
    return cfg


def _automatic_micro_batch(cfg: LitesparkConfig, world_size: int) -> int:
    """What ``data.micro_batch_size=None`` becomes: the planner's choice for this host's GPU on the te
    backend; 1 on the torch backend, which the planner does not model."""
    if cfg.kernels.backend != "te":
        return 1
    from litespark.log import get_logger
    from litespark.planner import choose_micro_batch
    from litespark.planner.gpus import gpu_of_this_host

    gpu = gpu_of_this_host()
    if gpu is None:
        raise ConfigError("data.micro_batch_size=null (automatic) needs a CUDA device to plan for")
    mb = choose_micro_batch(cfg, world_size, gpu)
    get_logger(__name__).info(
        "data.micro_batch_size: %d, the fastest the planner fits in %s (%.0f GiB); python -m litespark.train --plan %d "
        "shows the alternatives",
        mb,
        gpu.name,
        gpu.memory_gib,
        world_size,
    )
    return mb
