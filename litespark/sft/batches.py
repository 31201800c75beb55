"""SFT micro-batches: tokenised examples packed into rows, rows into micro-batches with document masks.

The examples (:mod:`litespark.sft.prepare`) are packed once, best-fit decreasing, into rows of at
most ``seq_length`` tokens; a global batch is ``data.global_batch_size`` rows.  The rows are visited
in a fresh seeded order each epoch, and which rows a rank runs is a pure function of the step, as in
pretraining (:func:`litespark.training.data.micro_batch_indices`), so a resume needs only the step.

A micro-batch of ``micro`` rows runs as one ``thd`` pack of all their examples
(:func:`litespark.training.packing.to_packed_batch`): attention stays inside each example, positions
restart, and the only padding computed is what rounds the pack to a multiple of 16 tokens for the
FP8 GEMMs; a row's unused room is never computed.  Megatron-LM's packed SFT needs micro-batch 1;
here any micro-batch works.

The loss is the mean over every trained token of the global batch, as TRL computes it: each
micro-batch divides its summed loss by the global batch's trained tokens over the number of
micro-batches (DeepSpeed then averages micro-batches and ranks), so a micro-batch with more targets
weighs more.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from litespark.config import ConfigError, RunPlan
from litespark.log import get_logger
from litespark.sft.prepare import SFTCorpus
from litespark.training.data import StepTokens, micro_batch_indices
from litespark.training.packing import best_fit_decreasing, to_packed_batch

log = get_logger(__name__)
PAD_TO = 16
"""A micro-batch's tokens are a multiple of this (FP8 GEMMs need 16)."""


class SFTData:
    """The packed rows of one run, split into training and validation examples by ``run.seed``."""

    per_unit = 1
    """Sequences trained together, never split across micro-batches (DPO: a pair's two)."""
    unit_name = "examples"

    def __init__(self, corpus: SFTCorpus, plan: RunPlan):
        cfg = plan.config
        self.corpus, self.plan = corpus, plan
        self.seq, self.seed = cfg.model.seq_length, cfg.run.seed
        self.micro, self.global_batch = plan.micro_batch_size, cfg.data.global_batch_size
        self.micro_batches_per_step = plan.gradient_accumulation_steps * plan.data_parallel
        self.seq_lengths = corpus.lengths()
        starts = corpus.offsets[:-1]
        # Targets of sequence i: its mask without the first token (nothing precedes it to predict it).
        self.targets = np.add.reduceat(corpus.mask, starts, dtype=np.int64) - corpus.mask[starts]
        lengths = self.seq_lengths.reshape(-1, self.per_unit).sum(axis=1)
        units = len(lengths)
        order = np.random.default_rng(self.seed).permutation(units)
        n_valid = round(units * cfg.sft.valid_fraction)
        if cfg.sft.valid_fraction and n_valid == 0:
            n_valid = 1
        if n_valid >= units:
            raise ConfigError(
                f"sft.valid_fraction {cfg.sft.valid_fraction} leaves no training {self.unit_name[:-1]} of {units}"
            )
        self.train_rows = self._pack(np.sort(order[n_valid:]), lengths)
        self.valid_rows = self._pack(np.sort(order[:n_valid]), lengths) if n_valid else []
        real = int(lengths[order[n_valid:]].sum())
        log.info(
            "%s rows: %d training %s in %d rows of %d tokens (%.1f%% full), an epoch every %.1f steps; "
            "%d validation %s in %d rows",
            cfg.data.source.upper(),
            units - n_valid,
            self.unit_name,
            len(self.train_rows),
            self.seq,
            100 * real / (len(self.train_rows) * self.seq),
            len(self.train_rows) / self.global_batch,
            n_valid,
            self.unit_name,
            len(self.valid_rows),
        )
        self._perms: dict[int, np.ndarray] = {}
        if n_valid and not cfg.run.eval_interval:
            log.warning(
                "sft.valid_fraction holds out %d %s but run.eval_interval=0 never evaluates them",
                n_valid,
                self.unit_name,
            )

    def sequences(self, units: np.ndarray) -> np.ndarray:
        """The corpus's sequences of ``units``, in order (a unit's sequences are consecutive)."""
        k = self.per_unit
        return units if k == 1 else (units[:, None] * k + np.arange(k)).reshape(-1)

    def _pack(self, ids: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        rows = best_fit_decreasing(lengths[ids].tolist(), self.seq)
        return [ids[row] for row in rows]

    @property
    def has_valid(self) -> bool:
        return bool(self.valid_rows)

    def _train_row(self, k: int) -> np.ndarray:
        """The ``k``-th row of the run: epoch ``k // rows`` in its own seeded order."""
        epoch, i = divmod(k, len(self.train_rows))
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_rows))
            self._perms = {epoch: perm}  # steps move forward: one epoch's order is enough
        return self.train_rows[int(perm[i])]

    def step_tokens(self, step: int) -> StepTokens:
        """The counts of optimizer step ``step`` over all ranks (every rank computes the same)."""
        return self._tokens([self._train_row(k) for k in self._step_range(step)])

    def _step_range(self, step: int) -> range:
        return range(step * self.global_batch, (step + 1) * self.global_batch)

    def _tokens(self, rows: list[np.ndarray]) -> StepTokens:
        lengths = self.seq_lengths
        real = trained = pairs = padding = 0
        for first in range(0, len(rows), self.micro):
            ids = self.sequences(np.concatenate(rows[first : first + self.micro]))
            n = lengths[ids]
            real += int(n.sum())
            padding += -int(n.sum()) % PAD_TO
            trained += int(self.targets[ids].sum())
            pairs += int((n * n).sum())
        return StepTokens(real=real, padding=padding, trained=trained, attention_pairs=pairs)

    def _packed(self, rows: list[np.ndarray], device: torch.device) -> dict:
        """The ``thd`` micro-batch of ``rows``' sequences."""
        docs, masks = [], []
        for i in self.sequences(np.concatenate(rows)):
            tokens, mask = self.corpus.example(int(i))
            docs.append(tokens)
            masks.append(mask)
        return to_packed_batch(docs, masks, pad_to=PAD_TO, device=device, max_seqlen=self.seq)

    def _batch(self, rows: list[np.ndarray], normalizer: float, device: torch.device) -> dict:
        batch = self._packed(rows, device)
        batch["loss_normalizer"] = normalizer
        return batch

    def interval_record(self, steps: range, counts: list[StepTokens]) -> dict:
        """What the metrics record of the training steps ``steps`` adds to pretraining's (collective)."""
        return {"padding_tokens": sum(c.padding for c in counts), "trained_tokens": sum(c.trained for c in counts)}

    def eval_record(self) -> dict:
        """What a validation record adds (nothing: the loss is the mean over trained tokens)."""
        return {}

    def train_batches(
        self, start_step: int, dp_size: int, dp_rank: int, device: torch.device
    ) -> Iterator[tuple[int, list[dict]]]:
        """``(step, [micro-batch dicts])`` of this rank from ``start_step`` to ``run.train_iters``."""
        for step in range(start_step, self.plan.config.run.train_iters):
            trained = self.step_tokens(step).trained
            normalizer = max(trained, 1) / self.micro_batches_per_step
            indices = micro_batch_indices(step, self.micro, self.global_batch, dp_size, dp_rank)
            yield step, [self._batch([self._train_row(k) for k in micro], normalizer, device) for micro in indices]

    def eval_batches(self, dp_size: int, dp_rank: int, device: torch.device) -> Iterator[dict]:
        """The fixed validation micro-batches of this rank: ``run.eval_iters`` global batches of rows,
        cycling through the validation rows; the loss is the mean over their trained tokens."""
        cfg = self.plan.config
        rows = len(self.valid_rows)
        every = [self.valid_rows[k % rows] for k in range(cfg.run.eval_iters * self.global_batch)]
        trained = self._tokens(every).trained
        per_rank = self.global_batch // dp_size
        passes = cfg.run.eval_iters * (per_rank // self.micro) * dp_size
        normalizer = max(trained, 1) / passes
        for k in range(cfg.run.eval_iters):
            first = k * self.global_batch + dp_rank * per_rank
            for start in range(first, first + per_rank, self.micro):
                yield self._batch(every[start : start + self.micro], normalizer, device)
