"""Version-guarded patches that Megatron-Core needs to run the Litespark stack.

One patch per module, each with ``apply()``, a ``TARGET`` naming what it replaces and the
megatron-core versions it was checked against.  ``apply_all()`` applies the host patches (each decides
whether this host needs it) and is idempotent; the others are choices a config makes and are applied
by whoever builds the model (``qkv_rope``: ``kernels.qkv_rope_kernel``, in :mod:`litespark.model.build`).  A patch
refuses to touch an untested megatron-core release (:func:`litespark.patching.require_tested_version`).
"""

from __future__ import annotations

import importlib

from litespark.patching import PatchError

HOST_PATCHES = ("rope_cpu",)
PATCHES = (*HOST_PATCHES, "qkv_rope")

__all__ = ["HOST_PATCHES", "PATCHES", "PatchError", "apply_all"]


def apply_all() -> list[str]:
    """Apply every host patch (each decides whether this host needs it); returns the names applied."""
    applied = []
    for name in HOST_PATCHES:
        module = importlib.import_module(f"megatron_patches.{name}")
        if module.apply():
            applied.append(name)
    return applied
