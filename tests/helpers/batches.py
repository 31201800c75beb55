"""Micro-batches in the form the trainer's step takes them."""

from __future__ import annotations


def micro_batches(sequences, size: int = 2) -> list[dict]:
    """The trainer's micro-batch dicts from ``[n, seq + 1]`` token ids, ``size`` sequences each, every
    position counted in the loss."""
    import torch

    return [
        {"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones_like(t[:, 1:], dtype=torch.float)}
        for t in sequences.split(size)
    ]
