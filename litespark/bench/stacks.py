"""The training stacks the benchmark compares, each built the way its own users build it.

* ``hf``: ``transformers.LlamaForCausalLM`` (SDPA attention) with fp32 parameters, bf16 autocast and
  ``torch.optim.AdamW(fused=True)``, gradient clipping at 1.0 -- what the Hugging Face Trainer does
  with ``bf16=True``.
* ``mcore-bf16`` / ``mcore-fp8``: Megatron-Core's own ``get_gpt_layer_with_transformer_engine_spec``
  with a ``TransformerConfig`` left at Megatron's defaults except for the Llama shape (and
  ``fp8="hybrid"``, delayed scaling), under a DeepSpeed ZeRO-1 engine (bf16, fp32 master weights,
  ``torch_adam``: DeepSpeed's documented way around the FusedAdam JIT build).  The FP8 weight cache
  is refreshed once per optimizer step, as Megatron's own schedule does.  This is "the parts
  composed without Litespark's work".
* ``litespark``: the shipped path -- ``build_model`` + ``build_engine`` + ``train_step`` from the
  trainer, with the preset's settings.
* ``litespark-bf16``: the same with ``precision.fp8=false``: the reference for the FP8 numerics
  check, since it starts from the same initial weights as ``litespark`` (Megatron's GPU
  initialisation in the ``mcore-*`` stacks draws different ones).

Every stack sees the same token windows, the same optimizer hyper-parameters and the same learning
rate schedule (DeepSpeed's ``WarmupCosineLR`` with the Litespark config's values), so losses after
the same steps are comparable.  A stack is a function ``step(list_of_micro_batches) -> loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from litespark.config import LitesparkConfig, RunPlan
from litespark.runtime.deepspeed_config import scheduler_params, start_schedule

STACKS: tuple[str, ...] = ("hf", "mcore-bf16", "mcore-fp8", "litespark", "litespark-bf16")
NEEDS_TE: frozenset[str] = frozenset({"mcore-fp8"})


@dataclass
class BuiltStack:
    """A ready-to-train stack: ``step`` runs one optimizer step over a list of [b, s+1] token tensors."""

    step: Callable[[list[torch.Tensor]], torch.Tensor]
    description: str
    engine: Any = None
    """The DeepSpeed engine where there is one (``python -m litespark.bench.profile_step`` times its calls)."""


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Hugging Face


def build_hf(cfg: LitesparkConfig) -> BuiltStack:
    """LlamaForCausalLM in fp32 with bf16 autocast, fused torch AdamW, clipping, accumulation."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR
    from transformers import LlamaConfig, LlamaForCausalLM

    from litespark.convert.hf_llama import to_hf_config_kwargs, to_llama_config_kwargs
    from litespark.runtime.engine import param_groups

    m, o = cfg.model, cfg.optim
    device = _device()
    conf = LlamaConfig(  # type: ignore[call-arg]  # transformers 5 takes attn_implementation as **kwargs
        **to_llama_config_kwargs(to_hf_config_kwargs(m)), use_cache=False, attn_implementation="sdpa"
    )
    with device:
        model = LlamaForCausalLM(conf)
    model.train()
    opt = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=device.type == "cuda"
    )
    sched = WarmupCosineLR(opt, **scheduler_params(cfg))
    start_schedule(sched, cfg)
    dtype = torch.bfloat16 if cfg.precision.bf16 else torch.float32

    def step(micro_batches: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=device)
        for tokens in micro_batches:
            inputs = tokens[:, :-1]
            with torch.autocast(device.type, dtype=dtype, enabled=cfg.precision.bf16):
                # HF shifts the labels inside: position t is scored against inputs[t + 1].
                loss = model(input_ids=inputs, labels=inputs).loss
            (loss / len(micro_batches)).backward()
            total += loss.detach()
        if o.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return total / len(micro_batches)

    return BuiltStack(
        step, "transformers.LlamaForCausalLM (sdpa), fp32 params + bf16 autocast, torch AdamW fused, clip 1.0"
    )


# ----------------------------------------------------------------------------------------------
# Megatron-Core's own TE spec under DeepSpeed ZeRO-1, defaults left alone


def naive_transformer_config(cfg: LitesparkConfig, fp8: bool):
    """The TransformerConfig a user writes for the Llama shape, everything else Megatron's default."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    m = cfg.model
    kwargs = {}
    if fp8:
        kwargs = {
            "fp8": "hybrid",
            "fp8_recipe": "delayed",
            "fp8_amax_history_len": 1024,
            "fp8_amax_compute_algo": "max",
        }
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        bf16=cfg.precision.bf16,
        params_dtype=torch.bfloat16 if cfg.precision.bf16 else torch.float32,
        use_cpu_initialization=not torch.cuda.is_available(),
        **kwargs,
    )


def naive_deepspeed_config(cfg: LitesparkConfig, micro_batch: int) -> dict:
    """ZeRO-1, bf16, AdamW (torch), clipping 1.0, the shared schedule; nothing tuned."""
    o, d = cfg.optim, cfg.data
    return {
        "train_batch_size": d.global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": d.global_batch_size // micro_batch,
        "gradient_clipping": o.clip_grad,
        "bf16": {"enabled": cfg.precision.bf16},
        "zero_optimization": {"stage": 1},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": [o.beta1, o.beta2],
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                "torch_adam": True,
            },
        },
        "scheduler": {"type": "WarmupCosineLR", "params": scheduler_params(cfg)},
        "steps_per_print": 10**9,
    }


def build_mcore(cfg: LitesparkConfig, fp8: bool, micro_batch: int) -> BuiltStack:
    """GPTModel with Megatron-Core's TE layer spec (local spec without TE) under DeepSpeed ZeRO-1."""
    import deepspeed
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    import megatron_patches
    from litespark.environment import te_available
    from litespark.model.build import padded_vocab_size, position_ids_for, rope_kwargs
    from litespark.runtime.engine import init_deepspeed_comm, param_groups
    from litespark.runtime.megatron_mpu import MegatronMPU

    megatron_patches.apply_all()
    use_te = te_available()
    if fp8 and not use_te:
        raise RuntimeError("mcore-fp8 needs CUDA and Transformer Engine")
    if use_te:
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        # CPU (plumbing tests only): Megatron's local DotProductAttention allocates on CUDA, so the
        # core-attention slot gets the torch SDPA module; everything else is Megatron's local spec.
        from litespark.model.modules import SDPAttention

        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    m = cfg.model
    model = GPTModel(
        config=naive_transformer_config(cfg, fp8),
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(cfg),
        max_sequence_length=m.seq_length,
        share_embeddings_and_output_weights=m.tie_embeddings,
        **rope_kwargs(m),
    )
    init_deepspeed_comm()
    device = _device()
    engine, _, _, _ = deepspeed.initialize(
        model=model.to(device),
        model_parameters=param_groups(model, cfg.optim.weight_decay),
        config=naive_deepspeed_config(cfg, micro_batch),
        mpu=MegatronMPU(),
        dist_init_required=False,
    )

    def step(micro_batches: list[torch.Tensor]) -> torch.Tensor:
        engine.module.set_is_first_microbatch()  # new weights: re-quantise (Megatron's schedule does this)
        total = torch.zeros((), device=device)
        for tokens in micro_batches:
            inputs, labels = tokens[:, :-1], tokens[:, 1:]
            loss = (
                engine(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels)
                .float()
                .mean()
            )
            engine.backward(loss)
            engine.step()
            total += loss.detach()
        return total / len(micro_batches)

    what = "Megatron-Core TE spec" if use_te else "Megatron-Core local spec (torch SDPA core attention)"
    numerics = "FP8 delayed" if fp8 else ("BF16" if cfg.precision.bf16 else "FP32")
    return BuiltStack(
        step,
        f"{what}, {numerics}, Megatron defaults, DeepSpeed ZeRO-1 fp32 master, torch AdamW (foreach), clip 1.0",
        engine,
    )


# ----------------------------------------------------------------------------------------------
# Litespark as shipped


def build_litespark(plan: RunPlan) -> BuiltStack:
    """``build_model`` + ``build_engine`` + the trainer's ``train_step``."""
    from litespark.model.build import build_model
    from litespark.runtime.engine import build_engine
    from litespark.training.step import train_step

    cfg = plan.config
    engine, _, _ = build_engine(plan, build_model(plan))
    device = _device()
    ones: dict[torch.Size, torch.Tensor] = {}

    def step(micro_batches: list[torch.Tensor]) -> torch.Tensor:
        batches = []
        for tokens in micro_batches:
            mask = ones.setdefault(tokens.shape, torch.ones(tokens[:, 1:].shape, device=device))
            batches.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask})
        return train_step(engine, batches)

    p = cfg.precision
    numerics = f"FP8 {p.fp8_recipe}" if p.fp8 else ("BF16" if p.bf16 else "FP32")
    if plan.fp8_output_layer:
        numerics += " (output layer too)"
    graphs = f", CUDA graphs ({plan.cuda_graph_layers} layers)" if plan.cuda_graphs else ""
    # The engine's own reduction dtype: what ran, not what the config meant.
    reduced = (
        str(engine.communication_data_type)
        .removeprefix("torch.")
        .replace("float32", "fp32")
        .replace("bfloat16", "bf16")
    )
    grads = (
        f", fp32 gradients written by TE (BF16_Optimizer), reduced in {reduced}" if plan.fp32_grad_accumulation else ""
    )
    group = plan.zero_sub_group_size
    groups = f", optimizer groups of <= {group:,} parameters" if group else ", one optimizer group for the matrices"
    # What the built model's Megatron config switched on (to_transformer_config decides it).
    tc = engine.module.config
    from megatron_patches import qkv_rope as qkv_rope_patch

    rope = "fused QKV RoPE" + (" (Triton)" if qkv_rope_patch.is_applied() else " (TE)")
    fused = [
        name
        for name, on in (
            ("TE SwiGLU", tc.use_te_activation_func),
            (rope, tc.fused_single_qkv_rope),
            ("TE cross-entropy", tc.cross_entropy_loss_fusion and tc.cross_entropy_fusion_impl == "te"),
        )
        if on
    ]
    kernels = f" ({', '.join(fused)})" if fused else ""
    what = (
        f"Litespark spec ({plan.backend}{kernels}), {numerics}, DeepSpeed ZeRO-{cfg.parallel.zero_stage} "
        f"fp32 master, torch AdamW fused{graphs}{grads}{groups}"
        f"{', DeepSpeed step patches' if cfg.optim.deepspeed_step_patches else ''}"
    )
    return BuiltStack(step, what, engine)


def build_stack(name: str, plan: RunPlan) -> BuiltStack:
    """Build stack ``name`` for ``plan`` (shape, batch and optimizer settings come from its config)."""
    cfg = plan.config
    if name == "hf":
        return build_hf(cfg)
    if name in ("mcore-bf16", "mcore-fp8"):
        return build_mcore(cfg, fp8=name == "mcore-fp8", micro_batch=plan.micro_batch_size)
    if name == "litespark":
        return build_litespark(plan)
    if name == "litespark-bf16":
        import copy

        from litespark.config import plan_for

        bf16 = copy.deepcopy(cfg)
        bf16.precision.fp8 = False
        return build_litespark(plan_for(bf16, plan.world_size, plan.backend, plan.micro_batch_size))
    raise ValueError(f"unknown stack {name!r} (known: {', '.join(STACKS)})")
