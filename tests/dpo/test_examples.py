"""Preference examples -> prompt, chosen and rejected token ids, as TRL's DPOTrainer prepares them."""

from __future__ import annotations

import pytest

from litespark.dpo.examples import PreferenceExampleError, to_preference_ids
from tests.helpers.sft_data import CHAT_PREFERENCES, IMPLICIT_PREFERENCES, TEXT_PREFERENCES, tiny_hf_llama


def _trl_preference_ids(tokenizer, examples, tmp_path) -> list[tuple[list[int], list[int], list[int]]]:
    """What TRL's DPOTrainer trains on: each example's prompt, chosen and rejected ids."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, bf16=False, use_cpu=True)
    trainer = DPOTrainer(
        model=tiny_hf_llama(len(tokenizer)),
        ref_model=tiny_hf_llama(len(tokenizer)),  # else TRL loads one by the (absent) model name
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    return [(list(r["prompt_ids"]), list(r["chosen_ids"]), list(r["rejected_ids"])) for r in trainer.train_dataset]


@pytest.mark.slow
@pytest.mark.parametrize(
    "examples", [TEXT_PREFERENCES, CHAT_PREFERENCES, IMPLICIT_PREFERENCES], ids=["text", "chat", "implicit-prompt"]
)
def test_preference_ids_equal_trl_dpo_trainer(tokenizer, tmp_path, examples):
    ours = [to_preference_ids(example, tokenizer) for example in examples]
    assert ours == _trl_preference_ids(tokenizer, examples, tmp_path)
    for prompt, chosen, rejected in ours:
        assert prompt and chosen and rejected and chosen != rejected


def test_the_responses_follow_the_prompt_and_end_as_generated(tokenizer):
    prompt, chosen, rejected = to_preference_ids(CHAT_PREFERENCES[0], tokenizer)
    assert tokenizer.decode(chosen) == "Seven.<|eot_id|>" and tokenizer.decode(rejected) == "Nine.<|eot_id|>"
    assert tokenizer.decode(prompt).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    _, chosen, _ = to_preference_ids(TEXT_PREFERENCES[0], tokenizer)
    assert tokenizer.decode(chosen).endswith(tokenizer.eos_token)


@pytest.mark.parametrize(
    "example, message",
    [
        ({"prompt": "a", "chosen": "b"}, "needs 'chosen' and 'rejected'.*lacks rejected"),
        ({"prompt": "a", "chosen": " b", "rejected": " b"}, "identical: nothing to prefer"),
        ({"prompt": "a", "chosen": "  ", "rejected": " b"}, "'chosen' is empty"),
        ({**CHAT_PREFERENCES[0], "rejected": [{"role": "assistant", "content": ""}]}, "rejected\\[0\\] is an empty"),
        ({**CHAT_PREFERENCES[0], "chosen": "Seven."}, "must all be text or all be message lists"),
        ({**CHAT_PREFERENCES[0], "prompt": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
        ({"chosen": "x", "rejected": ["y"]}, "both be text or both message lists"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_pair_that_cannot_be_trained_is_one_line(tokenizer, example, message):
    with pytest.raises(PreferenceExampleError, match=message) as info:
        to_preference_ids(example, tokenizer)
    assert "\n" not in str(info.value)
