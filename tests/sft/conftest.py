"""The SFT tests' tokenizer, trained once per session in this process (no subprocess: the SFT tests
are not `slow`)."""

from __future__ import annotations

import json as json_module
from pathlib import Path

import pytest

from tests.helpers.sft_data import CHAT_TEMPLATE


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A Llama-3-style byte-level BPE (``data_prep/train_tokenizer.py``'s, with Llama 3's special
    tokens) trained on the json package's sources, with :data:`CHAT_TEMPLATE`."""
    from transformers import AutoTokenizer

    from data_prep.train_tokenizer import train_huggingface

    texts = [p.read_text() for p in sorted(Path(json_module.__file__).parent.glob("*.py"))]
    out = tmp_path_factory.mktemp("sft-tokenizer") / "tok"
    train_huggingface(texts, 700, 256, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    return tok
