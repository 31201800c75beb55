"""megatron_patches: each target still exists, each guard refuses untested versions, apply is idempotent."""

from __future__ import annotations

import importlib

import pytest
import torch

import megatron_patches
from litespark.patching import PatchError, require_tested_version


def _resolve(dotted: str):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("name", megatron_patches.PATCHES)
def test_patch_target_still_exists(name):
    patch = importlib.import_module(f"megatron_patches.{name}")
    target = _resolve(patch.TARGET)
    assert callable(target)
    assert patch.TESTED, "a patch must name the megatron-core versions it was checked on"


def test_rope_target_still_moves_inv_freq_to_cuda():
    # The reason the patch exists; when upstream fixes it, this fails and the patch can go.
    import inspect

    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    original = getattr(RotaryEmbedding.get_emb, "__wrapped__", RotaryEmbedding.get_emb)
    assert "torch.cuda.current_device()" in inspect.getsource(original)


def test_version_guard_refuses_untested(monkeypatch):
    import megatron.core

    monkeypatch.setattr(megatron.core, "__version__", "0.99.0")
    with pytest.raises(PatchError, match="checked against megatron-core 0.16.1, found 0.99.0"):
        require_tested_version("megatron.core", "megatron_patches.rope_cpu", ("0.16.1",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch is only installed without CUDA")
def test_apply_is_idempotent_and_rope_runs_on_cpu():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    assert "rope_cpu" in megatron_patches.apply_all()
    first = RotaryEmbedding.get_emb
    megatron_patches.apply_all()
    assert RotaryEmbedding.get_emb is first
    rope = RotaryEmbedding(kv_channels=16, rotary_percent=1.0, rotary_base=10000, use_cpu_initialization=True)
    emb = rope(16)
    assert emb.shape == (16, 1, 1, 16) and emb.device.type == "cpu"
    # Position p, frequency i: angle p * base^(-2i/d); halves repeated (non-interleaved layout).
    p, i = 5, 3
    assert float(emb[p, 0, 0, i]) == pytest.approx(p * 10000 ** (-2 * i / 16))
    assert torch.equal(emb[..., :8], emb[..., 8:])
