"""Rotary position embedding of the unsplit QKV projection, as one Triton kernel (compiled for each direction).

Megatron's ``fused_single_qkv_rope`` path hands the QKV projection's output ``[s, b, groups, (q heads
per group + 2) * head_dim]`` to Transformer Engine's ``apply_fused_qkv_rotary_pos_emb``, which splits
it into q, k and v, rotates q and k, and in backward writes the three gradients back into one tensor.
TE 2.10's two kernels move those bytes at a fraction of the HBM bandwidth (docs/performance.md).

The kernels here give each program a block of rows (one row = one token's heads of one query group)
and walk the group's heads inside it, so each row's cos and sin are loaded once for all its heads;
the rotation is done in fp32 and rounded once, as TE does.  :func:`qkv_rope_reference` is the same
function in plain torch (the tests' ground truth, and what hosts without Triton could run).
Which implementation a model uses is ``kernels.qkv_rope_kernel`` (see
:mod:`megatron_patches.qkv_rope`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in (at least) fp32: Megatron's / HF's non-interleaved layout."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _layout(qkv: torch.Tensor, split: Sequence[int], q_freqs: torch.Tensor, k_freqs: torch.Tensor) -> tuple[int, int]:
    """(q heads per group, head_dim) of ``qkv``; raises on anything this module does not handle."""
    if qkv.dim() != 4:
        raise ValueError(f"qkv must be [s, b, groups, width] (sbhd), got {list(qkv.shape)}")
    if len(split) != 3:
        raise ValueError(f"qkv split must have three parts (q, k, v), got {list(split)}")
    q_width, k_width, v_width = (int(n) for n in split)
    if q_width + k_width + v_width != qkv.shape[-1] or k_width != v_width or q_width % k_width or k_width % 2:
        raise ValueError(f"qkv split {list(split)} does not describe grouped q, k, v heads of width {qkv.shape[-1]}")
    for name, freqs in (("q", q_freqs), ("k", k_freqs)):
        if freqs.dim() != 4 or freqs.shape[0] < qkv.shape[0] or freqs.shape[1:3] != (1, 1):
            raise ValueError(f"{name} rotary angles must be [s >= {qkv.shape[0]}, 1, 1, d], got {list(freqs.shape)}")
        if freqs.shape[-1] != k_width:
            raise ValueError(
                f"{name} rotary angles cover {freqs.shape[-1]} of head dimension {k_width}: "
                "partial rotary is not supported here"
            )
    return q_width // k_width, k_width


def _cos_sin(freqs: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos and sin of ``freqs[:seq_len]`` as contiguous ``[s, d]``."""
    angles = freqs[:seq_len, 0, 0, :].to(torch.promote_types(freqs.dtype, torch.float32))
    return torch.cos(angles).contiguous(), torch.sin(angles).contiguous()


def qkv_rope_reference(
    qkv: torch.Tensor, q_freqs: torch.Tensor, k_freqs: torch.Tensor, split: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The function :func:`apply_qkv_rope` computes, in plain torch (autograd gives its backward)."""
    heads, dim = _layout(qkv, split, q_freqs, k_freqs)
    s, b = qkv.shape[0], qkv.shape[1]
    q, k, v = qkv.split((heads * dim, dim, dim), dim=-1)
    cos_q, sin_q = (t[:, None, None, :] for t in _cos_sin(q_freqs, s))
    cos_k, sin_k = (t[:, None, None, :] for t in _cos_sin(k_freqs, s))
    q = _rotate(q.reshape(s, b, -1, dim), cos_q, sin_q).to(qkv.dtype)
    k = _rotate(k, cos_k, sin_k).to(qkv.dtype)
    return q, k, v.contiguous()


@functools.cache
def _kernels():
    """The Triton kernel, imported (and compiled by Triton on first launch) only when first needed."""
    from litespark.model.modules._qkv_rope_triton import _qkv_rope

    return _qkv_rope


BLOCK_ROWS = 8
"""Rows (token x query group) per Triton program."""


def _grid(rows: int) -> tuple[int]:
    return (-(-rows // BLOCK_ROWS),)


class _QKVRoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos_q, sin_q, cos_k, sin_k, heads: int, dim: int):
        s, b, groups, _ = qkv.shape
        rows = s * b * groups
        q = qkv.new_empty(s, b, groups * heads, dim)
        k = qkv.new_empty(s, b, groups, dim)
        v = qkv.new_empty(s, b, groups, dim)
        _kernels()[_grid(rows)](
            qkv,
            q,
            k,
            v,
            cos_q,
            sin_q,
            cos_k,
            sin_k,
            rows,
            b * groups,
            HEADS=heads,
            HALF=dim // 2,
            BLOCK_ROWS=BLOCK_ROWS,
            BACKWARD=False,
        )
        ctx.save_for_backward(cos_q, sin_q, cos_k, sin_k)
        ctx.shape, ctx.heads = qkv.shape, heads
        return q, k, v

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos_q, sin_q, cos_k, sin_k = ctx.saved_tensors
        s, b, groups, width = ctx.shape
        rows = s * b * groups
        dqkv = dq.new_empty(s, b, groups, width)
        _kernels()[_grid(rows)](
            dqkv,
            dq.contiguous(),
            dk.contiguous(),
            dv.contiguous(),
            cos_q,
            sin_q,
            cos_k,
            sin_k,
            rows,
            b * groups,
            HEADS=ctx.heads,
            HALF=width // (ctx.heads + 2) // 2,
            BLOCK_ROWS=BLOCK_ROWS,
            BACKWARD=True,
        )
        return dqkv, None, None, None, None, None, None


def apply_qkv_rope(
    qkv: torch.Tensor, q_freqs: torch.Tensor, k_freqs: torch.Tensor, split: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate q and k of ``qkv`` ``[s, b, groups, (heads + 2) * head_dim]`` with the Triton kernels;
    returns contiguous ``q [s, b, groups * heads, head_dim]``, ``k`` and ``v [s, b, groups, head_dim]``.
    Same signature and result as TE's ``apply_fused_qkv_rotary_pos_emb`` in its default (sbhd,
    non-interleaved, no offsets) use."""
    heads, dim = _layout(qkv, split, q_freqs, k_freqs)
    if dim & (dim - 1):
        raise ValueError(f"head dimension {dim} must be a power of two for the Triton kernels")
    cos_q, sin_q = _cos_sin(q_freqs, qkv.shape[0])
    cos_k, sin_k = (cos_q, sin_q) if k_freqs is q_freqs else _cos_sin(k_freqs, qkv.shape[0])
    return _QKVRoPE.apply(qkv.contiguous(), cos_q, sin_q, cos_k, sin_k, heads, dim)
