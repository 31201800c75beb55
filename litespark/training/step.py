"""One optimizer step and one evaluation pass on a DeepSpeed engine.

The loop (:mod:`litespark.training.loop`) decides when; this module decides what a step is: refresh
the FP8 weight cache, forward / backward each of this rank's micro-batches (DeepSpeed accumulates
and steps at the boundary), and tell the fp32-gradient link after each backward.  The benchmark's
Litespark stack calls :func:`train_step` too, so what is measured is what trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist


def token_losses(engine, batch: dict) -> torch.Tensor:
    """Per-position cross-entropy of one micro-batch (``[b, s]``).  A packed row
    (:func:`litespark.training.packing.to_packed_batch`) runs with its document masks."""
    from litespark.model.build import position_ids_for

    packed = batch.get("packed_seq_params")
    return engine(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"] if packed is not None else position_ids_for(batch["tokens"]),
        attention_mask=None,
        labels=batch["labels"],
        **({"packed_seq_params": packed} if packed is not None else {}),
    )


def forward_loss(engine, batch: dict) -> torch.Tensor:
    """Loss of one micro-batch: summed over the positions its ``loss_mask`` counts, divided by their
    number, or by the batch's ``loss_normalizer`` when it has one (SFT: the global batch's trained
    tokens per micro-batch, so that the step's loss is the mean over all of them).  A batch with a
    ``preference`` (DPO: :class:`litespark.dpo.batches.PreferenceBatch`) makes its own loss of the
    per-token ones."""
    losses = token_losses(engine, batch)
    preference = batch.get("preference")
    if preference is not None:
        return preference.loss(losses)
    mask = batch["loss_mask"].float()
    normalizer = batch.get("loss_normalizer")
    return (losses.float() * mask).sum() / (mask.sum().clamp(min=1.0) if normalizer is None else normalizer)


def refresh_fp8_weight_cache(engine) -> None:
    """Make the next forward re-quantise the weights.

    Megatron's TE linears cache their FP8 weights (and transposes) after the first micro-batch
    (``is_first_microbatch``), so the later micro-batches of the same step skip the casts; the cache
    must be invalidated whenever the weights change, i.e. before the first micro-batch after an
    optimizer step, as Megatron's own schedule does.  Without it every forward after step 1 would run
    on step 1's weights.  A no-op without FP8.
    """
    module = getattr(engine, "module", engine)
    if hasattr(module, "set_is_first_microbatch"):
        module.set_is_first_microbatch()


def train_step(engine, micro_batches: list[dict], before_update: Callable[[], None] | None = None) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches (DeepSpeed accumulates and steps at the
    boundary); returns the mean micro-batch loss, still on the device.  ``before_update`` is called
    before each ``engine.step()``, the first call that may change the weights or the optimizer state
    (the trainer waits there for a checkpoint's copy that overlapped the forward and backward)."""
    refresh_fp8_weight_cache(engine)
    fp32_grads = getattr(engine, "litespark_fp32_grads", None)
    total: torch.Tensor | None = None
    for batch in micro_batches:
        loss = forward_loss(engine, batch)
        engine.backward(loss)
        if fp32_grads is not None:
            fp32_grads.mark()  # before the step reads the gradient norm
        if before_update is not None:
            before_update()
        engine.step()
        total = loss.detach() if total is None else total + loss.detach()
    if total is None:
        raise ValueError("train_step needs at least one micro-batch")
    return total / len(micro_batches)


def dp_mean(value: torch.Tensor) -> float:
    """``value`` averaged over the data-parallel ranks (collective)."""
    from megatron.core import parallel_state as ps

    value = value.detach().clone().float()
    dist.all_reduce(value, group=ps.get_data_parallel_group())
    return float(value) / ps.get_data_parallel_world_size()


def evaluate(engine, batches: Iterable[dict], device: torch.device) -> float:
    """Mean validation loss over ``batches``, this rank's micro-batches of one pass (averaged over
    them, then over DP ranks)."""
    engine.eval()
    refresh_fp8_weight_cache(engine)
    total, count = torch.zeros((), device=device), 0
    with torch.no_grad():
        for batch in batches:
            total += forward_loss(engine, batch)
            count += 1
    engine.train()
    return dp_mean(total / max(count, 1))
