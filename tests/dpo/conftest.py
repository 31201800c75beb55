"""The DPO tests share the SFT tests' tokenizer (a Llama-3-style BPE with a chat template)."""

from tests.sft.conftest import tokenizer  # noqa: F401 - a fixture, found by name
