"""Version-guarded replacements for two helpers of DeepSpeed's optimizer step (``optim.deepspeed_step_patches``).

Each module replaces one function with one that computes the same values, with ``apply()``, a
``TARGET``, the DeepSpeed versions it was checked against and a ``remove()``:

* ``nan_mask``: ``mask_nan_or_inf_with_val_inplace`` builds its fill value with
  ``torch.tensor(-1.0, device=...)`` (a pageable host-to-device copy) and fills with that 0-dim GPU
  tensor (``masked_fill_`` reads it back with ``item()``): two host syncs per call, two calls per
  step.  The replacement fills with the Python float.
* ``clip_foreach``: ``clip_tensors_by_global_norm`` multiplies every gradient view by the clip
  coefficient one ``mul_`` at a time with a 0-dim GPU tensor, which torch runs through its generic,
  non-vectorized elementwise kernel.  The replacement does one ``torch._foreach_mul_``.

Like :mod:`megatron_patches`, a patch refuses a DeepSpeed release it was not checked on
(:func:`litespark.patching.require_tested_version`).
"""

from __future__ import annotations

import importlib

PATCHES = ("nan_mask", "clip_foreach")


def select(on: bool) -> list[str]:
    """Apply every patch (``on``) or remove them all; returns the names applied."""
    applied = []
    for name in PATCHES:
        module = importlib.import_module(f"deepspeed_patches.{name}")
        if on:
            module.apply()
            applied.append(name)
        else:
            module.remove()
    return applied
