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


@pytest.fixture(scope="session")
def hf_llama_dir(tokenizer, tmp_path_factory):
    """A tiny random Hugging Face Llama (2 x 64, untied head, 128 positions) saved with
    :func:`tokenizer` and its chat template: what ``python -m litespark.sft --hf`` starts from.
    ``generate`` stops at ``<|eot_id|>``, the end of an assistant turn."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("sft-hf") / "llama"
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out
