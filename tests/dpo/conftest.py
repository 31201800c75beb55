"""The DPO tests share the SFT tests' tokenizer (a Llama-3-style BPE with a chat template) and tiny
Hugging Face Llama."""

from tests.sft.conftest import hf_llama_dir, tokenizer  # noqa: F401 - fixtures, found by name
