"""The tokenizer a dataset is made with: a SentencePiece model or a Hugging Face tokenizer.

``--tokenizer`` takes a SentencePiece ``.model`` (Llama 1/2), a Hugging Face ``tokenizer.json``, or a
checkpoint directory holding ``tokenizer.json`` (Llama 3's 128,256-entry byte-level BPE, Mistral,
Qwen, ...).  What a document becomes, by default, is what Megatron-LM's ``preprocess_data.py``
writes with ``--append-eod``:

- SentencePiece (``--tokenizer-type Llama2Tokenizer``): BOS + ids + EOS; ``--no-bos`` drops the BOS.
- Hugging Face (``--tokenizer-type HuggingFaceTokenizer``): the ids the tokenizer gives with its
  special tokens (its ``tokenizer.json`` post-processor: ``<|begin_of_text|>`` first for Llama 3) +
  the EOS of ``tokenizer_config.json`` (``<|end_of_text|>`` for Llama 3 base models); ``--no-bos``
  encodes without the post-processor's special tokens.

Hugging Face tokenizers are read with the ``tokenizers`` library directly (importing ``transformers``
costs seconds); the EOS comes from ``tokenizer_config.json`` (or ``special_tokens_map.json``) beside
``tokenizer.json``, or from ``--eos-token``.  The manifest records the sha256 of the tokenizer file (the
``.model`` or ``tokenizer.json``): the trainer's ``data.tokenizer`` is compared with it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SENTENCEPIECE, HUGGINGFACE = "sentencepiece", "huggingface"


class BadTokenizer(ValueError):
    """The tokenizer cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str
    file: Path
    """The file that defines the encoding (its sha256 goes into the manifest)."""
    vocab_size: int
    bos_id: int | None
    """SentencePiece: the id written before each document; Hugging Face: None (the post-processor adds it)."""
    eos_id: int
    definition: str
    """What a worker loads: the ``.model`` path, or the ``tokenizer.json`` text."""

    def describe(self) -> str:
        return f"{self.kind} {self.file} ({self.vocab_size:,} entries, EOS {self.eos_id})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(path: str, eos_token: str | None = None) -> TokenizerSpec:
    """The tokenizer named by ``--tokenizer``; :class:`BadTokenizer` when it is missing or unusable."""
    given = Path(path)
    if given.is_dir():
        if not (given / "tokenizer.json").is_file():
            raise BadTokenizer(f"--tokenizer {path}: the directory holds no tokenizer.json")
        return _huggingface(given / "tokenizer.json", eos_token)
    if not given.is_file():
        raise BadTokenizer(f"--tokenizer {path} does not exist")
    if given.suffix == ".json":
        return _huggingface(given, eos_token)
    return _sentencepiece(given)


def _sentencepiece(path: Path) -> TokenizerSpec:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise BadTokenizer(f"--tokenizer {path} is not a SentencePiece model ({str(exc).splitlines()[0]})") from None
    if sp.eos_id() < 0:
        raise BadTokenizer(f"--tokenizer {path} has no EOS piece")
    return TokenizerSpec(SENTENCEPIECE, path, sp.get_piece_size(), sp.bos_id(), sp.eos_id(), str(path))


def _special_token(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # {"content": "<|end_of_text|>", ...} in older configs
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_eos(directory: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = directory / name
        if file.is_file():
            try:
                token = _special_token(json.loads(file.read_text()), "eos_token")
            except ValueError:
                raise BadTokenizer(f"--tokenizer: {file} is not valid JSON") from None
            if token:
                return token
    return None


@functools.lru_cache(maxsize=2)
def parse_huggingface(definition: str):
    """The ``tokenizers.Tokenizer`` of a ``tokenizer.json`` text, parsed once per process (a 128k-entry
    vocabulary takes most of a second)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(definition)


@functools.lru_cache(maxsize=2)
def parse_huggingface_json(definition: str) -> dict:
    """A ``tokenizer.json`` text as a dict, parsed once per process (do not modify it)."""
    return json.loads(definition)


def _huggingface(path: Path, eos_token: str | None) -> TokenizerSpec:
    definition = path.read_text(encoding="utf-8")
    try:
        tok = parse_huggingface(definition)
    except Exception as exc:
        raise BadTokenizer(f"--tokenizer {path} is not a Hugging Face tokenizer.json ({str(exc)[:200]})") from None
    eos = eos_token or _config_eos(path.parent)
    if eos is None:
        raise BadTokenizer(
            f"--tokenizer {path}: no eos_token in tokenizer_config.json or special_tokens_map.json beside it; "
            "give --eos-token"
        )
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise BadTokenizer(f"--tokenizer {path}: its EOS {eos!r} is not in the vocabulary")
    return TokenizerSpec(HUGGINGFACE, path, tok.get_vocab_size(with_added_tokens=True), None, eos_id, definition)
