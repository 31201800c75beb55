"""kernels.qkv_rope_kernel=triton: the reference function against Megatron's own RoPE, the Triton
kernels against the reference (in Triton's CPU interpreter here; tests/model/test_te_backend_gpu.py compares them with
TE's kernel on a GPU), and the patch that installs them."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest
import torch

from litespark.model.modules import qkv_rope
from tests.helpers.processes import ROOT


def _freqs(s: int, dim: int, extra: int = 3) -> torch.Tensor:
    """Megatron's layout: [s, 1, 1, dim] angles, the half-width frequencies repeated."""
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(s + extra, dtype=torch.float32), inv)
    return torch.cat((angles, angles), dim=-1)[:, None, None, :]


def _qkv(s=6, b=2, groups=2, heads=3, dim=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s, b, groups, (heads + 2) * dim, generator=g).to(dtype).requires_grad_()
    return x, [heads * dim, dim, dim]


def test_reference_rotates_like_megatrons_unfused_rope():
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    x, split = _qkv(dtype=torch.float64)
    freqs = _freqs(6, 8).double()
    q, k, v = qkv_rope.qkv_rope_reference(x, freqs, freqs, split)
    q_in, k_in, v_in = x.split(split, dim=-1)
    expected_q = _apply_rotary_pos_emb_bshd(q_in.reshape(6, 2, -1, 8), freqs[:6])
    expected_k = _apply_rotary_pos_emb_bshd(k_in, freqs[:6])
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)
    assert torch.equal(v, v_in)
    assert q.shape == (6, 2, 6, 8) and k.shape == v.shape == (6, 2, 2, 8)


@pytest.fixture
def interpreted_kernels(monkeypatch):
    """The Triton kernels run by Triton's CPU interpreter (decided when the kernel module is imported)."""
    pytest.importorskip("triton")
    import litespark.model.modules._qkv_rope_triton as kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    importlib.reload(kernels)
    qkv_rope._kernels.cache_clear()
    yield
    monkeypatch.delenv("TRITON_INTERPRET")
    importlib.reload(kernels)
    qkv_rope._kernels.cache_clear()


@pytest.mark.parametrize(
    "s, b, groups, heads, dim",
    [(6, 2, 2, 3, 8), (5, 1, 3, 1, 16), (9, 3, 1, 4, 4)],
    ids=["gqa", "rows-not-a-block-multiple", "one-group"],
)
def test_triton_kernels_compute_the_reference(interpreted_kernels, s, b, groups, heads, dim):
    x, split = _qkv(s, b, groups, heads, dim)
    freqs = _freqs(s, dim)
    out = qkv_rope.apply_qkv_rope(x, freqs, freqs, split)
    ref = qkv_rope.qkv_rope_reference(x, freqs, freqs, split)
    for a, r in zip(out, ref):
        assert a.shape == r.shape and a.is_contiguous()
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-6)
    grads = [torch.randn_like(t) for t in out]
    (got,) = torch.autograd.grad(out, x, grads)
    (want,) = torch.autograd.grad(ref, x, grads)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_triton_kernels_use_the_k_angles_for_k(interpreted_kernels):
    x, split = _qkv()
    q_freqs, k_freqs = _freqs(6, 8), 0.5 * _freqs(6, 8)
    out = qkv_rope.apply_qkv_rope(x, q_freqs, k_freqs, split)
    ref = qkv_rope.qkv_rope_reference(x, q_freqs, k_freqs, split)
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out[1], qkv_rope.qkv_rope_reference(x, q_freqs, q_freqs, split)[1])


@pytest.mark.parametrize(
    "shape, split, freqs, message",
    [
        ((6, 2, 40), [24, 8, 8], (9, 1, 1, 8), "must be \\[s, b, groups, width\\]"),
        ((6, 2, 2, 40), [24, 8, 4], (9, 1, 1, 8), "does not describe grouped q, k, v heads"),
        ((6, 2, 2, 40), [24, 8, 8], (4, 1, 1, 8), "rotary angles must be \\[s >= 6, 1, 1, d\\]"),
        ((6, 2, 2, 40), [24, 8, 8], (9, 1, 1, 4), "partial rotary is not supported"),
    ],
)
def test_layouts_it_does_not_handle_are_refused(shape, split, freqs, message):
    with pytest.raises(ValueError, match=message):
        qkv_rope.apply_qkv_rope(torch.zeros(shape), torch.zeros(freqs), torch.zeros(freqs), split)


def test_patch_binds_and_restores_megatrons_name():
    import sys

    from megatron_patches import qkv_rope as patch

    module = (
        sys.modules["megatron.core.transformer.attention"]
        if "megatron.core.transformer.attention" in sys.modules
        else importlib.import_module("megatron.core.transformer.attention")
    )
    before = getattr(module, patch.NAME, None)
    try:
        assert patch.apply() and patch.is_applied()
        assert getattr(module, patch.NAME) is qkv_rope.apply_qkv_rope
        patch.apply()  # idempotent: the original is remembered once
        patch.remove()
        assert getattr(module, patch.NAME, None) is before and not patch.is_applied()
    finally:
        patch.remove()


def test_patch_target_still_calls_the_name_with_four_arguments():
    # What the patch relies on: Attention.forward calls the module-level name with (qkv, q angles,
    # k angles, split list).  When upstream changes that call, this fails and the patch needs a look.
    from megatron.core.transformer.attention import Attention

    from megatron_patches import qkv_rope as patch

    source = inspect.getsource(Attention.forward)
    assert (
        f"{patch.NAME}(\n                    mixed_qkv, q_pos_emb, k_pos_emb, qkv_split_arg_list\n                )"
        in source
    )


def test_only_models_that_call_the_rope_move_its_binding(monkeypatch, caplog):
    # The GPU test builds a Triton-RoPE TE model, then a torch-backend reference: the reference must
    # not take the Triton kernels away from the TE model (it did before, and the test then compared
    # TE's kernel).  A second TE model choosing the other kernel does switch, and says so.
    import logging

    from litespark.config import apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.model import build as model_module
    from megatron_patches import qkv_rope as patch

    def select(*overrides):
        """What build_model does for the plan of the tiny preset with ``overrides``."""
        plan = resolve(apply_overrides(get_preset("tiny"), list(overrides)))
        model_module._select_qkv_rope_kernel(plan.config, plan.backend)

    monkeypatch.setattr(model_module, "_qkv_rope_choice", None)
    try:
        select("kernels.backend=te", "kernels.qkv_rope_kernel=triton")
        assert patch.is_applied()
        for other in (
            ("kernels.backend=torch", "kernels.qkv_rope_kernel=te"),
            ("kernels.backend=te", "kernels.fused_qkv_rope=false", "kernels.qkv_rope_kernel=te"),
            ("kernels.backend=te", "kernels.rope_fusion=false", "kernels.qkv_rope_kernel=te"),
        ):
            select(*other)
            assert patch.is_applied(), other
        assert not caplog.records
        with caplog.at_level(logging.WARNING):
            select("kernels.backend=te", "kernels.qkv_rope_kernel=te")
        assert not patch.is_applied()
        assert "kernels.qkv_rope_kernel=te replaces triton for every model in this process" in caplog.text
    finally:
        patch.remove()


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_microbench_refuses_without_a_gpu_with_exit_2(tmp_path):
    out = tmp_path / "rope.json"
    proc = subprocess.run(
        [sys.executable, "-m", "litespark.bench.qkv_rope_kernels", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA GPU" in proc.stderr
    assert not out.exists()


def test_a_host_without_triton_is_told_at_build_time(monkeypatch):
    import importlib.util

    from litespark.config import ConfigError, apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.model import build as model_module
    from megatron_patches import qkv_rope as patch

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    monkeypatch.setattr(model_module, "_qkv_rope_choice", None)
    plan = resolve(apply_overrides(get_preset("tiny"), ["kernels.backend=te", "kernels.qkv_rope_kernel=triton"]))
    with pytest.raises(ConfigError, match="needs the triton package .* or set kernels.qkv_rope_kernel=te"):
        model_module._select_qkv_rope_kernel(plan.config, plan.backend)
    assert not patch.is_applied()
