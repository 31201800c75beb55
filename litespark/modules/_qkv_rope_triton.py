"""The Triton kernels of :mod:`litespark.modules.qkv_rope` (imported only when they are first needed).

One program per ``BLOCK_ROWS`` rows of the unsplit QKV tensor (a row is one token's heads of one
query group, ``(heads + 2) * head_dim`` wide).  Each program loads the rows' cos and sin once and
walks the group's q heads and its k head, rotating each half-pair ``(x1, x2)`` in fp32, then copies
v; backward applies the transposed rotation and writes the three gradients back into one row.
"""

import triton
import triton.language as tl


@triton.jit
def _load_cos_sin(cos_ptr, sin_ptr, s_idx, half, HALF: tl.constexpr, mask):
    base = s_idx[:, None] * (2 * HALF) + half[None, :]
    c1 = tl.load(cos_ptr + base, mask=mask, other=0.0)
    c2 = tl.load(cos_ptr + base + HALF, mask=mask, other=0.0)
    s1 = tl.load(sin_ptr + base, mask=mask, other=0.0)
    s2 = tl.load(sin_ptr + base + HALF, mask=mask, other=0.0)
    return c1, c2, s1, s2


@triton.jit
def qkv_rope_forward(qkv_ptr, q_ptr, k_ptr, v_ptr, cos_q_ptr, sin_q_ptr, cos_k_ptr, sin_k_ptr, rows, rows_per_s,
                     HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    half = tl.arange(0, HALF)
    mask = (row < rows)[:, None]
    s_idx = row // rows_per_s
    width = (HEADS + 2) * 2 * HALF
    src = qkv_ptr + row[:, None].to(tl.int64) * width + half[None, :]
    c1, c2, s1, s2 = _load_cos_sin(cos_q_ptr, sin_q_ptr, s_idx, half, HALF, mask)
    for h in tl.static_range(HEADS + 1):
        if h == HEADS:
            c1, c2, s1, s2 = _load_cos_sin(cos_k_ptr, sin_k_ptr, s_idx, half, HALF, mask)
        x1 = tl.load(src + h * 2 * HALF, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + h * 2 * HALF + HALF, mask=mask, other=0.0).to(tl.float32)
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
        if h < HEADS:
            dst = q_ptr + row[:, None].to(tl.int64) * (HEADS * 2 * HALF) + h * 2 * HALF + half[None, :]
        else:
            dst = k_ptr + row[:, None].to(tl.int64) * (2 * HALF) + half[None, :]
        tl.store(dst, y1.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, y2.to(q_ptr.dtype.element_ty), mask=mask)
    v_src = src + (HEADS + 1) * 2 * HALF
    v_dst = v_ptr + row[:, None].to(tl.int64) * (2 * HALF) + half[None, :]
    tl.store(v_dst, tl.load(v_src, mask=mask, other=0.0), mask=mask)
    tl.store(v_dst + HALF, tl.load(v_src + HALF, mask=mask, other=0.0), mask=mask)

@triton.jit
def qkv_rope_backward(dqkv_ptr, dq_ptr, dk_ptr, dv_ptr, cos_q_ptr, sin_q_ptr, cos_k_ptr, sin_k_ptr, rows,
                      rows_per_s, HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    half = tl.arange(0, HALF)
    mask = (row < rows)[:, None]
    s_idx = row // rows_per_s
    width = (HEADS + 2) * 2 * HALF
    dst = dqkv_ptr + row[:, None].to(tl.int64) * width + half[None, :]
    c1, c2, s1, s2 = _load_cos_sin(cos_q_ptr, sin_q_ptr, s_idx, half, HALF, mask)
    for h in tl.static_range(HEADS + 1):
        if h == HEADS:
            c1, c2, s1, s2 = _load_cos_sin(cos_k_ptr, sin_k_ptr, s_idx, half, HALF, mask)
            src = dk_ptr + row[:, None].to(tl.int64) * (2 * HALF) + half[None, :]
        else:
            src = dq_ptr + row[:, None].to(tl.int64) * (HEADS * 2 * HALF) + h * 2 * HALF + half[None, :]
        g1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        g2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        # The transpose of y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2.
        d1 = g1 * c1 + g2 * s2
        d2 = g2 * c2 - g1 * s1
        tl.store(dst + h * 2 * HALF, d1.to(dqkv_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + h * 2 * HALF + HALF, d2.to(dqkv_ptr.dtype.element_ty), mask=mask)
    v_src = dv_ptr + row[:, None].to(tl.int64) * (2 * HALF) + half[None, :]
    v_dst = dst + (HEADS + 1) * 2 * HALF
    tl.store(v_dst, tl.load(v_src, mask=mask, other=0.0), mask=mask)
    tl.store(v_dst + HALF, tl.load(v_src + HALF, mask=mask, other=0.0), mask=mask)
