"""Route Megatron's single-QKV RoPE call to Litespark's Triton kernels (``kernels.qkv_rope_kernel``).

``Attention.forward`` (mcore 0.16) rotates the unsplit QKV projection output through the module-level
name ``apply_fused_qkv_rotary_pos_emb`` that ``megatron.core.transformer.attention`` imports from
Transformer Engine, when ``fused_single_qkv_rope`` is on.  The layer spec has no slot for it, so
choosing another implementation means rebinding that name.  :func:`apply` binds it to
:func:`litespark.modules.qkv_rope.apply_qkv_rope` (same function; kernels written to move its bytes near the HBM bandwidth); :func:`remove`
restores TE's.  The binding is process-wide: every model in the process uses the last choice, which
is harmless because both compute the same rotation in fp32.
"""

from __future__ import annotations

import sys

from megatron_patches._guard import require_tested_version

TESTED = ("0.16.1",)
TARGET = "megatron.core.transformer.attention.Attention.forward"
NAME = "apply_fused_qkv_rotary_pos_emb"
"""The module-level name in ``megatron.core.transformer.attention`` that the target calls."""

_ORIGINAL = "_litespark_original_" + NAME


def _attention_module():
    import megatron.core.transformer.attention  # noqa: F401  (import for its side effect on sys.modules)

    return sys.modules["megatron.core.transformer.attention"]


def apply() -> bool:
    """Bind Megatron's QKV RoPE name to Litespark's Triton kernel; idempotent, returns True."""
    from litespark.modules.qkv_rope import apply_qkv_rope

    module = _attention_module()
    if getattr(module, NAME, None) is apply_qkv_rope:
        return True
    require_tested_version("qkv_rope", TESTED)
    setattr(module, _ORIGINAL, getattr(module, NAME, None))
    setattr(module, NAME, apply_qkv_rope)
    return True


def remove() -> None:
    """Restore whatever the name was bound to before :func:`apply` (TE's kernel, or nothing)."""
    module = _attention_module()
    if not hasattr(module, _ORIGINAL):
        return
    original = getattr(module, _ORIGINAL)
    delattr(module, _ORIGINAL)
    if original is None:
        if hasattr(module, NAME):
            delattr(module, NAME)
    else:
        setattr(module, NAME, original)


def is_applied() -> bool:
    from litespark.modules.qkv_rope import apply_qkv_rope

    return getattr(_attention_module(), NAME, None) is apply_qkv_rope
