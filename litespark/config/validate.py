"""Checking that a config's fields agree with each other, before anything is built.

:func:`validate` runs one named check per section, in a fixed order, and stops at the first problem
with a one-line :class:`~litespark.config.schema.ConfigError` that names the field.  These are the checks
of the config alone; what depends on how an automatic choice resolves, or on the world size, is
checked where it is decided (:func:`litespark.config.resolve.resolve`).
"""

from __future__ import annotations

import dataclasses
import math

from litespark.config.schema import PACKED_SOURCES, ConfigError, LitesparkConfig


def validate(cfg: LitesparkConfig) -> LitesparkConfig:
    """Reject impossible configurations with a one-line :class:`ConfigError` naming the field."""
    _check_finite(cfg)
    _check_sizes(cfg)
    _check_model_shape(cfg)
    _check_parallel(cfg)
    _check_precision(cfg)
    _check_kernels(cfg)
    _check_optim(cfg)
    _check_data(cfg)
    _check_sft(cfg)
    _check_checkpoint(cfg)
    return cfg


def _check_finite(cfg: LitesparkConfig) -> None:
    """No infinity or NaN anywhere (a config built in code skips the parser, which refuses them too)."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(values):
            continue
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    raise ConfigError(f"{section.name}.{f.name} must be a finite number, got {number}")


def _check_sizes(cfg: LitesparkConfig) -> None:
    """Counts and sizes are positive."""
    m, par, d, r = cfg.model, cfg.parallel, cfg.data, cfg.run
    positive: dict[str, int | None] = {
        "model.num_layers": m.num_layers,
        "model.hidden_size": m.hidden_size,
        "model.num_attention_heads": m.num_attention_heads,
        "model.num_query_groups": m.num_query_groups,
        "model.ffn_hidden_size": m.ffn_hidden_size,
        "model.vocab_size": m.vocab_size,
        "model.seq_length": m.seq_length,
        "model.make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
        "parallel.tensor_parallel": par.tensor_parallel,
        "data.micro_batch_size": d.micro_batch_size,
        "data.global_batch_size": d.global_batch_size,
        "run.train_iters": r.train_iters,
        "run.log_interval": r.log_interval,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "parallel.zero_sub_group_size": par.zero_sub_group_size,
    }
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name, number in {
        "model.rotary_base": m.rotary_base,
        **({"model.rope_scaling_factor": m.rope_scaling_factor} if m.rope_scaling_factor is not None else {}),
        "model.norm_epsilon": m.norm_epsilon,
        "model.init_method_std": m.init_method_std,
        "optim.lr": cfg.optim.lr,
    }.items():
        if not number > 0:
            raise ConfigError(f"{name} must be positive, got {number}")
    if r.profile_start < 0 or r.profile_steps < 1:
        raise ConfigError(
            f"run.profile_start must be >= 0 and run.profile_steps >= 1, got {r.profile_start} and {r.profile_steps}"
        )
    if r.profile_start and r.profile_start + r.profile_steps - 1 > r.train_iters:
        raise ConfigError(
            f"run.profile_start {r.profile_start} with run.profile_steps {r.profile_steps} ends after "
            f"run.train_iters ({r.train_iters})"
        )


def _check_model_shape(cfg: LitesparkConfig) -> None:
    """Heads divide the width, query groups divide the heads, RoPE gets an even head dimension."""
    m = cfg.model
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size ({m.hidden_size}) is not divisible by model.num_attention_heads ({m.num_attention_heads})"
        )
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"model.num_query_groups ({m.num_query_groups}) does not divide model.num_attention_heads ({m.num_attention_heads})"
        )
    if (m.hidden_size // m.num_attention_heads) % 2:
        raise ConfigError(f"model head dimension {m.hidden_size // m.num_attention_heads} must be even for RoPE")


def _check_parallel(cfg: LitesparkConfig) -> None:
    """TP splits the heads, groups and FFN evenly; the ZeRO stage and sequence parallelism fit TP."""
    m, par = cfg.model, cfg.parallel
    tp = par.tensor_parallel
    for name, value in (
        ("model.num_attention_heads", m.num_attention_heads),
        ("model.num_query_groups", m.num_query_groups),
        ("model.ffn_hidden_size", m.ffn_hidden_size),
    ):
        if value % tp:
            raise ConfigError(f"parallel.tensor_parallel ({tp}) does not divide {name} ({value})")
    if par.zero_stage not in (1, 2, 3):
        raise ConfigError(f"parallel.zero_stage must be 1, 2 or 3, got {par.zero_stage}")
    if par.zero_stage == 3 and tp > 1:
        raise ConfigError(
            "parallel.zero_stage=3 needs parallel.tensor_parallel=1 (ZeRO-3 does not shard TP-split weights)"
        )
    if par.sequence_parallel and tp == 1:
        raise ConfigError("parallel.sequence_parallel needs parallel.tensor_parallel > 1")


def _check_precision(cfg: LitesparkConfig) -> None:
    """FP8 needs BF16; the FP8 output layer needs untied embeddings."""
    prec = cfg.precision
    if prec.fp8 and not prec.bf16:
        raise ConfigError("precision.fp8=true needs precision.bf16=true (non-FP8 ops run in BF16)")
    if prec.fp8 and prec.fp8_output_layer is True and cfg.model.tie_embeddings:
        raise ConfigError(
            "precision.fp8_output_layer=true does not support model.tie_embeddings=true "
            "(the tied weight is the embedding's)"
        )
    if prec.fp8_amax_history_len <= 0:
        raise ConfigError(f"precision.fp8_amax_history_len must be positive, got {prec.fp8_amax_history_len}")


def _check_kernels(cfg: LitesparkConfig) -> None:
    """Kernel choices that the recipe, the head dimension or each other rule out."""
    k, prec = cfg.kernels, cfg.precision
    if k.fused_mlp and prec.fp8 and prec.fp8_recipe != "tensorwise":
        raise ConfigError(
            f"kernels.fused_mlp=true works with precision.fp8_recipe=tensorwise only, not {prec.fp8_recipe} "
            "(TE's op fuser: NaN gradients with delayed, no blockwise support)"
        )
    if k.fp8_attention and not prec.fp8:
        raise ConfigError("kernels.fp8_attention=true needs precision.fp8=true")
    n_graphed = k.cuda_graph_layers
    if n_graphed is not None:
        if k.cuda_graphs is not True:
            raise ConfigError("kernels.cuda_graph_layers needs kernels.cuda_graphs=true")
        if not 1 <= n_graphed <= cfg.model.num_layers:
            raise ConfigError(
                f"kernels.cuda_graph_layers must lie between 1 and model.num_layers "
                f"({cfg.model.num_layers}), got {n_graphed}"
            )


def _check_optim(cfg: LitesparkConfig) -> None:
    """Learning-rate schedule and AdamW hyper-parameters in their ranges."""
    o = cfg.optim
    if not 0 <= o.min_lr <= o.lr:
        raise ConfigError(f"optim.min_lr ({o.min_lr}) must lie between 0 and optim.lr ({o.lr})")
    if o.warmup_iters < 0 or (o.decay_iters is not None and o.decay_iters < 0):
        raise ConfigError("optim.warmup_iters and optim.decay_iters must not be negative")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise ConfigError(f"optim.beta1/beta2 must lie in [0, 1), got {o.beta1}, {o.beta2}")
    if o.clip_grad < 0 or o.weight_decay < 0 or o.eps <= 0:
        raise ConfigError("optim.clip_grad and optim.weight_decay must be >= 0 and optim.eps > 0")


def _check_data(cfg: LitesparkConfig) -> None:
    """Batch sizes divide, indexed data has prefixes, blend weights and split are well formed."""
    d = cfg.data
    if d.micro_batch_size is not None and d.global_batch_size % d.micro_batch_size:
        raise ConfigError(
            f"data.global_batch_size ({d.global_batch_size}) is not a multiple of data.micro_batch_size ({d.micro_batch_size})"
        )
    if d.source == "indexed" and not d.prefixes:
        raise ConfigError("data.prefixes is empty; give dataset prefixes or set data.source=mock")
    if d.weights and len(d.weights) != len(d.prefixes):
        raise ConfigError(f"data.weights has {len(d.weights)} entries for {len(d.prefixes)} data.prefixes")
    if any(w < 0 for w in d.weights) or (d.weights and sum(d.weights) <= 0):
        raise ConfigError("data.weights must be non-negative and not all zero")
    try:
        split = [float(s) for s in d.split.split(",")]
    except ValueError:
        raise ConfigError(f"data.split {d.split!r} must be comma-separated numbers such as 98,2,0") from None
    if len(split) != 3 or any(s < 0 for s in split) or sum(split) <= 0:
        raise ConfigError(f"data.split {d.split!r} must be three non-negative numbers such as 98,2,0")


def _check_sft(cfg: LitesparkConfig) -> None:
    """SFT and DPO data name their examples; packed rows cannot be replayed as CUDA graphs."""
    d, s = cfg.data, cfg.sft
    if d.source not in PACKED_SOURCES:
        return
    if not s.data:
        raise ConfigError(f"data.source={d.source} needs sft.data (a JSONL file or a Hugging Face dataset)")
    if not 0 <= s.valid_fraction < 1:
        raise ConfigError(f"sft.valid_fraction must lie in [0, 1), got {s.valid_fraction}")
    if cfg.run.eval_interval and not s.valid_fraction:
        raise ConfigError(
            f"run.eval_interval with data.source={d.source} needs sft.valid_fraction > 0 (the held-out examples)"
        )
    if cfg.run.eval_interval and cfg.run.eval_iters < 1:
        raise ConfigError(f"run.eval_iters must be >= 1 to evaluate, got {cfg.run.eval_iters}")
    if cfg.kernels.cuda_graphs:
        raise ConfigError(
            f"kernels.cuda_graphs=true cannot run data.source={d.source}: packed rows change their document "
            "boundaries every micro-batch, which a captured graph cannot"
        )
    if d.source == "dpo":
        _check_dpo(cfg)


def _check_dpo(cfg: LitesparkConfig) -> None:
    """The preference loss's settings (:class:`litespark.dpo.loss.PreferenceLoss` says the same)."""
    from litespark.dpo.loss import LOSS_TYPES

    p = cfg.dpo
    unknown = [t for t in p.loss_type if t not in LOSS_TYPES]
    if unknown or not p.loss_type:
        raise ConfigError(f"dpo.loss_type must list some of {', '.join(LOSS_TYPES)}, got {p.loss_type}")
    if p.loss_weights is not None and len(p.loss_weights) != len(p.loss_type):
        raise ConfigError(f"dpo.loss_weights has {len(p.loss_weights)} weights for {len(p.loss_type)} loss types")
    if not p.beta > 0:
        raise ConfigError(f"dpo.beta must be positive, got {p.beta}")
    if not 0 <= p.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing must lie in [0, 0.5), got {p.label_smoothing}")
    if p.label_smoothing and "robust" not in p.loss_type:
        raise ConfigError("dpo.label_smoothing is used by the robust loss only: add robust to dpo.loss_type")
    if cfg.precision.fp8 and cfg.precision.fp8_recipe != "blockwise":
        # Measured on an H200 (docs/post_training.md): with the weights still the reference's, the
        # first step's loss was 0.96 (delayed) and 0.65 (tensorwise) instead of log 2.
        raise ConfigError(
            f"data.source=dpo with precision.fp8 needs precision.fp8_recipe=blockwise, not {cfg.precision.fp8_recipe}: "
            "its per-tensor scales depend on the rest of the micro-batch (and, delayed, on earlier ones), so the "
            "policy would not reproduce the reference pass's log-probabilities"
        )
    if cfg.model.seq_length < 4:
        raise ConfigError("data.source=dpo needs model.seq_length >= 4 (a row holds both sequences of a pair)")


def _check_checkpoint(cfg: LitesparkConfig) -> None:
    """Overlapping the copy is a way of making the asynchronous save's copy: it needs one."""
    if cfg.checkpoint.overlap_copy and not cfg.checkpoint.async_save:
        raise ConfigError("checkpoint.overlap_copy=true needs checkpoint.async_save=true")
