"""Route Megatron's single-QKV RoPE call to Litespark's Triton kernels (``kernels.qkv_rope_kernel``).

``Attention.forward`` (mcore 0.16) rotates the unsplit QKV projection output through the module-level
name ``apply_fused_qkv_rotary_pos_emb`` that ``megatron.core.transformer.attention`` imports from
Transformer Engine, when ``fused_single_qkv_rope`` is on.  The layer spec has no slot for it, so
choosing another implementation means rebinding that name.  :func:`apply` binds it to
:func:`litespark.model.modules.qkv_rope.apply_qkv_rope` (same function; kernels written to move its bytes near the HBM bandwidth); :func:`remove`
restores TE's.  The binding is process-wide: every model in the process uses the last choice, which
is harmless because both compute the same rotation in fp32.
"""

from __future__ import annotations

from litespark.patching import require_tested_version

TESTED = ("0.16.1",)
TARGET = "megatron.core.transformer.attention.Attention.forward"
NAME = "apply_fused_qkv_rotary_pos_emb"
"""The module-level name in ``megatron.core.transformer.attention`` that the target calls."""
MODULES = ("megatron.core.transformer.attention",)


def apply() -> bool:
    """Bind Megatron's QKV RoPE name to Litespark's Triton kernel; idempotent, returns True."""
    from litespark.model.modules.qkv_rope import apply_qkv_rope
    from litespark.patching import is_bound, rebind

    if is_bound(NAME, apply_qkv_rope, MODULES[0]):
        return True
    require_tested_version("megatron.core", __name__, TESTED)
    rebind(NAME, apply_qkv_rope, MODULES)
    return True


def remove() -> None:
    """Restore whatever the name was bound to before :func:`apply` (TE's kernel, or nothing)."""
    from litespark.model.modules.qkv_rope import apply_qkv_rope
    from litespark.patching import restore

    restore(NAME, apply_qkv_rope, MODULES)


def is_applied() -> bool:
    from litespark.model.modules.qkv_rope import apply_qkv_rope
    from litespark.patching import is_bound

    return is_bound(NAME, apply_qkv_rope, MODULES[0])
