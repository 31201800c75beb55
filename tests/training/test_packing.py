"""Packing conversations into one row with document masks (torch backend, CPU, fp32): a packed row
computes exactly what its documents compute one at a time, and best-fit decreasing fills rows."""

from __future__ import annotations

import random

import pytest
import torch

from litespark.training.packing import best_fit_decreasing, to_packed_batch


def test_best_fit_decreasing_places_every_document_once_within_the_capacity():
    rng = random.Random(0)
    for _ in range(50):
        capacity = rng.randint(8, 64)
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 40))]
        rows = best_fit_decreasing(lengths, capacity)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= capacity for row in rows)
        # No two rows could be merged: best fit never leaves a document that fits in an earlier row's room.
        loads = sorted(sum(lengths[i] for i in row) for row in rows)
        assert len(loads) < 2 or loads[0] + loads[1] > capacity


def test_best_fit_decreasing_takes_the_tightest_row_and_refuses_what_cannot_fit():
    # Longest first: 6 opens a row, 5 opens a row; 4 fits only with 5 (room 5) -> [5, 4]; 3 fits with 6.
    assert best_fit_decreasing([3, 6, 4, 5], 9) == [[1, 0], [3, 2]]
    assert best_fit_decreasing([2, 2, 2, 2], 8) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="document 1 has 10 tokens; a row holds 1 to 9"):
        best_fit_decreasing([3, 10], 9)
    with pytest.raises(ValueError, match="document 0 has 0 tokens"):
        best_fit_decreasing([0], 9)


def test_a_packed_row_restarts_positions_and_never_targets_across_documents():
    docs = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    masks = [torch.tensor([0, 1, 1]), torch.tensor([1, 1])]
    row = to_packed_batch(docs, masks, pad_to=8)
    assert row["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert row["labels"][0, :5].tolist() == [6, 7, 0, 9, 0]
    assert row["loss_mask"].tolist() == [[1, 1, 0, 1, 0, 0, 0, 0]]  # 7 -> 8 and 9 -> pad are not targets
    assert row["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert row["packed_seq_params"].cu_seqlens_q.tolist() == [0, 3, 5, 8]
    assert (row["real_tokens"], row["padding_tokens"]) == (5, 3)
    assert to_packed_batch(docs, masks, pad_to=8, max_seqlen=16)["packed_seq_params"].max_seqlen_q == 16
    with pytest.raises(ValueError, match="max_seqlen 2 is below the longest document"):
        to_packed_batch(docs, masks, max_seqlen=2)
    with pytest.raises(ValueError, match="document 0 has 1 token"):
        to_packed_batch([torch.tensor([1])])
    with pytest.raises(ValueError, match="loss mask 0 has 2 entries for 3 tokens"):
        to_packed_batch([torch.tensor([1, 2, 3])], [torch.tensor([1, 1])])


def _tiny_model():
    from litespark.config import apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.model.build import build_model
    from litespark.runtime.distributed import init_distributed

    plan = resolve(apply_overrides(get_preset("tiny"), ["model.seq_length=64"]))
    assert plan.backend == "torch"
    init_distributed(plan.tensor_parallel, 1234)
    return plan.config, build_model(plan).float().eval()


def _documents(vocab: int, lengths, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    masks = [torch.rand(n, generator=g) < 0.6 for n in lengths]  # a prompt-like mix of trained and not
    return docs, masks


def _alone(model, doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses and logits of one document run by itself, unpacked."""
    from litespark.model.build import position_ids_for

    inputs, labels = doc[None, :-1], doc[None, 1:]
    kwargs = {"input_ids": inputs, "position_ids": position_ids_for(inputs), "attention_mask": None}
    return model(**kwargs, labels=labels)[0], model(**kwargs)[0]


def _packed(model, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = {
        "input_ids": row["tokens"],
        "position_ids": row["position_ids"],
        "attention_mask": None,
        "packed_seq_params": row["packed_seq_params"],
    }
    return model(**kwargs, labels=row["labels"])[0], model(**kwargs)[0]


def test_packed_loss_and_gradient_equal_the_documents_one_at_a_time(dist_world_1):
    cfg, model = _tiny_model()
    docs, masks = _documents(cfg.model.vocab_size, [17, 30, 9, 8])
    row = to_packed_batch(docs, masks, pad_to=16)
    assert row["tokens"].shape == (1, 64) and row["padding_tokens"] == 0
    packed_losses, _ = _packed(model, row)
    packed = (packed_losses * row["loss_mask"][0]).sum()
    packed.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    alone = torch.zeros(())
    for doc, mask in zip(docs, masks):
        losses, _ = _alone(model, doc)
        alone = alone + (losses * mask[1:].float()).sum()
    alone.backward()
    packed, alone = packed.detach(), alone.detach()
    assert abs(float(packed) - float(alone)) <= 1e-5 * abs(float(alone))
    for name, p in model.named_parameters():
        assert torch.allclose(packed_grads[name], p.grad, rtol=1e-4, atol=1e-6), name
    # Without document masks the same tokens give another loss, far outside the tolerance above (an
    # untrained model attends almost uniformly, so leaking changes the loss by about 1e-3).
    from litespark.model.build import position_ids_for

    with torch.no_grad():
        flat = model(
            input_ids=row["tokens"],
            position_ids=position_ids_for(row["tokens"]),
            attention_mask=None,
            labels=row["labels"],
        )[0]
    assert abs(float((flat * row["loss_mask"][0]).sum()) - float(alone)) > 1e-4 * abs(float(alone))


def test_no_token_attends_across_a_document_boundary(dist_world_1):
    cfg, model = _tiny_model()
    docs, masks = _documents(cfg.model.vocab_size, [12, 20, 15])
    with torch.no_grad():
        _, before = _packed(model, to_packed_batch(docs, masks, pad_to=16))
        changed = [docs[0], (docs[1] + 7) % cfg.model.vocab_size, docs[2]]
        _, after = _packed(model, to_packed_batch(changed, masks, pad_to=16))
        first, second, third = slice(0, 12), slice(12, 32), slice(32, 47)
        assert torch.equal(before[first], after[first]) and torch.equal(before[third], after[third])
        assert not torch.allclose(before[second], after[second])
        _, alone = _alone(model, torch.cat([docs[2], docs[2][:1]]))  # one more token: its logits cover all 15
        assert torch.allclose(before[third], alone, rtol=1e-5, atol=1e-5)  # positions restart at 0


def test_the_trainer_step_runs_a_packed_row_with_its_document_masks(dist_world_1):
    """``forward_loss`` (what ``train_step`` calls) passes the row's PackedSeqParams and positions on."""
    from litespark.training.step import forward_loss

    cfg, model = _tiny_model()
    docs, masks = _documents(cfg.model.vocab_size, [40, 21])
    row = to_packed_batch(docs, masks, pad_to=16)
    with torch.no_grad():
        losses, _ = _packed(model, row)
        expected = (losses * row["loss_mask"][0]).sum() / row["loss_mask"].sum()
        assert torch.allclose(forward_loss(model, row), expected, rtol=1e-6)
