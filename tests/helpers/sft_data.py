"""Small SFT and DPO data shared by their tests: a Llama-3-style chat template with generation
markers, conversations, prompt-completion pairs, preference pairs; a JSONL writer, an SFT config and a
tiny Hugging Face Llama."""

from __future__ import annotations

import json

# Llama 3.1's layout (header tokens, <|eot_id|> after each turn), with the {% generation %} markers
# that assistant-only loss needs (Meta's own template has none; TRL needs them too).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if loop.index0 > 0 and message['role'] == messages[loop.index0 - 1]['role'] == 'assistant' %}"
    "{{- raise_exception('roles must alternate') }}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CONVERSATIONS = [
    {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "Seven."},
            {"role": "user", "content": "And an even one?"},
            {"role": "assistant", "content": "Two, the only even prime."},
        ]
    },
    {"messages": [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": " Hello there! "}]},
]

TEXT_PAIRS = [
    {"prompt": "The history of the", "completion": " city began in the old town."},
    {"prompt": "Translate to French: cat", "completion": " chat"},
    {"prompt": "Q: two plus two?\nA:", "completion": " four"},
]

CHAT_PAIRS = [{"prompt": c["messages"][:-1], "completion": c["messages"][-1:]} for c in CONVERSATIONS]

# Preference pairs in TRL's formats: text, conversational, and conversational with the prompt implicit.
TEXT_PREFERENCES = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon."},
    {"prompt": "Two plus two is", "chosen": " four", "rejected": " five, or so I am told"},
]
CHAT_PREFERENCES = [
    {
        "prompt": [{"role": "user", "content": "Name a prime number."}],
        "chosen": [{"role": "assistant", "content": "Seven."}],
        "rejected": [{"role": "assistant", "content": "Nine."}],
    },
    {
        "prompt": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What colour is the sky?"},
        ],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "It depends on many things, mostly green."}],
    },
]
IMPLICIT_PREFERENCES = [
    {"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]} for p in CHAT_PREFERENCES
]


def write_jsonl(path, rows, extra_lines=()):
    """``rows`` as JSON lines, then ``extra_lines`` as they are (bad lines); returns ``path``."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def sft_config(tmp_path, data, tokenizer_dir, *sets: str):
    """The ``tiny`` preset on SFT data ``data`` with ``tokenizer_dir``'s tokenizer, rows of 96 tokens,
    run directory ``tmp_path/run``; then ``sets``."""
    from litespark.config import apply_overrides
    from litespark.config.presets import get_preset

    return apply_overrides(
        get_preset("tiny"),
        [
            "data.source=sft",
            f"sft.data={data}",
            f"sft.tokenizer={tokenizer_dir}",
            f"run.run_dir={tmp_path / 'run'}",
            "model.seq_length=96",
            *sets,
        ],
    )


def tiny_hf_llama(vocab_size: int):
    """A one-layer, 32-wide random Hugging Face Llama (seeded by the caller's ``torch.manual_seed``):
    enough for TRL's trainers to prepare data and compute losses."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)
