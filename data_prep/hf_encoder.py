"""Hugging Face tokenizers for data preparation: batch encoding, with a word memo for byte-level BPE.

Why: the fast tokenizer's Rust pipeline spends most of its time on per-token bookkeeping (normalised
strings with byte alignments, token strings, offsets), not on BPE.  A byte-level BPE (GPT-2, Llama 3,
Qwen, ...) splits text with a regular expression into pre-tokens that are encoded independently, so a
document's ids are its pre-tokens' ids concatenated, as with SentencePiece's words
(``data_prep/encoder.py``): each distinct pre-token is encoded once, by the tokenizer's own BPE model.

Exact when (:func:`memo_shape` checks the ``tokenizer.json``): no normaliser; the pre-tokenizer is a
regex ``Split`` (isolated) then ``ByteLevel`` without its own regex or prefix space, or ``ByteLevel``
with its GPT-2 regex; the model is BPE without dropout; every added token is special, unnormalised,
unstripped and not itself a pre-token; the post-processor adds constant special tokens.  The regex runs
here in Python's ``regex`` module and in Rust's Oniguruma in the tokenizer: before use,
:meth:`HuggingFaceEncoder.check` compares the two splits of every Unicode code point in several
contexts, and the memo's ids with the tokenizer's on a sample of the input; any difference turns the
memo off (``word memo: off (reason)``).  ``tests/data_prep`` compares both on adversarial text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from data_prep.encoder import WordMemo, flatten

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_ADDED_PREFIXES = 16  # distinct 2-character starts of added tokens the memo scans documents for


def _byte_level_table() -> dict[int, str]:
    """GPT-2's byte-to-character map (what the ByteLevel pre-tokenizer applies), indexed by latin-1 code."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_LEVEL = _byte_level_table()


def byte_level(text: str) -> str:
    return text.encode("utf-8").decode("latin-1").translate(BYTE_LEVEL)


def memo_shape(spec: dict) -> tuple[str | None, str | None]:
    """(why the memo cannot reproduce this tokenizer or None, its split regex)."""
    if spec.get("normalizer") is not None:
        return f"normaliser {spec['normalizer'].get('type')} rewrites text", None
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    pattern = None
    if [s.get("type") for s in steps] == ["Split", "ByteLevel"]:
        split, level = steps
        regex = split.get("pattern", {}).get("Regex")
        if regex and split.get("behavior") == "Isolated" and not split.get("invert") and not level.get("use_regex"):
            pattern = regex
        level_ok = not level.get("add_prefix_space")
    elif [s.get("type") for s in steps] == ["ByteLevel"]:
        pattern, level_ok = (
            (GPT2_SPLIT if steps[0].get("use_regex", True) else None),
            not steps[0].get("add_prefix_space"),
        )
    else:
        return f"pre-tokenizer {[s.get('type') for s in steps]} is not a regex split into byte-level BPE", None
    if pattern is None or not level_ok:
        return "the pre-tokenizer's split is not one isolating regex without a prefix space", None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix"):
        return f"model {model.get('type')} is not a plain BPE", None
    if model.get("end_of_word_suffix"):
        return "model BPE has an end-of-word suffix", None
    for token in spec.get("added_tokens", []):
        if not token.get("special") or token.get("normalized") or token.get("lstrip") or token.get("rstrip"):
            return f"added token {token.get('content')!r} is not a plain special token", None
        if token.get("single_word"):
            return f"added token {token.get('content')!r} matches single words only", None
    post = spec.get("post_processor") or {}
    kinds = (
        [p.get("type") for p in post.get("processors", [])] if post.get("type") == "Sequence" else [post.get("type")]
    )
    if not set(kinds) <= {None, "ByteLevel", "TemplateProcessing"}:
        return f"post-processor {kinds} is not a constant template", None
    return None, pattern


class HuggingFaceEncoder(WordMemo):
    """``encode(texts)`` -> (ids, ids per text): what ``tokenizer.encode_batch(texts)`` gives, flat.
    With the memo off, the fast tokenizer's own batch encoding without offsets on ``threads`` threads."""

    def __init__(
        self,
        definition: str,
        threads: int = 1,
        special_tokens: bool = True,
        memo_words: int = 1 << 20,
    ) -> None:
        # The Rust thread pool reads these once, at its first parallel batch: set them before any encoding.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        from data_prep.tokenizer_loader import parse_huggingface, parse_huggingface_json

        self.tokenizer, self.special_tokens = parse_huggingface(definition), special_tokens
        spec = parse_huggingface_json(definition)
        self.blocker, pattern = memo_shape(spec) if memo_words > 0 else ("memo_words=0", None)
        super().__init__(memo_words)
        self._known: set[str] = set()  # characters whose split has been compared with the tokenizer's
        self._unsafe: set[str] = set()  # ... and differs (or may: neighbours count)
        self._unsafe_re: re.Pattern | None = None
        if self.blocker is None and pattern is not None:
            self._set_up_memo(spec, pattern)

    def _set_up_memo(self, spec: dict, pattern: str) -> None:
        import regex

        compiled = regex.compile(pattern)
        self._split, self._split_spans = compiled.findall, compiled.finditer
        self._added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        for content in self._added:
            if self._split(content) == [content]:
                self.blocker = f"added token {content!r} is also a pre-token"
                return
        self._added_starts = sorted({c[:2] for c in self._added})
        if len(self._added_starts) > MAX_ADDED_PREFIXES:
            self.blocker = f"added tokens start {len(self._added_starts)} different ways"
            return
        longest_first = sorted(self._added, key=len, reverse=True)
        self._added_re = regex.compile("|".join(map(regex.escape, longest_first))) if self._added else None
        self.head: list[int] = []
        self.tail: list[int] = []
        if self.special_tokens:
            probe = "a b"
            framed = self.tokenizer.encode(probe, add_special_tokens=True).ids
            bare = self.tokenizer.encode(probe, add_special_tokens=False).ids
            at = next((i for i in range(len(framed) - len(bare) + 1) if framed[i : i + len(bare)] == bare), None)
            if at is None:
                self.blocker = "the post-processor changes the text's ids"
                return
            self.head, self.tail = framed[:at], framed[at + len(bare) :]

    def _words(self, text: str) -> list[str]:
        if self._added_re is None or not any(start in text for start in self._added_starts):
            return self._split(text)
        words, pos = [], 0
        for match in self._added_re.finditer(text):
            words += self._split(text[pos : match.start()])
            words.append(match.group())
            pos = match.end()
        return words + self._split(text[pos:])

    def _encode_words(self, words: list[str]) -> list[list[int]]:
        model, added = self.tokenizer.model, self._added
        return [[added[w]] if w in added else [t.id for t in model.tokenize(byte_level(w))] for w in words]

    def _encode_plain(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return flatten(
            [e.ids for e in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=self.special_tokens)]
        )

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self.memoised:
            return self._encode_plain(texts)
        self._compare_new_characters(texts)
        pattern = self._unsafe_re
        unsafe: list[int] = [i for i, t in enumerate(texts) if pattern.search(t)] if pattern is not None else []
        if unsafe:  # texts with a code point the two regex engines split differently: the tokenizer's own
            return self._encode_mixed(texts, set(unsafe))
        ids, lens = super().encode(texts)
        return frame(ids, lens, self.head, self.tail) if self.head or self.tail else (ids, lens)

    def _encode_mixed(self, texts: Sequence[str], unsafe: set[int]) -> tuple[np.ndarray, np.ndarray]:
        safe = [t for i, t in enumerate(texts) if i not in unsafe]
        ids, lens = super().encode(safe)
        if self.head or self.tail:
            ids, lens = frame(ids, lens, self.head, self.tail)
        plain_ids, plain_lens = self._encode_plain([t for i, t in enumerate(texts) if i in unsafe])
        memo_docs = iter(np.split(ids, np.cumsum(lens)[:-1]) if len(lens) else [])
        plain_docs = iter(np.split(plain_ids, np.cumsum(plain_lens)[:-1]))
        docs = [next(plain_docs) if i in unsafe else next(memo_docs) for i in range(len(texts))]
        return np.concatenate(docs).astype(np.int32), np.fromiter(map(len, docs), np.int64, len(docs))

    def check(self, sample: Sequence[str]) -> str | None:
        """Why the memo's ids differ from the tokenizer's on ``sample`` (then it is turned off), or None."""
        if self.memoised:
            ids, lens = self.encode(sample)
            expected = flatten(
                [e.ids for e in self.tokenizer.encode_batch_fast(list(sample), add_special_tokens=self.special_tokens)]
            )
            if not (np.array_equal(ids, expected[0]) and np.array_equal(lens, expected[1])):
                self.blocker = "its ids differ from the tokenizer's on the input's first documents"
            self._reset()
        return self.blocker

    def _compare_new_characters(self, texts: Sequence[str]) -> None:
        """Compare the split of each character not seen before, in a few contexts, between the regex here
        and the tokenizer's pre-tokenizer: where they differ (a letter of a newer Unicode version than one
        engine knows, say) the character is unsafe, and texts holding it are encoded by the tokenizer."""
        new = sorted(set().union(*texts) - self._known)
        if not new:
            return
        self._known.update(new)
        text = "".join(CONTEXT.format(c=c) for c in new)
        ours = {edge for m in self._split_spans(text) for edge in m.span()}
        theirs = {edge for _, span in self.tokenizer.pre_tokenizer.pre_tokenize_str(text) for edge in span}
        segments = {position // SEGMENT for position in ours ^ theirs}
        unsafe = {new[k + d] for k in segments for d in (-1, 0, 1) if 0 <= k + d < len(new)}  # neighbours too
        if unsafe - self._unsafe:
            self._unsafe |= unsafe
            self._unsafe_re = character_class(sorted(map(ord, self._unsafe)))


CONTEXT = "a{c} {c}{c}\n'{c}1{c}"  # a code point after a letter, a space, itself, a newline, an apostrophe, a digit
SEGMENT = len(CONTEXT.format(c="x"))


def character_class(points: list[int]):
    """A compiled regex that finds any of ``points`` (as ranges)."""
    ranges, start = [], None
    for i, c in enumerate(points):
        if start is None:
            start = c
        if i + 1 == len(points) or points[i + 1] != c + 1:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(c)) if c != start else ""))
            start = None
    return re.compile("[" + "".join(ranges) + "]")


def frame(
    ids: np.ndarray, lens: np.ndarray, head: list[int], tail: list[int], dtype=np.int32
) -> tuple[np.ndarray, np.ndarray]:
    """Each text's ids between ``head`` and ``tail``, as ``dtype``."""
    framed_lens = lens + len(head) + len(tail)
    ends = np.cumsum(framed_lens)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype)
    is_text = np.ones(len(out), bool)
    starts = ends - framed_lens
    for k, token in enumerate(head):
        out[starts + k] = token
        is_text[starts + k] = False
    for k, token in enumerate(tail):
        out[ends - len(tail) + k] = token
        is_text[ends - len(tail) + k] = False
    out[is_text] = ids
    return out, framed_lens
