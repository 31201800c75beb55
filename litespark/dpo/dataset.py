"""A preference data file -> tokenised pairs, two sequences each, ready to pack.

The file (JSONL, ``.jsonl.gz``/``.jsonl.zst``, or a Hugging Face dataset) is read as SFT data is
(:mod:`litespark.sft.dataset`: every line counted, a bad one with its reason and line number), each
line a preference pair in TRL's formats (:mod:`litespark.dpo.examples`).  A pair becomes two
sequences, prompt + chosen and prompt + rejected, whose loss masks mark the response tokens; a pair
is trained whole, in one packed row of ``seq_length`` tokens, so each sequence holds at most
``seq_length // 2`` tokens (TRL's ``max_length``).  A longer sequence is cut to that, its start
kept (TRL's ``keep_start``), or the pair dropped (``sft.too_long=drop``), counted either way; a
prompt that alone fills it leaves no response and is dropped, as TRL drops it.
"""

from __future__ import annotations

from litespark.dpo.examples import PreferenceExampleError, to_preference_ids
from litespark.sft.dataset import Collector


class PairCollector(Collector):
    """Adds each pair as two consecutive sequences (chosen, then rejected); ``counts.examples``
    counts pairs."""

    kind = "DPO"

    def add(self, where: str, example) -> None:
        o, c = self.options, self.counts
        c.lines += 1
        try:
            prompt, chosen, rejected = to_preference_ids(example, self.tokenizer)
        except PreferenceExampleError as exc:
            self.bad(where, str(exc))
            return
        if not prompt:
            self.bad(where, "the prompt has no tokens (the first response token would be predicted from nothing)")
            return
        limit = o.seq_length // 2
        if len(prompt) >= limit:
            c.dropped_too_long += 1
            return
        sequences = [prompt + chosen, prompt + rejected]
        masks = [[0] * len(prompt) + [1] * len(chosen), [0] * len(prompt) + [1] * len(rejected)]
        if max(len(s) for s in sequences) > limit:
            if o.too_long == "drop":
                c.dropped_too_long += 1
                return
            sequences = [s[:limit] for s in sequences]
            masks = [m[:limit] for m in masks]
            c.truncated += 1
        for ids, mask in zip(sequences, masks):
            self.tokens.append(ids)
            self.masks.append(mask)
            c.tokens += len(ids)
            c.target_tokens += sum(mask[1:])
        c.examples += 1
