"""DPO micro-batches: whole preference pairs packed into rows, each micro-batch carrying its loss.

A pair is two sequences, prompt + chosen and prompt + rejected (:mod:`litespark.dpo.dataset`); the
rows are packed as SFT's are (:class:`litespark.sft.batches.SFTData`, best-fit decreasing, the same
seeded order and the same pure function of the step per rank) with a pair as the unit, so a pair's
two sequences always share a micro-batch, and run as one ``thd`` pack with document masks: no
padding is computed but what rounds a pack to 16 tokens.

Each micro-batch carries a :class:`PreferenceBatch`: which response each position's target belongs
to, the pairs' reference log-probabilities (:mod:`litespark.dpo.reference`, computed once before
training) and the global batch's pair and chosen-token counts, so that the micro-batches' losses add
up to the global batch's mean as one batch would (:class:`litespark.dpo.loss.PreferenceLoss`).  The
metrics TRL logs (:data:`litespark.dpo.loss.METRICS`) are summed on the device during the interval
and averaged over its pairs when it is logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from litespark.config import RunPlan
from litespark.dpo.loss import METRICS, PairLogps, PreferenceLoss, sequence_logps
from litespark.sft.batches import SFTData
from litespark.sft.prepare import SFTCorpus
from litespark.training.data import StepTokens, micro_batch_indices


@dataclass
class PreferenceBatch:
    """What a packed micro-batch of pairs needs to turn its per-token losses into the DPO loss."""

    response: torch.Tensor
    """Per position: the index of the sequence (chosen ``2k``, rejected ``2k + 1``) whose response
    token is that position's target, or -1."""
    reference: torch.Tensor | None
    """The sequences' summed reference log-probabilities (None during the reference pass)."""
    response_tokens: torch.Tensor
    """Each sequence's response tokens (the IPO loss's lengths)."""
    pairs: float
    """The global batch's pairs divided by the micro-batches that share them."""
    chosen_tokens: float
    """The global batch's chosen tokens divided likewise (the ``sft`` term's normaliser)."""
    loss_fn: PreferenceLoss
    sums: dict[str, torch.Tensor] | None
    """Where this micro-batch adds its metric sums (None: not recorded)."""

    def logps(self, token_losses: torch.Tensor) -> torch.Tensor:
        """Each sequence's summed response log-probability, from the per-token cross-entropy."""
        return sequence_logps(-token_losses.reshape(-1).float(), self.response, len(self.response_tokens))

    def loss(self, token_losses: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the global batch's preference loss; adds its metric sums."""
        assert self.reference is not None
        logps = self.logps(token_losses)
        p = PairLogps(
            chosen=logps[0::2],
            rejected=logps[1::2],
            ref_chosen=self.reference[0::2],
            ref_rejected=self.reference[1::2],
            chosen_tokens=self.response_tokens[0::2],
            rejected_tokens=self.response_tokens[1::2],
        )
        if self.sums is not None:
            for name, value in self.loss_fn.metric_sums(p).items():
                self.sums[name] = self.sums[name] + value if name in self.sums else value
        return self.loss_fn(p, self.pairs, self.chosen_tokens)


class DPOData(SFTData):
    """The packed pairs of one run; ``reference`` must be attached (:mod:`litespark.dpo.reference`)
    before batches are made."""

    per_unit = 2
    unit_name = "pairs"

    def __init__(self, corpus: SFTCorpus, plan: RunPlan):
        super().__init__(corpus, plan)
        d = plan.config.dpo
        self.loss_fn = PreferenceLoss(
            beta=d.beta,
            loss_types=tuple(d.loss_type),
            loss_weights=tuple(d.loss_weights) if d.loss_weights is not None else None,
            label_smoothing=d.label_smoothing,
        )
        self.reference: np.ndarray | None = None
        """float32, one summed log-probability per sequence of the corpus."""
        self._sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "valid": {}}

    @property
    def pairs(self) -> int:
        return len(self.corpus) // 2

    def all_rows(self) -> list[np.ndarray]:
        """Every row, training then validation: each pair exactly once."""
        return self.train_rows + self.valid_rows

    def step_pairs(self, step: int) -> tuple[int, int]:
        """``(pairs, chosen tokens)`` of optimizer step ``step`` over all ranks."""
        return self._pair_counts([self._train_row(k) for k in self._step_range(step)])

    def _pair_counts(self, rows: list[np.ndarray]) -> tuple[int, int]:
        units = np.concatenate(rows)
        return len(units), int(self.targets[2 * units].sum())

    def preference_batch(
        self, rows: list[np.ndarray], pairs: float, chosen_tokens: float, device: torch.device, split: str | None
    ) -> dict:
        """The ``thd`` micro-batch of ``rows`` with its :class:`PreferenceBatch` (``split``: where its
        metric sums go; None: nowhere, as in the reference pass)."""
        batch = self._packed(rows, device)
        seqs = self.sequences(np.concatenate(rows))
        lengths = [*self.seq_lengths[seqs].tolist(), batch["padding_tokens"]]
        owner = torch.repeat_interleave(
            torch.arange(len(lengths), device=device),
            torch.tensor(lengths, device=device),
            output_size=batch["tokens"].shape[1],
        )
        response = torch.where(batch["loss_mask"][0] > 0, owner, torch.full_like(owner, -1))
        reference = None
        if self.reference is not None:
            reference = torch.from_numpy(np.ascontiguousarray(self.reference[seqs])).to(device)
        batch["preference"] = PreferenceBatch(
            response=response,
            reference=reference,
            response_tokens=torch.from_numpy(self.targets[seqs].astype(np.float32)).to(device),
            pairs=pairs,
            chosen_tokens=chosen_tokens,
            loss_fn=self.loss_fn,
            sums=None if split is None else self._sums[split],
        )
        return batch

    def train_batches(
        self, start_step: int, dp_size: int, dp_rank: int, device: torch.device
    ) -> Iterator[tuple[int, list[dict]]]:
        """``(step, [micro-batch dicts])`` of this rank from ``start_step`` to ``run.train_iters``."""
        if self.reference is None:
            raise RuntimeError("DPOData needs its reference log-probabilities before training")
        m = self.micro_batches_per_step
        for step in range(start_step, self.plan.config.run.train_iters):
            pairs, chosen = self.step_pairs(step)
            indices = micro_batch_indices(step, self.micro, self.global_batch, dp_size, dp_rank)
            yield (
                step,
                [
                    self.preference_batch(
                        [self._train_row(k) for k in micro], pairs / m, max(chosen, 1) / m, device, "train"
                    )
                    for micro in indices
                ],
            )

    def eval_batches(self, dp_size: int, dp_rank: int, device: torch.device) -> Iterator[dict]:
        """The validation micro-batches of this rank (as :meth:`SFTData.eval_batches`): the loss is the
        mean over their pairs."""
        cfg = self.plan.config
        rows = len(self.valid_rows)
        every = [self.valid_rows[k % rows] for k in range(cfg.run.eval_iters * self.global_batch)]
        pairs, chosen = self._pair_counts(every)
        per_rank = self.global_batch // dp_size
        passes = cfg.run.eval_iters * (per_rank // self.micro) * dp_size
        self._sums["valid"].clear()
        self._valid_pairs = pairs
        for k in range(cfg.run.eval_iters):
            first = k * self.global_batch + dp_rank * per_rank
            for start in range(first, first + per_rank, self.micro):
                yield self.preference_batch(
                    every[start : start + self.micro], pairs / passes, max(chosen, 1) / passes, device, "valid"
                )

    def interval_record(self, steps: range, counts: list[StepTokens]) -> dict:
        """SFT's token counts, the interval's pairs and TRL's metrics, averaged over them (collective)."""
        pairs = sum(self.step_pairs(s)[0] for s in steps)
        return {**super().interval_record(steps, counts), "pairs": pairs, **self._take_metrics("train", pairs)}

    def eval_record(self) -> dict:
        """TRL's metrics over the last evaluation's pairs (collective)."""
        return self._take_metrics("valid", self._valid_pairs)

    def _take_metrics(self, split: str, pairs: int) -> dict:
        from megatron.core import parallel_state as ps

        sums = self._sums[split]
        device = next(iter(sums.values())).device if sums else torch.device("cpu")
        values = torch.stack([sums.get(name, torch.zeros((), device=device)).float() for name in METRICS])
        sums.clear()  # in place: batches made already add to this dict
        values = values.to(torch.float64)
        if dist.is_initialized():
            dist.all_reduce(values, group=ps.get_data_parallel_group())
        return {name: float(v) / max(pairs, 1) for name, v in zip(METRICS, values.tolist())}
