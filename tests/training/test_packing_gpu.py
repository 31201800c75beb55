"""Packed rows on the Transformer Engine backend (``thd`` through TE's fused attention and RoPE, BF16):
a packed row computes what its documents compute one at a time, and no document sees another.
Skipped without CUDA; run with ``make gpu-test``."""

from __future__ import annotations

import pytest
import torch

from litespark.model.build import position_ids_for
from litespark.training.packing import to_packed_batch
from tests.helpers.gpu_models import build_on_gpu

pytestmark = pytest.mark.gpu


def _documents(vocab: int, lengths, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


def _packed_logits(model, row) -> torch.Tensor:
    return model(
        input_ids=row["tokens"],
        position_ids=row["position_ids"],
        attention_mask=None,
        packed_seq_params=row["packed_seq_params"],
    )[0].float()


def _alone_logits(model, doc: torch.Tensor) -> torch.Tensor:
    inputs = doc[None].cuda()
    return model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None)[0].float()


def test_te_packed_row_equals_its_documents_one_at_a_time(dist_world_1):
    plan, model = build_on_gpu("te", "kernels.fused_qkv_rope=false")
    model.eval()
    lengths = [48, 37, 23, 20]  # 128 tokens: one full row, documents of uneven length
    docs = _documents(plan.config.model.vocab_size, lengths)
    row = to_packed_batch(docs, pad_to=16, device="cuda")
    with torch.no_grad():
        packed = _packed_logits(model, row)
        start = 0
        for doc, n in zip(docs, lengths):
            alone = _alone_logits(model, doc)
            rel = float((packed[start : start + n] - alone).norm() / alone.norm())
            assert rel < 2e-2, f"document at {start}: packed vs alone relative logits difference {rel:.3e}"
            start += n


def test_te_packed_documents_do_not_see_each_other(dist_world_1):
    plan, model = build_on_gpu("te", "kernels.fused_qkv_rope=false")
    model.eval()
    vocab = plan.config.model.vocab_size
    docs = _documents(vocab, [40, 50, 38])
    changed = [docs[0], (docs[1] + 7) % vocab, docs[2]]
    with torch.no_grad():
        before = _packed_logits(model, to_packed_batch(docs, pad_to=16, device="cuda"))
        after = _packed_logits(model, to_packed_batch(changed, pad_to=16, device="cuda"))
    first, second, third = slice(0, 40), slice(40, 90), slice(90, 128)
    assert torch.equal(before[first], after[first]) and torch.equal(before[third], after[third])
    assert not torch.allclose(before[second], after[second])


def test_te_packed_training_step_reduces_the_loss_of_masked_tokens_only(dist_world_1):
    """Gradients flow through TE's ``thd`` attention: a few Adam steps on one packed row lower its loss."""
    from litespark.training.step import forward_loss

    _, model = build_on_gpu("te", "kernels.fused_qkv_rope=false")
    docs = _documents(64, [60, 41, 27])
    masks = [torch.arange(n) >= n // 2 for n in (60, 41, 27)]
    row = to_packed_batch(docs, masks, pad_to=16, device="cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = forward_loss(model, row)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
