"""Packing variable-length documents (conversations) into fixed-size rows with document masks.

Fine-tuning data is short and uneven: padding every conversation to ``seq_length`` would spend most
of the compute on padding.  Packing places several whole conversations in one row instead, and the
row is run in Megatron's ``thd`` layout (``PackedSeqParams`` with cumulative sequence lengths): each
conversation attends only to itself and its rotary positions restart at 0, so a packed row computes
exactly what the conversations would compute one at a time.  Transformer Engine's attention reads the
``cu_seqlens`` on the GPU; the torch backend's core attention
(:class:`~litespark.model.modules.attention.SDPAttention`) runs one causal attention per document.

:func:`best_fit_decreasing` chooses the rows; :func:`to_packed_batch` builds one row's tensors.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity`` tokens: longest first, each
    into the row it fills best (the one with the least room that still fits it), else a new row.
    Every index appears exactly once; rows come in the order they were opened.  A length above
    ``capacity`` (or below 1) is a ``ValueError``: truncating or dropping is the caller's decision."""
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    for i, n in enumerate(lengths):
        if not 1 <= n <= capacity:
            raise ValueError(f"document {i} has {n} tokens; a row holds 1 to {capacity}")
    rows: list[list[int]] = []
    # Room left in each open row, sorted, with the row's index: bisect finds the tightest fit.
    room: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            rows.append([i])
            left, row = capacity - n, len(rows) - 1
        else:
            left, row = room.pop(at)
            rows[row].append(i)
            left -= n
        if left > 0:
            bisect.insort(room, (left, row))
    return rows


def to_packed_batch(
    documents: Sequence[torch.Tensor],
    loss_masks: Sequence[torch.Tensor] | None = None,
    pad_to: int = 1,
    device: torch.device | str = "cpu",
    max_seqlen: int | None = None,
) -> dict:
    """One packed row of ``documents`` (1-D token ids, each predicted within itself) as the trainer's
    micro-batch: ``tokens``/``labels``/``loss_mask``/``position_ids`` of shape ``[1, t]`` and
    ``packed_seq_params`` (``thd``).  ``loss_masks[i][j]`` says whether document ``i``'s token ``j`` is
    trained on as a target (default: all); each document's last token has no next token, so it is
    never a target.  ``pad_to``: the row's length is rounded up to a multiple of it (FP8 GEMMs want 16)
    with one padding document of token 0 that no loss counts (so a row may exceed the sequence length
    by up to ``pad_to - 1``); ``real_tokens`` counts the rest.  Every tensor, ``cu_seqlens`` included
    (int32, as Transformer Engine's fused attention and RoPE read them), is on ``device``.
    ``max_seqlen``: the bound on a document's length that the attention kernels are given (default:
    the longest here); a fixed bound (the row length) keeps the shapes cuDNN plans for the same from
    one micro-batch to the next."""
    from megatron.core.packed_seq_params import PackedSeqParams

    if not documents:
        raise ValueError("a packed row needs at least one document")
    tokens, labels, mask, positions, lengths = [], [], [], [], []
    for i, doc in enumerate(documents):
        doc = doc.reshape(-1).long()
        n = doc.numel()
        if n < 2:
            raise ValueError(f"document {i} has {n} token(s); at least 2 are needed to train on one")
        target = torch.ones(n, dtype=torch.bool) if loss_masks is None else loss_masks[i].reshape(-1).bool()
        if target.numel() != n:
            raise ValueError(f"loss mask {i} has {target.numel()} entries for {n} tokens")
        # Input j predicts token j + 1 of the same document; the last input predicts nothing.
        tokens.append(doc)
        labels.append(torch.cat([doc[1:], doc.new_zeros(1)]))
        mask.append(torch.cat([target[1:], target.new_zeros(1)]))
        positions.append(torch.arange(n))
        lengths.append(n)
    real = sum(lengths)
    padding = -real % pad_to
    if padding:
        tokens.append(torch.zeros(padding, dtype=torch.long))
        labels.append(torch.zeros(padding, dtype=torch.long))
        mask.append(torch.zeros(padding, dtype=torch.bool))
        positions.append(torch.arange(padding))
        lengths.append(padding)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    cu_seqlens = cu_seqlens.to(device)
    longest = max(lengths)
    if max_seqlen is not None:
        if max_seqlen < longest:
            raise ValueError(f"max_seqlen {max_seqlen} is below the longest document ({longest} tokens)")
        longest = max_seqlen
    return {
        "tokens": torch.cat(tokens)[None].to(device),
        "labels": torch.cat(labels)[None].to(device),
        "loss_mask": torch.cat(mask)[None].float().to(device),
        "position_ids": torch.cat(positions)[None].to(device),
        "packed_seq_params": PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=cu_seqlens,
            cu_seqlens_kv=cu_seqlens,
            max_seqlen_q=longest,
            max_seqlen_kv=longest,
        ),
        "real_tokens": real,
        "padding_tokens": padding,
    }
