"""The Triton kernels of :mod:`litespark.model.modules.qkv_rope` (imported only when they are first needed).

One program per ``BLOCK_ROWS`` rows of the unsplit QKV tensor (a row is one token's heads of one
query group, ``(heads + 2) * head_dim`` wide).  Each program loads the rows' cos and sin once and
walks the group's q heads and its k head, rotating each half-pair ``(x1, x2)`` in fp32, then copies
v; backward applies the transposed rotation and writes the three gradients back into one row.
"""

import triton
import triton.language as tl


@triton.jit
def _rows(rows, rows_per_s, BLOCK_ROWS: tl.constexpr):
    """This program's row indices (int64), their sequence positions and the in-bounds mask."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    return row, row // rows_per_s, (row < rows)[:, None]


@triton.jit
def _head(base, row, row_width, h, HALF: tl.constexpr):
    """Pointers to the first half of head ``h`` in each row of a ``[rows, row_width]`` tensor."""
    return base + row[:, None] * row_width + h * 2 * HALF + tl.arange(0, HALF)[None, :]


@triton.jit
def _load_cos_sin(cos_ptr, sin_ptr, s_idx, mask, HALF: tl.constexpr):
    """cos and sin ``[s, 2 * HALF]`` of each row's position, as first and second halves."""
    c = _head(cos_ptr, s_idx, 2 * HALF, 0, HALF)
    s = _head(sin_ptr, s_idx, 2 * HALF, 0, HALF)
    c1 = tl.load(c, mask=mask, other=0.0)
    c2 = tl.load(c + HALF, mask=mask, other=0.0)
    s1 = tl.load(s, mask=mask, other=0.0)
    s2 = tl.load(s + HALF, mask=mask, other=0.0)
    return c1, c2, s1, s2


@triton.jit
def _qkv_rope(
    packed_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    cos_q_ptr,
    sin_q_ptr,
    cos_k_ptr,
    sin_k_ptr,
    rows,
    rows_per_s,
    HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """Forward: rotate the packed rows' q and k heads into q and k, copy v.  Backward: the transposed
    rotation of the q and k gradients (and the v gradient) into the packed gradient rows."""
    row, s_idx, mask = _rows(rows, rows_per_s, BLOCK_ROWS)
    width = (HEADS + 2) * 2 * HALF
    c1, c2, s1, s2 = _load_cos_sin(cos_q_ptr, sin_q_ptr, s_idx, mask, HALF)
    for h in tl.static_range(HEADS + 1):
        if h == HEADS:
            c1, c2, s1, s2 = _load_cos_sin(cos_k_ptr, sin_k_ptr, s_idx, mask, HALF)
            split = _head(k_ptr, row, 2 * HALF, 0, HALF)
        else:
            split = _head(q_ptr, row, HEADS * 2 * HALF, h, HALF)
        packed = _head(packed_ptr, row, width, h, HALF)
        # y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2; its transpose swaps the sines' roles and signs.
        if BACKWARD:
            src, dst, a, b = split, packed, s2, -s1
        else:
            src, dst, a, b = packed, split, -s1, s2
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(dst, (x1 * c1 + x2 * a).to(dst.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, (x2 * c2 + x1 * b).to(dst.dtype.element_ty), mask=mask)
    packed_v, split_v = _head(packed_ptr, row, width, HEADS + 1, HALF), _head(v_ptr, row, 2 * HALF, 0, HALF)
    src, dst = (split_v, packed_v) if BACKWARD else (packed_v, split_v)
    tl.store(dst, tl.load(src, mask=mask, other=0.0), mask=mask)
    tl.store(dst + HALF, tl.load(src + HALF, mask=mask, other=0.0), mask=mask)
