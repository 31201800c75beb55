"""The one typed configuration of a Litespark run: nested dataclasses, one per section.

Everything else (Megatron's ``TransformerConfig``, the DeepSpeed JSON, the Slurm launch) is derived
from a :class:`LitesparkConfig` by pure functions, so a run is fully described by the resolved config
that ``--print-config`` shows.  This module only says what the fields are; building a config from
presets, YAML and ``--set`` is :mod:`litespark.config.overrides`, checking it
:mod:`litespark.config.validate`, and what the automatic (``None`` / ``'auto'``) fields become
:mod:`litespark.config.automatic`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    rope_scaling_factor: float | None = None
    """Llama 3 RoPE scaling (``rope_type: llama3``): the factor by which the low frequencies are
    divided (8 in Llama 3.1 and 3.3, 32 in Llama 3.2), with Megatron-Core's fixed low/high frequency
    factors 1 and 4 over 8192 original positions, as every Llama 3.x checkpoint has them.  None: plain RoPE."""
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
    zero_sub_group_size: int | None = None
    """Most parameters the optimizer step converts and updates at once.  The step's transient
    buffers (a flat bf16 gradient and its fp32 copy, 6 bytes per parameter of the group) are this
    big instead of the whole model's: ZeRO-3's ``sub_group_size``; for stages 1 and 2, which step
    one parameter group at a time, the weight matrices are split into groups of at most this many
    parameters.  None (auto): :data:`litespark.config.automatic.ZERO_SUB_GROUP_SIZE`, except with fp32 gradients
    (``precision.fp32_grad_accumulation``), whose optimizer has no such transient: one group there
    (:func:`litespark.config.automatic.zero_sub_group_size`)."""


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
    fp8_output_layer: bool | None = None
    """With fp8: the output layer (LM head) as a TE linear under the same FP8 recipe instead of
    Megatron's BF16 one (:mod:`litespark.model.modules.fp8_output_layer`).  None (automatic): on
    with fp8 unless the embeddings are tied (the tied weight is the embedding's), with or without CUDA
    graphs; true refuses tied embeddings; ignored without fp8, so a BF16 comparison run can share the
    setting.  What it buys: docs/performance.md."""
    fp32_grad_accumulation: bool | None = None
    """Keep the gradients in fp32 buffers that DeepSpeed's BF16 ZeRO-1 optimizer owns, and have
    Transformer Engine's weight-gradient GEMMs write into them directly (Megatron's gradient-
    accumulation fusion, ``main_grad``), instead of bf16 ``.grad`` tensors that the ZeRO optimizer
    flattens and converts to fp32 at every step.  Costs 4 bytes per parameter at the memory peak: the
    fp32 buffers live through the forward pass, where the bf16 gradients did not exist yet.  Needs bf16, ZeRO stage 1 and no CUDA graphs.  None (auto): on where that holds with
    the te backend (:func:`litespark.config.automatic.fp32_grad_accumulation`)."""


@dataclass
class KernelConfig:
    """Implementation choices that must not change the function computed (see docs/design.md)."""

    backend: Literal["auto", "te", "torch"] = "auto"
    """Which modules fill the layer spec's slots: Transformer Engine (CUDA) or the torch reference.
    'auto' resolves to 'te' when CUDA and Transformer Engine are present, else 'torch'."""
    fused_mlp: bool = False
    """TE backend: run RMSNorm + FC1 + SwiGLU + FC2 through TE's operation fuser (Megatron's
    TEFusedMLP).  BF16 or tensorwise FP8 only: with TE 2.10 / mcore 0.16.1 the delayed recipe gives
    NaN FC1 gradients and the blockwise recipe is not implemented by the fuser."""
    te_swiglu: bool = True
    """TE backend: the MLP's SwiGLU from Transformer Engine (``te.pytorch.ops.SwiGLU`` in the MLP's
    activation slot, Megatron's ``use_te_activation_func``) instead of Megatron's compiled SwiGLU.
    Same function, fewer host calls (docs/performance.md).  Ignored by the torch backend and by ``fused_mlp`` (which has its own)."""
    rope_fusion: bool = True
    """TE backend: fused RoPE kernel instead of the unfused torch rotation."""
    fused_qkv_rope: bool = True
    """TE backend with rope_fusion: rotate the unsplit QKV projection output in one TE kernel that also
    writes q, k and v apart (Megatron's ``fused_single_qkv_rope``), instead of splitting it into
    views, copying them contiguous, rotating q and k separately and concatenating the three gradients
    in backward.  Same function.  Ignored without rope_fusion, by the torch backend and with
    ``data.source=sft`` (packed rows restart positions per document, which only the split path takes)."""
    norm_kernel: Literal["te", "cudnn"] | None = None
    """TE backend: which kernels Transformer Engine runs for RMSNorm (forward, with its FP8 output, and
    backward).  'te': TE's own, which have tuned variants only for some hidden sizes (512, 768, 1024,
    2048, 4096, 8192 in TE 2.10) and fall back to general kernels otherwise (llama-3b's 3072,
    llama-30b's 6656).  'cudnn': cuDNN's normalization graphs (TE's ``NVTE_NORM_FWD_USE_CUDNN`` /
    ``NVTE_NORM_BWD_USE_CUDNN``), which cuDNN builds for each number of tokens it has not seen.  Same
    function (docs/performance.md).  None (automatic): 'cudnn' on fixed-size rows (pretraining),
    'te' on packed SFT and DPO micro-batches, whose token counts change at every micro-batch, so
    that cuDNN would stop a step for a new graph again and again.  Process-wide:
    :func:`litespark.model.build.build_model` sets TE's switches, which TE reads once, at the first
    normalization in the process."""
    qkv_rope_kernel: Literal["te", "triton"] = "triton"
    """With fused_qkv_rope (TE backend): which kernels rotate the unsplit QKV output.  'te':
    Transformer Engine's ``fused_qkv_rope`` kernels.  'triton': Litespark's Triton kernel
    (:mod:`litespark.model.modules.qkv_rope`, installed by :mod:`megatron_patches.qkv_rope`), the
    same fp32 rotation, written to load each token's cos/sin once for all its heads (docs/performance.md).
    Needs a power-of-two head dimension.  Process-wide: the last model built that calls the rotation
    decides for every model in the process."""
    te_cross_entropy: bool = True
    """TE backend: Transformer Engine's fused cross-entropy (one kernel that writes the logits'
    gradient in place of the logits; Megatron's ``cross_entropy_fusion_impl='te'``) instead of
    Megatron's native fused one, which makes an fp32 copy of the logits and keeps their fp32 softmax
    for backward.  Same function.  Ignored by the torch
    backend (which has no fused cross-entropy)."""
    fp8_attention: bool = False
    """TE backend with FP8: run dot-product attention in FP8 too."""
    cuda_graphs: bool | None = None
    """TE backend: replay each transformer layer's training forward and backward as CUDA graphs
    (captured once, after the engine is built, for the configured micro-batch shape); removes the
    host's kernel-launch overhead.  tensor_parallel=1 and ZeRO stage 1 or 2 only.  None (auto):
    on where that holds and the micro-batch is at most
    :data:`litespark.config.automatic.GRAPHS_AUTO_MAX_MICRO_BATCH`, where the step is launch-bound
    (docs/performance.md)."""
    cuda_graph_layers: int | None = None
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
    decay_iters: int | None = None
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
    (:mod:`deepspeed_patches`): the NaN/inf mask of the gradient norm without its two host
    syncs, and the clip as one foreach multiply.  Process-wide; refuses untested DeepSpeed releases."""


PACKED_SOURCES = ("sft", "dpo")
"""Data sources whose examples are packed into rows with document masks (``thd``)."""


@dataclass
class DataConfig:
    """Training data and batching."""

    prefixes: list[str] = field(default_factory=list)
    """Megatron indexed dataset prefixes (PATH without .bin/.idx); empty with source='mock'."""
    weights: list[float] = field(default_factory=list)
    """Blend weights, one per prefix; empty means proportional to size."""
    source: Literal["indexed", "mock", "sft", "dpo"] = "mock"
    """'indexed' reads the prefixes; 'mock' generates random tokens (benchmarks, tests); 'sft' reads the
    examples of ``sft.data`` and packs them into rows with document masks (``python -m litespark.sft``);
    'dpo' reads preference pairs from ``sft.data`` and packs whole pairs into rows (``python -m
    litespark.dpo``)."""
    split: str = "98,2,0"
    """Train/valid/test split of each prefix, as Megatron's comma-separated weights."""
    micro_batch_size: int | None = 2
    """Sequences per forward/backward on each data-parallel rank.  None (automatic; the GPU presets):
    the fastest that the planner predicts to fit in the GPU's memory (:mod:`litespark.planner`;
    ``python -m litespark.train --plan``), 1 on the torch backend."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks (micro x DP x accumulation)."""
    tokenizer: str | None = None
    """SentencePiece model path, recorded for checkpoints and export; its sha256 must be the one the
    data's manifest records (see ``allow_tokenizer_mismatch``)."""
    allow_tokenizer_mismatch: bool = False
    """Train even though ``tokenizer``'s sha256 differs from the one the data's manifest records
    (the token ids would then mean other words); off: such a run is refused."""
    scan_token_ids: bool = True
    """At start-up, read every token of the data once (a share per rank) and refuse an id outside
    ``model.vocab_size``; off: trust the tokenizer's manifest (its vocabulary size is still checked)."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""


@dataclass
class SFTConfig:
    """The fine-tuning data and starting model of ``data.source=sft`` and ``data.source=dpo``
    (``python -m litespark.sft`` and ``python -m litespark.dpo`` set these)."""

    data: str | None = None
    """A JSONL file (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``) of examples in TRL's formats, or a
    Hugging Face dataset (a hub name or a local directory ``datasets.load_dataset`` reads)."""
    split: str = "train"
    """The split of a Hugging Face dataset (ignored for a JSONL file)."""
    tokenizer: str | None = None
    """A Hugging Face tokenizer directory (``transformers.AutoTokenizer``) with a chat template; None:
    the examples must be tokenised already (``input_ids``)."""
    hf_model: str | None = None
    """A Hugging Face Llama directory whose weights initialise the run (converted once into
    ``RUN_DIR/hf_init``) when ``checkpoint.load`` is not set; None: ``checkpoint.load``'s or random."""
    assistant_only_loss: bool = True
    """Conversations: train on the assistant turns only (the tokens the chat template marks with
    ``{% generation %}``); false: on every token."""
    completion_only_loss: bool = True
    """Prompt-completion examples: train on the completion only; false: on the prompt too."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """An example longer than ``model.seq_length`` (DPO: a sequence longer than half of it): keep its
    start, or drop it (counted either way)."""
    valid_fraction: float = 0.0
    """Share of the examples held out for validation (``run.eval_interval``), chosen with ``run.seed``."""


@dataclass
class DPOConfig:
    """Direct preference optimisation (``data.source=dpo``; :mod:`litespark.dpo.loss` defines the losses)."""

    beta: float = 0.1
    """How far the policy may move from the reference: the implicit reward's scale."""
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    """Losses added up: ``sigmoid`` (DPO), ``hinge``, ``ipo``, ``robust`` (label-smoothed / cDPO) and
    ``sft`` (the chosen responses' negative log-likelihood per token), as TRL's ``loss_type``."""
    loss_weights: list[float] | None = None
    """One weight per ``loss_type`` (None: all 1), as TRL's ``loss_weights``."""
    label_smoothing: float = 0.0
    """The ``robust`` loss's probability that a preference label is flipped, in [0, 0.5)."""
    reference_cache: str | None = None
    """A directory where runs share their reference log-probabilities (computed once, before the first
    step, with the initial weights): a run finds there those of the same data, reference weights,
    model and number format (:mod:`litespark.dpo.reference`).  None: none; each run keeps its own
    in ``RUN_DIR/dpo_data`` either way."""


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    enabled: bool = True
    """False never saves (benchmarks); resume still loads an existing checkpoint when resume=true."""
    save_interval: int = 0
    """Save every N steps (0: only at the end and on a preemption signal)."""
    keep_last: int = 2
    """Complete checkpoints kept on disk."""
    async_save: bool = True
    """Write checkpoints in the background: training blocks only while the state is copied to host
    memory (as much host memory as each process's share of the checkpoint, kept for the run)."""
    overlap_copy: bool | None = None
    """With ``async_save`` on a GPU: run that copy on a stream of its own during the next step's forward
    and backward (the optimizer update waits for it) instead of blocking training for it.  None
    (auto): on with ``async_save`` on the te backend (:func:`litespark.config.automatic.overlap_copy`);
    true needs ``async_save`` (docs/training.md)."""
    resume: bool = True
    """Resume from RUN_DIR/checkpoints/latest when it exists."""
    load: str | None = None
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
    """Global batches (``data.global_batch_size`` sequences each) per validation pass, whatever the
    micro-batch and data-parallel size, so that validation losses of runs on other GPUs compare."""
    run_dir: str = "runs/default"
    """Where checkpoints, metrics.jsonl and the resolved config go."""
    profile_start: int = 0
    """First optimizer step (numbered from 1, as the log counts) to record with the PyTorch profiler
    into RUN_DIR/profile/ (0: none)."""
    profile_steps: int = 3
    """Steps recorded from ``profile_start``."""


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
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "custom"
    """Name of the preset this config started from (informational)."""
