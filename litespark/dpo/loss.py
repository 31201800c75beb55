"""DPO's preference losses and the metrics TRL logs, from the log-probabilities of response pairs.

A pair's log-probability under a model is the sum, over the response's tokens, of the log-probability
of each token given what precedes it.  With the reference model's (computed once, before training)
the implicit rewards are ``beta * (log pi(y|x) - log pi_ref(y|x))`` and the losses are TRL 1.16's
``DPOTrainer`` ones (``tests/dpo/test_loss.py`` compares them, with every metric, on the same model):

- ``sigmoid``: ``-log sigmoid(beta * margin)`` (DPO);
- ``hinge``: ``relu(1 - beta * margin)`` (SLiC);
- ``ipo``: ``(margin_per_token - 1 / (2 beta))**2``, each log-ratio divided by its response's length;
- ``robust``: DPO with ``label_smoothing`` the probability that a label is flipped (rDPO; conservative
  DPO's label smoothing);
- ``sft``: the negative log-likelihood of the chosen responses per token, mixed with another loss
  through ``loss_weights`` (TRL's replacement for RPO's ``rpo_alpha``).

where ``margin`` is the chosen log-ratio minus the rejected one.  Everything is summed over the pairs
(and, for ``sft``, the chosen tokens) of a micro-batch and divided by the global batch's counts, so
that micro-batches of different sizes add up to the global batch's mean, as one batch would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "sft")
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
"""The per-pair metrics, named as TRL names them (so that dashboards carry over)."""


@dataclass(frozen=True)
class PairLogps:
    """Per pair of one micro-batch: summed response log-probabilities under the policy and the
    reference, and the responses' token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass(frozen=True)
class PreferenceLoss:
    """A weighted sum of :data:`LOSS_TYPES` with DPO's ``beta``."""

    beta: float = 0.1
    loss_types: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        unknown = [t for t in self.loss_types if t not in LOSS_TYPES]
        if unknown or not self.loss_types:
            raise ValueError(f"loss types must be among {', '.join(LOSS_TYPES)}, got {list(self.loss_types)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_types):
            raise ValueError(f"{len(self.loss_weights)} loss weights for {len(self.loss_types)} loss types")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if "robust" in self.loss_types and not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"the robust loss needs label_smoothing in [0, 0.5), got {self.label_smoothing}")

    def per_pair(self, loss_type: str, p: PairLogps) -> torch.Tensor:
        """Loss ``loss_type`` of each pair (not ``sft``, which is per token)."""
        chosen_ratio, rejected_ratio = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
        delta = chosen_ratio - rejected_ratio
        if loss_type == "sigmoid":
            return -F.logsigmoid(self.beta * delta)
        if loss_type == "hinge":
            return torch.relu(1 - self.beta * delta)
        if loss_type == "ipo":
            per_token = chosen_ratio / p.chosen_tokens.clamp(min=1) - rejected_ratio / p.rejected_tokens.clamp(min=1)
            return (per_token - 1 / (2 * self.beta)) ** 2
        if loss_type == "robust":
            eps = self.label_smoothing
            clean = -(1 - eps) * F.logsigmoid(self.beta * delta)
            flipped = -eps * F.logsigmoid(-self.beta * delta)
            return (clean - flipped) / (1 - 2 * eps)
        raise ValueError(f"{loss_type} is not a per-pair loss")

    def __call__(self, p: PairLogps, pairs: float, chosen_tokens: float) -> torch.Tensor:
        """This micro-batch's share of the global batch's loss: each per-pair loss summed over its pairs
        and divided by ``pairs`` (the global batch's), the ``sft`` term summed over its chosen tokens
        and divided by ``chosen_tokens`` (the global batch's), weighted and added."""
        weights = self.loss_weights or (1.0,) * len(self.loss_types)
        total = p.chosen.new_zeros(())
        for loss_type, weight in zip(self.loss_types, weights):
            if loss_type == "sft":
                total = total + weight * (-p.chosen.sum()) / chosen_tokens
            else:
                total = total + weight * self.per_pair(loss_type, p).sum() / pairs
        return total

    def metric_sums(self, p: PairLogps) -> dict[str, torch.Tensor]:
        """:data:`METRICS` summed over this micro-batch's pairs (divide by the pairs to get TRL's means)."""
        chosen_rewards = self.beta * (p.chosen - p.ref_chosen).detach()
        rejected_rewards = self.beta * (p.rejected - p.ref_rejected).detach()
        return {
            "rewards/chosen": chosen_rewards.sum(),
            "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": p.chosen.detach().sum(),
            "logps/rejected": p.rejected.detach().sum(),
        }


def sequence_logps(token_logps: torch.Tensor, sequence: torch.Tensor, sequences: int) -> torch.Tensor:
    """Sum of ``token_logps`` per sequence: ``sequence[j]`` is the index of the response position
    ``j`` belongs to, or -1 where it belongs to none (prompts, padding); returns ``[sequences]``.
    Those go to one more slot, dropped at the end: selecting the response positions instead would
    make the host wait for the device (a boolean index's size is only known there) in every forward."""
    slot = torch.where(sequence >= 0, sequence, sequences)
    return token_logps.new_zeros(sequences + 1).index_add(0, slot, token_logps)[:sequences]
