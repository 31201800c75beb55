"""The Transformer Engine backend of the layer spec on a CUDA GPU (Hopper for FP8): its slots, the same
function as the torch backend under every kernel choice, FP8 recipes, the FP8 output layer, cuDNN's
norm kernels and the Triton QKV RoPE.  Skipped without CUDA; run with ``make gpu-test``."""

from __future__ import annotations

import pytest
import torch

from litespark.model.build import position_ids_for
from tests.helpers.gpu_models import build_on_gpu, losses_and_norms, parameter_names, random_batch

pytestmark = pytest.mark.gpu


def test_te_spec_slots():
    from megatron.core.extensions.transformer_engine import (
        TEDotProductAttention,
        TEFusedMLP,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )
    from megatron.core.transformer.mlp import MLP

    from litespark.model.layer_spec import get_litespark_layer_spec

    sub = get_litespark_layer_spec("te").submodules
    attn = sub.self_attention.submodules
    assert attn.linear_qkv is TELayerNormColumnParallelLinear and attn.core_attention is TEDotProductAttention
    assert attn.linear_proj is TERowParallelLinear and sub.mlp.module is MLP
    assert sub.mlp.submodules.linear_fc1 is TELayerNormColumnParallelLinear
    assert get_litespark_layer_spec("te", fused_mlp=True).submodules.mlp.module is TEFusedMLP


def test_megatron_lm_spec_entry_point():
    # What Megatron-LM's `--spec litespark.model.megatron_lm_spec te_layer_spec` resolves (vars(module)[name]).
    from megatron.core.transformer.spec_utils import import_module

    from litespark.model.layer_spec import get_litespark_layer_spec

    spec = import_module(("litespark.model.megatron_lm_spec", "te_layer_spec"))
    assert spec == get_litespark_layer_spec("te")


def test_te_and_torch_backends_share_parameter_names(dist_world_1):
    _, te_model = build_on_gpu("te")
    from litespark.runtime.distributed import destroy_distributed

    destroy_distributed()
    _, torch_model = build_on_gpu("torch")
    assert parameter_names(te_model) == parameter_names(torch_model)


# Kernel choices that must not change the function: each is compared with the torch backend.
KERNEL_KINDS = {
    "megatron-swiglu": ["kernels.te_swiglu=false"],
    "fused-mlp": ["kernels.fused_mlp=true"],
    "te-swiglu": ["kernels.te_swiglu=true"],
    "split-qkv-rope": ["kernels.fused_qkv_rope=false"],
    "native-cross-entropy": ["kernels.te_cross_entropy=false"],
    "te-qkv-rope": ["kernels.qkv_rope_kernel=te"],
}


@pytest.mark.parametrize("kind", sorted(KERNEL_KINDS))
def test_te_bf16_matches_torch_backend(dist_world_1, kind):
    """Same weights, two backends: logits, loss and the QKV and MLP weight gradients agree to BF16 accuracy."""
    plan, te_model = build_on_gpu("te", *KERNEL_KINDS[kind])
    _, torch_model = build_on_gpu("torch")
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            if "norm" in name:  # layer_norm_weight (fused slots) and final_layernorm
                p.add_(0.1 * torch.randn_like(p))
        state = {k: v for k, v in torch_model.state_dict().items() if not k.endswith("_extra_state")}
    result = te_model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.endswith("_extra_state") for k in result.missing_keys), result
    te_model.eval(), torch_model.eval()
    inputs, labels = random_batch(plan)
    results = []
    for model in (te_model, torch_model):
        with torch.no_grad():
            logits = model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None).float()
        loss = (
            model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels)
            .float()
            .mean()
        )
        loss.backward()
        layer = model.decoder.layers[0]
        results.append(
            (
                logits,
                loss.detach().reshape(1),
                layer.self_attention.linear_qkv.weight.grad.float(),
                layer.mlp.linear_fc1.weight.grad.float(),
                layer.mlp.linear_fc2.weight.grad.float(),
            )
        )
    for what, a, b in zip(
        ("logits", "loss", "qkv weight gradient", "fc1 weight gradient", "fc2 weight gradient"), *results
    ):
        rel = float((a - b).norm() / b.norm())
        assert rel < 2e-2, f"{kind}: TE vs torch backend relative {what} difference {rel:.3e}"
    attention = te_model.decoder.layers[0].self_attention
    assert attention.config.fused_single_qkv_rope is (kind != "split-qkv-rope")
    assert attention.config.cross_entropy_fusion_impl == ("native" if kind == "native-cross-entropy" else "te")
    from megatron_patches import qkv_rope as qkv_rope_patch

    if kind != "split-qkv-rope":  # that model does not call the rotation, whose binding stays as it was
        assert qkv_rope_patch.is_applied() is (kind != "te-qkv-rope")
    if kind == "te-swiglu":
        from transformer_engine.pytorch.ops import SwiGLU

        assert isinstance(te_model.decoder.layers[0].mlp.activation_func, SwiGLU)


@pytest.mark.parametrize(
    "recipe, fused_mlp", [("delayed", False), ("tensorwise", False), ("blockwise", False), ("tensorwise", True)]
)
def test_fp8_forward_backward(dist_world_1, recipe, fused_mlp):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FP8 needs Hopper or newer")
    plan, model = build_on_gpu(
        "te", "precision.fp8=true", f"precision.fp8_recipe={recipe}", f"kernels.fused_mlp={str(fused_mlp).lower()}"
    )
    inputs, labels = random_batch(plan)
    losses = []
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        loss = (
            model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels)
            .float()
            .mean()
        )
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{recipe}: bad gradient for {name}"
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], f"{recipe}: loss did not fall on a fixed batch: {losses}"


def test_fp8_output_layer_keeps_the_weight_and_trains_like_the_bf16_head(dist_world_1):
    """precision.fp8_output_layer: the LM head becomes a TE linear under the FP8 recipe with the same
    weight and parameter name (plus TE's extra state), every other weight untouched (each build seeds
    from the same state, and the swap leaves the RNG as it found it); it is linked to
    DeepSpeed's fp32 gradient buffer, and 8 training steps track the BF16 head's: losses within 3%,
    and falling."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FP8 needs Hopper or newer")
    from litespark.model.modules.fp8_output_layer import fp8_output_layer_class
    from litespark.runtime.engine import build_engine

    common = [
        "precision.fp8=true",
        "data.global_batch_size=4",
        "optim.lr=1e-3",
        "optim.warmup_iters=2",
        "optim.min_lr=1e-3",
        "optim.clip_grad=0.5",
        "precision.fp32_grad_accumulation=true",
    ]
    runs, states = {}, {}
    for fp8_head in (True, False):
        plan, model = build_on_gpu("te", *common, f"precision.fp8_output_layer={str(fp8_head).lower()}")
        assert plan.fp8_output_layer is fp8_head
        assert isinstance(model.output_layer, fp8_output_layer_class()) is fp8_head
        states[fp8_head] = {
            k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")
        }
        if fp8_head:
            assert "output_layer._extra_state" in model.state_dict()
        engine, optimizer, _ = build_engine(plan, model)
        assert ("output_layer.weight" in engine.litespark_fp32_grads.names) is fp8_head
        runs[fp8_head] = losses_and_norms(engine, plan, 8)
        del engine, model, optimizer
        torch.cuda.empty_cache()
    assert states[True].keys() == states[False].keys()
    for k, v in states[False].items():
        assert torch.equal(states[True][k], v), k
    for (loss, _), (ref_loss, _) in zip(runs[True], runs[False]):
        assert abs(loss - ref_loss) <= 0.03 * ref_loss, (runs[True], runs[False])
    assert runs[True][-1][0] < 0.8 * runs[True][0][0], f"loss did not fall: {runs[True]}"


def test_cudnn_norm_kernels_compute_what_te_kernels_do(tmp_path):
    """``kernels.norm_kernel``: TE's RMSNorm kernels and cuDNN's, one process each (TE reads the switch
    once per process), same weights and batch: the switch takes effect and the results agree."""
    import subprocess
    import sys

    from tests.helpers.processes import ROOT, train_env

    results = {}
    for kernel in ("te", "cudnn"):
        out = tmp_path / f"{kernel}.pt"
        proc = subprocess.run(
            [sys.executable, "tests/helpers/workers/norm_kernel_worker.py", "--norm-kernel", kernel, "--out", str(out)],
            cwd=ROOT,
            env=train_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[kernel] = torch.load(out)
    value = {"te": "0", "cudnn": "1"}
    for kernel, result in results.items():
        assert set(result["switches"].values()) == {value[kernel]}, result["switches"]
    precisions = ["bf16"] + (["fp8"] if torch.cuda.get_device_capability() >= (9, 0) else [])
    for precision in precisions:
        te_names, cudnn_names = results["te"][precision]["norm_kernels"], results["cudnn"][precision]["norm_kernels"]
        assert any("transformer_engine::normalization" in n for n in te_names), te_names
        assert not any("transformer_engine::normalization" in n for n in cudnn_names), cudnn_names
        for what in ("logits", "loss", "qkv_grad", "fc1_grad"):
            a, b = results["cudnn"][precision][what], results["te"][precision][what]
            rel = float((a - b).norm() / b.norm())
            assert rel < (1e-2 if precision == "bf16" else 3e-2), (
                f"{precision} {what}: cuDNN vs TE norm relative difference {rel:.3e}"
            )


def test_triton_qkv_rope_matches_tes_kernel():
    """kernels.qkv_rope_kernel=triton computes what TE's fused QKV RoPE does: same q, k, v and the
    same gradient of the unsplit QKV tensor, up to one bf16 rounding."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from transformer_engine.pytorch.attention.rope import apply_fused_qkv_rotary_pos_emb

    from litespark.model.modules.qkv_rope import apply_qkv_rope

    s, b, groups, heads, dim = 256, 2, 4, 3, 128
    freqs = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=500000)(s)
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(s, b, groups, (heads + 2) * dim, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    split = [heads * dim, dim, dim]
    ours = apply_qkv_rope(qkv, freqs, freqs, split)
    te = apply_fused_qkv_rotary_pos_emb(qkv, freqs, freqs, split)
    grads = [torch.randn_like(t) for t in te]
    (ours_grad,) = torch.autograd.grad(ours, qkv, grads)
    (te_grad,) = torch.autograd.grad(te, qkv, grads)
    for what, a, t in zip(("q", "k", "v", "qkv gradient"), (*ours, ours_grad), (*te, te_grad)):
        assert a.shape == t.shape, what
        torch.testing.assert_close(a, t, rtol=8e-3, atol=1e-5, msg=lambda m, what=what: f"{what}: {m}")
