"""deepspeed_patches: same values as DeepSpeed's helpers, targets still there, guarded."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import deepspeed_patches
from deepspeed_patches import clip_foreach, nan_mask
from litespark.patching import PatchError, original

PATCH_MODULES = {"nan_mask": nan_mask, "clip_foreach": clip_foreach}


@pytest.fixture
def unpatched():
    deepspeed_patches.select(False)
    yield
    deepspeed_patches.select(False)


def _upstream(patch):
    module_name, _, name = patch.TARGET.rpartition(".")
    current = getattr(importlib.import_module(module_name), name)
    return original(current) or current if current is getattr(patch, name) else current


@pytest.mark.parametrize("name", deepspeed_patches.PATCHES)
def test_targets_still_hold_what_the_patches_replace(unpatched, name):
    # When upstream changes these lines, the patch needs a look (and may no longer be needed).
    patch = PATCH_MODULES[name]
    source = inspect.getsource(_upstream(patch))
    expected = {"nan_mask": "torch.tensor(-1.0, device=device", "clip_foreach": "tensor.detach().mul_(clip_coef)"}[name]
    assert expected in source
    for module_name in patch.MODULES:
        assert getattr(importlib.import_module(module_name), patch.NAME) is _upstream(patch), module_name


def test_nan_mask_fills_what_deepspeeds_fills(unpatched):
    values = torch.tensor([1.5, float("inf"), float("nan"), -float("inf"), 0.0, -2.0])
    ours, theirs = values.clone(), values.clone()
    nan_mask.mask_nan_or_inf_with_val_inplace(ours, device=ours.device)
    _upstream(nan_mask)(theirs, device=theirs.device)
    assert torch.equal(ours, theirs) and ours.tolist() == [1.5, -1.0, -1.0, -1.0, 0.0, -2.0]
    scalar = torch.tensor(float("nan"))
    nan_mask.mask_nan_or_inf_with_val_inplace(scalar)
    assert scalar.item() == -1.0


@pytest.mark.parametrize(
    "global_norm", [torch.tensor(40.0), 40.0, torch.tensor(0.5), None], ids=["tensor", "float", "no-clip", "computed"]
)
def test_clip_scales_like_deepspeeds(unpatched, global_norm):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, generator=g) * 10 for n in (7, 300, 64)]
    ours, theirs = [t.clone() for t in grads], [t.clone() for t in grads]
    norm_ours = clip_foreach.clip_tensors_by_global_norm(ours, max_norm=1.0, global_norm=global_norm)
    norm_theirs = _upstream(clip_foreach)(theirs, max_norm=1.0, global_norm=global_norm)
    assert float(norm_ours) == float(norm_theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(ours, grads)) is (global_norm is None or float(global_norm) > 1)


def test_select_rebinds_everywhere_and_restores(unpatched):
    assert deepspeed_patches.select(True) == list(deepspeed_patches.PATCHES)
    for patch in PATCH_MODULES.values():
        for module_name in patch.MODULES:
            assert getattr(importlib.import_module(module_name), patch.NAME) is getattr(patch, patch.NAME)
    deepspeed_patches.select(True)  # idempotent: the original is still the upstream function
    deepspeed_patches.select(False)
    for patch in PATCH_MODULES.values():
        for module_name in patch.MODULES:
            assert getattr(importlib.import_module(module_name), patch.NAME) is not getattr(patch, patch.NAME)


def test_an_untested_deepspeed_is_refused(unpatched, monkeypatch):
    import deepspeed

    monkeypatch.setattr(deepspeed, "__version__", "0.99.0")
    with pytest.raises(PatchError, match="checked against deepspeed 0.19.8, found 0.99.0"):
        deepspeed_patches.select(True)


def test_training_with_the_patches_equals_training_without(dist_world_1, monkeypatch):
    """Five steps with clipping active, fp32 gradients linked: identical norms and weights, and the
    step really went through the replacement when it was on."""
    import deepspeed.runtime.bf16_optimizer as bf16_optimizer

    from tests.helpers.te_like import train_toy

    runs, seen = {}, {}

    def spy(on):
        def before_steps(engine, optimizer):
            bound = bf16_optimizer.clip_tensors_by_global_norm
            seen[on] = {"ours": bound is clip_foreach.clip_tensors_by_global_norm, "calls": 0}

            def counted(*args, **kwargs):
                seen[on]["calls"] += 1
                return bound(*args, **kwargs)

            monkeypatch.setattr(bf16_optimizer, "clip_tensors_by_global_norm", counted)

        return before_steps

    for on in (True, False):
        _, _, weights, norms = train_toy(True, True, deepspeed_step_patches=on, before_steps=spy(on))
        runs[on] = (weights, norms)
        monkeypatch.undo()
    assert seen == {True: {"ours": True, "calls": 5}, False: {"ours": False, "calls": 5}}
    assert runs[True][1] == runs[False][1]
    for k, w in runs[True][0].items():
        assert torch.equal(w, runs[False][0][k]), k
