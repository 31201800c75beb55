"""DPO's losses and metrics equal TRL 1.16 DPOTrainer's on the same model, reference and pairs."""

from __future__ import annotations

import pytest
import torch

from litespark.dpo.examples import to_preference_ids
from litespark.dpo.loss import METRICS, PairLogps, PreferenceLoss, sequence_logps
from tests.helpers.sft_data import CHAT_PREFERENCES, tiny_hf_llama

PAIRS = CHAT_PREFERENCES * 2 + [
    {
        "prompt": [{"role": "user", "content": "Say hello"}],
        "chosen": [{"role": "assistant", "content": "Hello there!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
]


def _tiny_llama(vocab: int, seed: int):
    torch.manual_seed(seed)
    return tiny_hf_llama(vocab).eval()


def _response_logps(model, prompt: list[int], response: list[int]) -> float:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    per_token = logps.gather(1, targets[:, None])[:, 0]
    # Position j predicts token j + 1: the response's tokens are predicted from len(prompt) - 1 on.
    sequence = torch.full_like(targets, -1)
    sequence[len(prompt) - 1 :] = 0
    return float(sequence_logps(per_token, sequence, 1)[0])


def _trl_first_batch(tokenizer, tmp_path, policy, reference, **options) -> tuple[float, dict[str, float]]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        max_length=None,
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=len(PAIRS),
        **options,
    )
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer
    )
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
    return loss, {name: trainer._metrics["train"][name][-1] for name in METRICS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"beta": 0.1, "loss_type": ["sigmoid"]},
        {"beta": 0.5, "loss_type": ["hinge"]},
        {"beta": 0.2, "loss_type": ["ipo"]},
        {"beta": 0.1, "loss_type": ["robust"], "label_smoothing": 0.2},
        {"beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.3]},
    ],
    ids=["sigmoid", "hinge", "ipo", "robust", "sigmoid+sft"],
)
def test_loss_and_metrics_equal_trl_dpo_trainer(tokenizer, tmp_path, options):
    policy, reference = _tiny_llama(len(tokenizer), 0), _tiny_llama(len(tokenizer), 1)
    rows = [to_preference_ids(pair, tokenizer) for pair in PAIRS]
    logps = {
        name: torch.tensor(
            [_response_logps(model, prompt, (chosen, rejected)[i]) for prompt, chosen, rejected in rows],
            dtype=torch.float64,
        )
        for name, model, i in (
            ("chosen", policy, 0),
            ("rejected", policy, 1),
            ("ref_chosen", reference, 0),
            ("ref_rejected", reference, 1),
        )
    }
    lengths = {
        "chosen_tokens": torch.tensor([len(c) for _, c, _ in rows], dtype=torch.float64),
        "rejected_tokens": torch.tensor([len(r) for _, _, r in rows], dtype=torch.float64),
    }
    p = PairLogps(**logps, **lengths)
    loss = PreferenceLoss(
        beta=options["beta"],
        loss_types=tuple(options["loss_type"]),
        loss_weights=tuple(options["loss_weights"]) if "loss_weights" in options else None,
        label_smoothing=options.get("label_smoothing", 0.0),
    )
    ours = float(loss(p, pairs=len(rows), chosen_tokens=float(lengths["chosen_tokens"].sum())))
    ours_metrics = {k: float(v) / len(rows) for k, v in loss.metric_sums(p).items()}
    theirs, theirs_metrics = _trl_first_batch(tokenizer, tmp_path, policy, reference, **options)
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    for name in METRICS:
        assert ours_metrics[name] == pytest.approx(theirs_metrics[name], rel=1e-4, abs=1e-6), name
    assert abs(ours_metrics["rewards/margins"]) > 1e-4  # the reference differs: the comparison sees rewards


def test_two_micro_batches_add_up_to_the_global_batch_mean():
    loss = PreferenceLoss(beta=0.1, loss_types=("sigmoid", "sft"), loss_weights=(1.0, 0.5))
    g = torch.Generator().manual_seed(0)

    def pairs(n):
        return PairLogps(*(-10 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)),
                         torch.randint(1, 9, (n,), generator=g).double(), torch.randint(1, 9, (n,), generator=g).double())  # fmt: skip

    a, b = pairs(3), pairs(5)
    both = PairLogps(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in PairLogps.__dataclass_fields__))
    n, tokens = 8, float(both.chosen_tokens.sum())
    assert float(loss(a, n, tokens) + loss(b, n, tokens)) == pytest.approx(float(loss(both, n, tokens)), rel=1e-12)
    # A plain mean of the two micro-batch means would weigh the 3 pairs as much as the 5.
    mean_of_means = (loss(a, 3, float(a.chosen_tokens.sum())) + loss(b, 5, float(b.chosen_tokens.sum()))) / 2
    assert abs(float(mean_of_means) - float(loss(both, n, tokens))) > 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_types": ("dpo",)}, "loss types must be among"),
        ({"loss_types": ("sigmoid", "sft"), "loss_weights": (1.0,)}, "1 loss weights for 2 loss types"),
        ({"beta": 0.0}, "beta must be positive"),
        ({"loss_types": ("robust",), "label_smoothing": 0.5}, "label_smoothing in \\[0, 0.5\\)"),
    ],
)
def test_settings_that_cannot_train_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreferenceLoss(**kwargs)
