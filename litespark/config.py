"""The one typed configuration of a Litespark run.

Everything else (Megatron's ``TransformerConfig``, the DeepSpeed JSON, the Slurm launch) is derived
from a :class:`LitesparkConfig` by pure functions, so a run is fully described by the resolved config
that ``--print-config`` shows.  A config is built from a preset, then an optional YAML file, then
``--set section.field=value`` overrides; unknown keys and impossible combinations are rejected with a
one-line :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A user mistake in the configuration; the CLI prints it on one line and exits with code 2."""


@dataclass
class ModelConfig:
    """Shape of the Llama-family decoder."""

    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 64
    """Model width h."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups); equal to num_attention_heads for plain multi-head attention."""
    ffn_hidden_size: int = 176
    """Inner width of the SwiGLU MLP (each of gate and up projections)."""
    vocab_size: int = 512
    """Tokenizer vocabulary size; the embedding is padded up to a multiple of 128 x TP."""
    seq_length: int = 64
    """Training sequence length in tokens."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding with the LM head (Llama-3.2 small models do; Llama-2/3 large do not)."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    make_vocab_size_divisible_by: int = 128
    """Padding multiple for the embedding table (times TP), as Megatron-LM does."""


@dataclass
class ParallelConfig:
    """How the model is split over processes."""

    tensor_parallel: int = 1
    """Tensor-parallel size (Megatron parallel_state); data parallel is world_size / tensor_parallel."""
    sequence_parallel: bool = False
    """Shard norms and dropouts along the sequence inside a TP group (needs tensor_parallel > 1)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 1 or 2 with any TP; 3 only with tensor_parallel = 1."""
    zero_sub_group_size: Optional[int] = None
    """Most parameters the optimizer step converts and updates at once.  The step's transient
    buffers (a flat bf16 gradient and its fp32 copy, 6 bytes per parameter of the group) are this
    big instead of the whole model's: ZeRO-3's ``sub_group_size``; for stages 1 and 2, which step
    one parameter group at a time, the weight matrices are split into groups of at most this many
    parameters.  None (auto): ZERO_SUB_GROUP_SIZE, except with fp32 gradients
    (``precision.fp32_grad_accumulation``), whose optimizer has no such transient: one group there
    (see ``zero_sub_group_size``)."""


@dataclass
class PrecisionConfig:
    """Number formats."""

    bf16: bool = True
    """BF16 compute with fp32 master weights held by the optimizer; false trains in fp32."""
    fp8: bool = False
    """FP8 GEMMs through Transformer Engine (Hopper or newer; backend 'te' only)."""
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = "delayed"
    """TE scaling recipe: delayed (amax history), tensorwise (current scaling), blockwise (1x128 / 128x128)."""
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    """hybrid: E4M3 forward, E5M2 gradients; e4m3: E4M3 everywhere."""
    fp8_amax_history_len: int = 1024
    """Delayed scaling: amax history window."""
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    """Delayed scaling: how the scale is taken from the history."""
    fp8_margin: int = 0
    """Delayed scaling: exponent margin for the scale."""
    fp8_output_layer: Optional[bool] = None
    """With fp8: the output layer (LM head) as a TE linear under the same FP8 recipe instead of
    Megatron's BF16 one (:mod:`litespark.modules.fp8_output_layer`).  Its three GEMMs are ~3% of a
    llama-3b step in BF16.  None (automatic): on with fp8 unless the embeddings are tied (the tied
    weight is the embedding's), with or without CUDA graphs; true refuses tied embeddings; ignored
    without fp8, so a BF16 comparison run can share the setting.  Measured on the H200: +1.5%
    tokens/s, and the bench's FP8-vs-BF16 loss gap did not grow; on the H100 under CUDA graphs +0.9%
    on average and +0.2 GiB reserved (docs/performance.md)."""
    fp32_grad_accumulation: Optional[bool] = None
    """Keep the gradients in fp32 buffers that DeepSpeed's BF16 ZeRO-1 optimizer owns, and have
    Transformer Engine's weight-gradient GEMMs write into them directly (Megatron's gradient-
    accumulation fusion, ``main_grad``), instead of bf16 ``.grad`` tensors that the ZeRO optimizer
    flattens and converts to fp32 at every step.  Costs 4 bytes per parameter at the memory peak: the
    fp32 buffers live through the forward pass, where the bf16 gradients did not exist yet (llama-3b:
    +11.2 GiB).  Needs bf16, ZeRO stage 1 and no CUDA graphs.  None (auto): on where that holds with
    the te backend (see ``fp32_grad_accumulation``)."""


@dataclass
class KernelConfig:
    """Implementation choices that must not change the function computed (see docs/design.md)."""

    backend: Literal["auto", "te", "torch"] = "auto"
    """Which modules fill the layer spec's slots: Transformer Engine (CUDA) or the torch reference.
    'auto' resolves to 'te' when CUDA and Transformer Engine are present, else 'torch'."""
    fused_mlp: bool = False
    """TE backend: run RMSNorm + FC1 + SwiGLU + FC2 through TE's operation fuser (Megatron's
    TEFusedMLP).  BF16 or tensorwise FP8 only: with TE 2.10 / mcore 0.16.1 the delayed recipe gave
    NaN FC1 gradients on an H100 and the blockwise recipe is not implemented by the fuser."""
    te_swiglu: bool = True
    """TE backend: the MLP's SwiGLU from Transformer Engine (``te.pytorch.ops.SwiGLU`` in the MLP's
    activation slot, Megatron's ``use_te_activation_func``) instead of Megatron's compiled SwiGLU.
    Same function; +1.9% tokens/s for llama-3b on an H200 (docs/performance.md).  Ignored by the
    torch backend and by ``fused_mlp`` (which has its own)."""
    rope_fusion: bool = True
    """TE backend: fused RoPE kernel instead of the unfused torch rotation."""
    fused_qkv_rope: bool = True
    """TE backend with rope_fusion: rotate the unsplit QKV projection output in one TE kernel that also
    writes q, k and v apart (Megatron's ``fused_single_qkv_rope``), instead of splitting it into
    views, copying them contiguous, rotating q and k separately and concatenating the three gradients
    in backward.  Same function.  Ignored without rope_fusion and by the torch backend."""
    norm_kernel: Literal["te", "cudnn"] = "cudnn"
    """TE backend: which kernels Transformer Engine runs for RMSNorm (forward, with its FP8 output, and
    backward).  'te': TE's own, which have tuned variants only for some hidden sizes (512, 768, 1024,
    2048, 4096, 8192 in TE 2.10) and fall back to general kernels otherwise (llama-3b's 3072,
    llama-30b's 6656).  'cudnn': cuDNN's normalization graphs (TE's ``NVTE_NORM_FWD_USE_CUDNN`` /
    ``NVTE_NORM_BWD_USE_CUDNN``).  Same function; cuDNN +1.9% tokens/s for llama-3b on an H200
    (docs/performance.md).  Process-wide: :func:`litespark.model.build_model` sets TE's switches, which
    TE reads once, at the first normalization in the process."""
    qkv_rope_kernel: Literal["te", "triton"] = "triton"
    """With fused_qkv_rope (TE backend): which kernels rotate the unsplit QKV output.  'te': Transformer Engine's
    ``fused_qkv_rope`` kernels, which move their bytes at about a third of an H200's HBM bandwidth.
    'triton': Litespark's Triton kernel (:mod:`litespark.modules.qkv_rope`, installed by
    :mod:`megatron_patches.qkv_rope`), the same fp32 rotation, written to load each token's cos/sin
    once for all its heads: 0.18 ms forward against TE's 0.47 for one llama-3b layer at micro-batch 8
    on an H200, +1.5% tokens/s for the step (docs/performance.md).  Process-wide: the last model
    built that calls the rotation decides for every model in the process."""
    te_cross_entropy: bool = True
    """TE backend: Transformer Engine's fused cross-entropy (one kernel that writes the logits'
    gradient in place of the logits; Megatron's ``cross_entropy_fusion_impl='te'``) instead of
    Megatron's native fused one, which makes an fp32 copy of the logits and keeps their fp32 softmax
    for backward (4 GiB each for llama-3b at micro-batch 8).  Same function.  Ignored by the torch
    backend (which has no fused cross-entropy)."""
    fp8_attention: bool = False
    """TE backend with FP8: run dot-product attention in FP8 too."""
    cuda_graphs: Optional[bool] = None
    """TE backend: replay each transformer layer's training forward and backward as CUDA graphs
    (captured once, after the engine is built, for the configured micro-batch shape); removes the
    host's kernel-launch overhead.  tensor_parallel=1 and ZeRO stage 1 or 2 only.  None (auto):
    on where that holds and the micro-batch is at most GRAPHS_AUTO_MAX_MICRO_BATCH, where the step
    is launch-bound (llama-3b at micro-batch 2: +30% on an H100, +15% on an H200; at 8: no gain)."""
    cuda_graph_layers: Optional[int] = None
    """With cuda_graphs: capture only the first N decoder layers (None: all).  The graphs' memory
    pool is private, so the optimizer step cannot reuse the captured layers' activation memory;
    capturing fewer layers trades launch overhead for memory (docs/performance.md)."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup_iters: int = 10
    """Linear warmup steps from 0 to lr."""
    decay_iters: Optional[int] = None
    """Steps of cosine decay after warmup; None decays until run.train_iters."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to norms)."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    deepspeed_step_patches: bool = True
    """Replace two helpers of DeepSpeed's optimizer step with ones that compute the same values faster
    (:mod:`litespark.deepspeed_patches`): the NaN/inf mask of the gradient norm without its two host
    syncs, and the clip as one foreach multiply.  Process-wide; refuses untested DeepSpeed releases."""


@dataclass
class DataConfig:
    """Training data and batching."""

    prefixes: list[str] = field(default_factory=list)
    """Megatron indexed dataset prefixes (PATH without .bin/.idx); empty with source='mock'."""
    weights: list[float] = field(default_factory=list)
    """Blend weights, one per prefix; empty means proportional to size."""
    source: Literal["indexed", "mock"] = "mock"
    """'indexed' reads the prefixes; 'mock' generates random tokens (benchmarks, tests)."""
    split: str = "98,2,0"
    """Train/valid/test split of each prefix, as Megatron's comma-separated weights."""
    micro_batch_size: int = 2
    """Sequences per forward/backward on each data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks (micro x DP x accumulation)."""
    tokenizer: Optional[str] = None
    """SentencePiece model path, recorded for checkpoints and export."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    enabled: bool = True
    """False never saves (benchmarks); resume still loads an existing checkpoint when resume=true."""
    save_interval: int = 0
    """Save every N steps (0: only at the end and on a preemption signal)."""
    keep_last: int = 2
    """Complete checkpoints kept on disk."""
    resume: bool = True
    """Resume from RUN_DIR/checkpoints/latest when it exists."""
    load: Optional[str] = None
    """Another run's directory whose newest checkpoint initialises the weights (only) when RUN_DIR has none."""


@dataclass
class RunConfig:
    """The job itself."""

    train_iters: int = 100
    """Optimizer steps."""
    seed: int = 1234
    """Seed for weights, data order and dropout."""
    log_interval: int = 10
    """Steps between metric lines."""
    eval_interval: int = 0
    """Steps between validation passes (0: never)."""
    eval_iters: int = 10
    """Batches per validation pass."""
    run_dir: str = "runs/default"
    """Where checkpoints, metrics.jsonl and the resolved config go."""


@dataclass
class LitesparkConfig:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "custom"
    """Name of the preset this config started from (informational)."""


# ----------------------------------------------------------------------------------------------
# Building from plain data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


def _apply_mapping(obj: Any, data: dict, where: str) -> None:
    """Set the fields of dataclass ``obj`` from ``data``, recursing into nested sections."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of fields, got {type(data).__name__}")
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply_mapping(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def apply_overrides(cfg: LitesparkConfig, overrides: list[str]) -> LitesparkConfig:
    """Apply ``section.field=value`` strings, in order, to ``cfg`` (in place) and return it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        nested: dict = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value.strip()
        _apply_mapping(cfg, nested, "")
    return cfg


def load_yaml(cfg: LitesparkConfig, path: str | Path) -> LitesparkConfig:
    """Apply a YAML file of nested sections to ``cfg`` (in place) and return it."""
    import yaml  # local import: only needed when a file is given

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p}{at}: not valid YAML") from None
    _apply_mapping(cfg, data, "")
    return cfg


def to_dict(cfg: LitesparkConfig) -> dict:
    """Plain nested dict of the config (for printing, YAML and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> LitesparkConfig:
    """Inverse of :func:`to_dict`, with the same strictness as a YAML file."""
    cfg = LitesparkConfig()
    _apply_mapping(cfg, data, "")
    return cfg


# ----------------------------------------------------------------------------------------------
# Validation


def validate(cfg: LitesparkConfig, world_size: Optional[int] = None) -> LitesparkConfig:
    """Reject impossible configurations with a one-line :class:`ConfigError` naming the field.

    ``world_size`` adds the checks that need the process count (TP must divide it, the global batch
    must be micro x DP x accumulation).
    """
    m, par, prec, d, o, r = cfg.model, cfg.parallel, cfg.precision, cfg.data, cfg.optim, cfg.run
    positive = {
        "model.num_layers": m.num_layers, "model.hidden_size": m.hidden_size,
        "model.num_attention_heads": m.num_attention_heads, "model.num_query_groups": m.num_query_groups,
        "model.ffn_hidden_size": m.ffn_hidden_size, "model.vocab_size": m.vocab_size,
        "model.seq_length": m.seq_length, "model.make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
        "parallel.tensor_parallel": par.tensor_parallel, "data.micro_batch_size": d.micro_batch_size,
        "data.global_batch_size": d.global_batch_size, "run.train_iters": r.train_iters,
        "run.log_interval": r.log_interval, "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "parallel.zero_sub_group_size": par.zero_sub_group_size,
    }
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name, value in {"model.rotary_base": m.rotary_base, "model.norm_epsilon": m.norm_epsilon,
                        "model.init_method_std": m.init_method_std, "optim.lr": o.lr}.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size ({m.hidden_size}) is not divisible by model.num_attention_heads ({m.num_attention_heads})")
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"model.num_query_groups ({m.num_query_groups}) does not divide model.num_attention_heads ({m.num_attention_heads})")
    if (m.hidden_size // m.num_attention_heads) % 2:
        raise ConfigError(f"model head dimension {m.hidden_size // m.num_attention_heads} must be even for RoPE")
    tp = par.tensor_parallel
    if m.num_attention_heads % tp:
        raise ConfigError(
            f"parallel.tensor_parallel ({tp}) does not divide model.num_attention_heads ({m.num_attention_heads})")
    if m.num_query_groups % tp:
        raise ConfigError(
            f"parallel.tensor_parallel ({tp}) does not divide model.num_query_groups ({m.num_query_groups})")
    if m.ffn_hidden_size % tp:
        raise ConfigError(
            f"parallel.tensor_parallel ({tp}) does not divide model.ffn_hidden_size ({m.ffn_hidden_size})")
    if par.zero_stage not in (1, 2, 3):
        raise ConfigError(f"parallel.zero_stage must be 1, 2 or 3, got {par.zero_stage}")
    if par.zero_stage == 3 and tp > 1:
        raise ConfigError("parallel.zero_stage=3 needs parallel.tensor_parallel=1 (ZeRO-3 does not shard TP-split weights)")
    if par.sequence_parallel and tp == 1:
        raise ConfigError("parallel.sequence_parallel needs parallel.tensor_parallel > 1")
    if par.sequence_parallel and cfg.kernels.backend == "torch":
        raise ConfigError("parallel.sequence_parallel needs kernels.backend 'te' (TE norms and reduce-scatter)")
    if prec.fp8 and cfg.kernels.backend == "torch":
        raise ConfigError("precision.fp8=true needs kernels.backend 'te' (or 'auto' on a CUDA host with Transformer Engine)")
    if prec.fp8 and not prec.bf16:
        raise ConfigError("precision.fp8=true needs precision.bf16=true (non-FP8 ops run in BF16)")
    if prec.fp8 and prec.fp8_output_layer is True and m.tie_embeddings:
        raise ConfigError("precision.fp8_output_layer=true does not support model.tie_embeddings=true "
                          "(the tied weight is the embedding's)")
    if prec.fp8_amax_history_len <= 0:
        raise ConfigError(f"precision.fp8_amax_history_len must be positive, got {prec.fp8_amax_history_len}")
    if cfg.kernels.fused_mlp and prec.fp8 and prec.fp8_recipe != "tensorwise":
        raise ConfigError(
            f"kernels.fused_mlp=true works with precision.fp8_recipe=tensorwise only, not {prec.fp8_recipe} "
            "(TE's op fuser: NaN gradients with delayed, no blockwise support)")
    refusal = qkv_rope_kernel_refusal(cfg)
    if cfg.kernels.backend == "te" and refusal:
        raise ConfigError(refusal)
    if cfg.kernels.fp8_attention and not prec.fp8:
        raise ConfigError("kernels.fp8_attention=true needs precision.fp8=true")
    if prec.fp32_grad_accumulation:
        refusal = fp32_grad_accumulation_refusal(cfg)
        if refusal:
            raise ConfigError(refusal)
    refusal = cuda_graphs_refusal(cfg)
    if cfg.kernels.cuda_graphs and refusal:
        raise ConfigError(refusal)
    n_graphed = cfg.kernels.cuda_graph_layers
    if n_graphed is not None:
        if cfg.kernels.cuda_graphs is not True:
            raise ConfigError("kernels.cuda_graph_layers needs kernels.cuda_graphs=true")
        if not 1 <= n_graphed <= cfg.model.num_layers:
            raise ConfigError(f"kernels.cuda_graph_layers must lie between 1 and model.num_layers "
                              f"({cfg.model.num_layers}), got {n_graphed}")
    if not 0 <= o.min_lr <= o.lr:
        raise ConfigError(f"optim.min_lr ({o.min_lr}) must lie between 0 and optim.lr ({o.lr})")
    if o.warmup_iters < 0 or (o.decay_iters is not None and o.decay_iters < 0):
        raise ConfigError("optim.warmup_iters and optim.decay_iters must not be negative")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise ConfigError(f"optim.beta1/beta2 must lie in [0, 1), got {o.beta1}, {o.beta2}")
    if o.clip_grad < 0 or o.weight_decay < 0 or o.eps <= 0:
        raise ConfigError("optim.clip_grad and optim.weight_decay must be >= 0 and optim.eps > 0")
    if d.global_batch_size % d.micro_batch_size:
        raise ConfigError(
            f"data.global_batch_size ({d.global_batch_size}) is not a multiple of data.micro_batch_size ({d.micro_batch_size})")
    if d.source == "indexed" and not d.prefixes:
        raise ConfigError("data.prefixes is empty; give dataset prefixes or set data.source=mock")
    if d.weights and len(d.weights) != len(d.prefixes):
        raise ConfigError(f"data.weights has {len(d.weights)} entries for {len(d.prefixes)} data.prefixes")
    if any(w < 0 for w in d.weights) or (d.weights and sum(d.weights) <= 0):
        raise ConfigError("data.weights must be non-negative and not all zero")
    split = d.split.split(",")
    try:
        split_values = [float(s) for s in split]
    except ValueError:
        raise ConfigError(f"data.split {d.split!r} must be comma-separated numbers such as 98,2,0") from None
    if len(split_values) != 3 or any(s < 0 for s in split_values) or sum(split_values) <= 0:
        raise ConfigError(f"data.split {d.split!r} must be three non-negative numbers such as 98,2,0")
    if world_size is not None:
        if world_size % tp:
            raise ConfigError(f"parallel.tensor_parallel ({tp}) does not divide the world size ({world_size})")
        dp = world_size // tp
        if d.global_batch_size % (d.micro_batch_size * dp):
            raise ConfigError(
                f"data.global_batch_size ({d.global_batch_size}) is not a multiple of "
                f"data.micro_batch_size x data-parallel size ({d.micro_batch_size} x {dp})")
    return cfg


def gradient_accumulation_steps(cfg: LitesparkConfig, world_size: int) -> int:
    """Micro-batches per optimizer step on each data-parallel rank."""
    validate(cfg, world_size)
    dp = world_size // cfg.parallel.tensor_parallel
    return cfg.data.global_batch_size // (cfg.data.micro_batch_size * dp)


# kernels.cuda_graphs=None turns the graphs on up to this micro-batch (docs/performance.md, "CUDA graphs").
GRAPHS_AUTO_MAX_MICRO_BATCH = 2


def cuda_graphs_refusal(cfg: LitesparkConfig) -> Optional[str]:
    """Why the layers of ``cfg`` cannot be captured as CUDA graphs (validate's error), or None when
    they can; the automatic setting turns them on only where this is None."""
    if cfg.kernels.backend == "torch":
        return "kernels.cuda_graphs=true needs kernels.backend 'te' (or 'auto' on a CUDA host with Transformer Engine)"
    if cfg.parallel.tensor_parallel != 1:
        return ("kernels.cuda_graphs=true needs parallel.tensor_parallel=1 "
                "(TP collectives inside captured layers are not supported)")
    if cfg.parallel.zero_stage == 3:
        return ("kernels.cuda_graphs=true needs parallel.zero_stage 1 or 2 "
                "(ZeRO-3 gathers weights into new buffers each forward; a graph needs fixed addresses)")
    if cfg.precision.fp32_grad_accumulation:
        return "kernels.cuda_graphs=true cannot be combined with precision.fp32_grad_accumulation=true (not supported together)"
    return None


def _cuda_graphs_automatic(cfg: LitesparkConfig) -> bool:
    """What ``kernels.cuda_graphs=None`` resolves to: on where the layers can be captured and the
    micro-batch is at most GRAPHS_AUTO_MAX_MICRO_BATCH."""
    return cuda_graphs_refusal(cfg) is None and cfg.data.micro_batch_size <= GRAPHS_AUTO_MAX_MICRO_BATCH


def _cuda_graphs_as_resolved(cfg: LitesparkConfig) -> bool:
    """``kernels.cuda_graphs``, or what its automatic setting (None) resolves to on a GPU host with TE."""
    return cfg.kernels.cuda_graphs if cfg.kernels.cuda_graphs is not None else _cuda_graphs_automatic(cfg)


def fp8_output_layer(cfg: LitesparkConfig) -> bool:
    """Whether ``cfg``'s output layer runs in FP8 (``precision.fp8_output_layer``).

    The automatic setting (None) is on with fp8 and untied embeddings, on both of the paths where it
    was measured: eager layers (the H200 at micro-batch 8, +1.5% tokens/s) and CUDA-graphed layers
    (the H100 at micro-batch 2: +0.9% on average over five runs, three with it and two without, and
    +2.4% in a pinned pair; 77.6 of 80 GiB reserved against 77.4 with the BF16 head;
    docs/performance.md).  Tied embeddings keep Megatron's head, whose weight is the embedding's."""
    p = cfg.precision
    if not p.fp8:
        return False
    if p.fp8_output_layer is not None:
        return p.fp8_output_layer
    return not cfg.model.tie_embeddings


def fp32_grad_accumulation_refusal(cfg: LitesparkConfig) -> Optional[str]:
    """Why ``precision.fp32_grad_accumulation=true`` cannot be used with ``cfg`` (validate's error), or
    None."""
    if not cfg.precision.bf16:
        return "precision.fp32_grad_accumulation=true needs precision.bf16=true (fp32 training has fp32 gradients already)"
    if cfg.parallel.zero_stage != 1:
        return (f"precision.fp32_grad_accumulation=true needs parallel.zero_stage=1, not {cfg.parallel.zero_stage} "
                "(DeepSpeed's BF16 optimizer, which owns the fp32 buffers, is ZeRO-1 only)")
    if cfg.kernels.cuda_graphs:
        return ("precision.fp32_grad_accumulation=true cannot be combined with kernels.cuda_graphs=true "
                "(not supported together; the graphs are for memory-bound micro-batches)")
    return None


def fp32_grad_accumulation(cfg: LitesparkConfig) -> bool:
    """Whether ``cfg`` accumulates gradients in fp32 buffers (``precision.fp32_grad_accumulation``).

    The automatic setting (None) is on with the te backend where it is allowed: BF16, ZeRO-1, and
    the layers not captured as CUDA graphs (graphs are used at small micro-batches, where memory is
    short and the extra 4 bytes per parameter would not fit; docs/performance.md).  A config whose
    backend or graphs are still automatic is judged as it resolves on a GPU host with Transformer
    Engine, so that ``to_deepspeed_config`` stays a pure function of the config.
    """
    if cfg.precision.fp32_grad_accumulation is not None:
        return cfg.precision.fp32_grad_accumulation
    graphs = _cuda_graphs_as_resolved(cfg)
    return (cfg.kernels.backend != "torch" and not graphs and cfg.precision.bf16
            and cfg.parallel.zero_stage == 1)


# parallel.zero_sub_group_size=None splits the optimizer step into groups of this many parameters,
# except where fp32 gradients are on (docs/performance.md, "The optimizer sub-groups").
ZERO_SUB_GROUP_SIZE = 250_000_000


def zero_sub_group_size(cfg: LitesparkConfig) -> Optional[int]:
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


def qkv_rope_kernel_refusal(cfg: LitesparkConfig) -> Optional[str]:
    """Why ``kernels.qkv_rope_kernel`` cannot run this model on the TE backend, or None."""
    k, m = cfg.kernels, cfg.model
    head_dim = m.hidden_size // m.num_attention_heads
    if k.rope_fusion and k.fused_qkv_rope and k.qkv_rope_kernel == "triton" and head_dim & (head_dim - 1):
        return (f"kernels.qkv_rope_kernel=triton needs a power-of-two head dimension, got {head_dim}: "
                "set kernels.qkv_rope_kernel=te")
    return None


def resolve_backend(cfg: LitesparkConfig) -> LitesparkConfig:
    """Replace the automatic kernel choices by what this host and config run (in place):
    kernels.backend='auto' by the backend this host can run, kernels.cuda_graphs=None by whether the
    layers are captured (Transformer Engine, TP 1, ZeRO 1/2, micro-batch <= GRAPHS_AUTO_MAX_MICRO_BATCH),
    precision.fp32_grad_accumulation=None by :func:`fp32_grad_accumulation`.  Call it once the micro-batch size is final."""
    if cfg.kernels.backend == "auto":
        from litespark.layer_spec import te_available  # local: avoids importing torch for config work

        cfg.kernels.backend = "te" if te_available() else "torch"
    refusal = qkv_rope_kernel_refusal(cfg) if cfg.kernels.backend == "te" else None
    if refusal:
        raise ConfigError(refusal)
    if cfg.kernels.backend != "te":
        if cfg.precision.fp8:
            raise ConfigError("precision.fp8=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')")
        if cfg.parallel.sequence_parallel:
            raise ConfigError("parallel.sequence_parallel=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')")
        if cfg.kernels.cuda_graphs:
            raise ConfigError("kernels.cuda_graphs=true needs Transformer Engine on a CUDA host (kernels.backend resolved to 'torch')")
    if cfg.kernels.cuda_graphs is None:
        cfg.kernels.cuda_graphs = _cuda_graphs_automatic(cfg)
    if cfg.precision.fp32_grad_accumulation is None:
        cfg.precision.fp32_grad_accumulation = fp32_grad_accumulation(cfg)
    return cfg
