"""Encoding of document batches into flat token arrays: SentencePiece with each distinct word encoded
once, or a Hugging Face fast tokenizer.

Why: SentencePiece's BPE runs its merge loop afresh on every occurrence of every word, and its Python
binding returns a list of Python ints per document that then has to be copied into an array.  Natural
text repeats its words (Zipf), so a worker that remembers each word's ids and assembles documents with
numpy does a fraction of the work, and the output is the same, token for token.

Why it is exact: SentencePiece splits the normalised text into symbols and merges adjacent pairs that
form a vocabulary piece.  When every piece has the form ``▁*[^▁]*`` (whitespace only as a prefix), no
merge can join a symbol to a following ``▁`` that comes after a non-``▁`` character; and a character
that no piece contains (the newline, since SentencePiece trains on lines) never merges with anything.
The text therefore falls into independent "words" (a run of spaces with the non-space characters
after it, or a single newline; a literal ``▁`` counts as a space), and the ids of the whole text are
the ids of its words, concatenated.  A word is encoded in a context that starts a new word: ``encode("\\n" + word)`` minus the ids of
``"\\n"`` alone (the leading newline is a boundary, and it absorbs the dummy-prefix ``▁``).  This holds
only for models whose normaliser is the identity and that keep extra whitespace (the Llama family);
:func:`memo_blocker` checks the model and :class:`Encoder` falls back to plain batch encoding
otherwise.  ``tests/data_prep/test_data_prep.py`` compares both paths on real and adversarial text.

Memory: the memo holds at most ``memo_words`` words (default 2**20); each costs about 250 bytes
(the key string, its dict slot, its ids and offsets; measured), so ~0.25 GiB at the default, after
which the memo is emptied and refilled.  ``memo_words=0`` disables it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain

import numpy as np

from litespark.indexed_files import GrowingArray

# A word: a run of whitespace (a space or a literal U+2581, which SentencePiece treats alike) with the
# characters up to the next whitespace, or a lone newline.  Applied to " " + text, so that the first word
# carries the dummy prefix.
WORD = re.compile("\n|[ \u2581]*[^ \u2581\n]+|[ \u2581]+").findall
PIECE_FORM = re.compile("\u2581*[^\u2581]*")
BPE = 2  # TrainerSpec.ModelType.BPE
POOL_IDS_PER_WORD = 16  # the memo's id pool is emptied past this many ids per memo word (long unique words)


def memo_blocker(sp) -> str | None:
    """Why the word memo would not reproduce ``sp.encode`` for this model, or None when it would."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module
    proto.ParseFromString(sp.serialized_model_proto())
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.model_type != BPE:
        return f"model type {trainer.model_type} is not BPE"
    if norm.name != "identity" or norm.precompiled_charsmap:
        return f"normaliser '{norm.name}' rewrites text"
    if norm.remove_extra_whitespaces or not norm.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        return "whitespace is not kept as a '\u2581' prefix"
    for piece in proto.pieces:
        if piece.type in (1, 4) and (not PIECE_FORM.fullmatch(piece.piece) or "\n" in piece.piece):
            return f"piece {piece.piece!r} spans a word boundary"
    return None


class _Slots(dict):
    """Word -> slot number; a new word gets the next slot and is queued for encoding."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[str] = []

    def __missing__(self, word: str) -> int:
        slot = self[word] = len(self)
        self.pending.append(word)
        return slot


class WordMemo:
    """``encode(texts)`` -> (all ids as one int32 array, ids per text), assembled from the ids of each
    text's words, each distinct word encoded once.  Subclasses say how a text splits into words
    (``_words``), how new words are encoded (``_encode_words``) and how whole texts are encoded when the
    memo cannot be used (``_encode_plain``)."""

    blocker: str | None

    def __init__(self, memo_words: int) -> None:
        self.memo_words = memo_words
        self._reset()

    @property
    def memoised(self) -> bool:
        return self.blocker is None

    def _reset(self) -> None:
        self._slots = _Slots()
        self._starts, self._lens = GrowingArray(np.int64), GrowingArray(np.int64)
        self._pool = GrowingArray(np.int32)

    def _words(self, text: str) -> list[str]:
        raise NotImplementedError

    def _encode_words(self, words: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _encode_plain(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self.memoised:
            return self._encode_plain(texts)
        if len(self._slots) > self.memo_words or self._pool.size > POOL_IDS_PER_WORD * self.memo_words:
            self._reset()
        words = [self._words(t) for t in texts]
        counts = np.fromiter(map(len, words), np.int64, len(words))
        slots = np.fromiter(map(self._slots.__getitem__, chain.from_iterable(words)), np.int64, int(counts.sum()))
        self._encode_pending()
        lens = self._lens.data[slots]
        ends = np.cumsum(lens)
        total = int(ends[-1]) if len(ends) else 0
        ids = self._pool.data[np.repeat(self._starts.data[slots] - (ends - lens), lens) + np.arange(total)]
        bounds = np.concatenate(([0], ends))[np.cumsum(counts)]  # tokens up to the end of each text
        return ids, np.diff(bounds, prepend=0)

    def _encode_pending(self) -> None:
        pending = self._slots.pending
        if not pending:
            return
        encoded = self._encode_words(pending)
        lens = np.fromiter(map(len, encoded), np.int64, len(encoded))
        self._starts.extend(self._pool.size + np.cumsum(lens) - lens)
        self._lens.extend(lens)
        self._pool.extend(np.fromiter(chain.from_iterable(encoded), np.int32, int(lens.sum())))
        pending.clear()


def flatten(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter(map(len, encoded), np.int64, len(encoded))
    return np.fromiter(chain.from_iterable(encoded), np.int32, int(lens.sum())), lens


class Encoder(WordMemo):
    """What ``sp.encode`` gives, flat; each distinct word encoded once when :func:`memo_blocker` allows."""

    def __init__(self, sp, threads: int = 1, memo_words: int = 1 << 20) -> None:
        self.sp, self.threads = sp, threads
        self.blocker = memo_blocker(sp) if memo_words > 0 else "memo_words=0"
        self._prefix = len(sp.encode("\n"))
        super().__init__(memo_words)

    def _words(self, text: str) -> list[str]:
        return WORD(" " + text) if text else []  # sp.encode("") is empty: no dummy prefix

    def _encode_words(self, words: list[str]) -> list[list[int]]:
        k = self._prefix
        return [e[k:] for e in self.sp.encode(["\n" + w for w in words], num_threads=self.threads)]

    def _encode_plain(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return flatten(self.sp.encode(list(texts), num_threads=self.threads))
