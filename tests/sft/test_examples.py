"""SFT examples -> tokens and loss masks: the same as TRL's SFTTrainer computes, token for token, on
the same tokenizer, chat template and data; and one-line errors for examples that cannot be trained."""

from __future__ import annotations

import json

import pytest

from litespark.sft.examples import SFTExampleError, to_tokens_and_mask
from tests.helpers.sft_data import CHAT_PAIRS, CHAT_TEMPLATE, CONVERSATIONS, TEXT_PAIRS, tiny_hf_llama


def _trl_tokens_and_masks(tokenizer, examples, tmp_path, **options) -> list[tuple[list[int], list[int]]]:
    """What TRL's SFTTrainer trains on: each example's input_ids and which of them its labels keep."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = tiny_hf_llama(len(tokenizer))
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        packing=False,
        max_length=None,
        bf16=False,
        use_cpu=True,
        **options,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)
    return [(list(row["input_ids"]), [int(label != -100) for label in row["labels"]]) for row in trainer.train_dataset]


@pytest.mark.slow
@pytest.mark.parametrize(
    "examples, options",
    [
        (CONVERSATIONS, {"assistant_only_loss": True}),
        (CONVERSATIONS, {"assistant_only_loss": False}),
        (TEXT_PAIRS, {"completion_only_loss": True}),
        (CHAT_PAIRS, {"completion_only_loss": True}),
        (CHAT_PAIRS, {"completion_only_loss": False}),
        (CHAT_PAIRS, {"completion_only_loss": True, "assistant_only_loss": True}),
    ],
    ids=[
        "chat-assistant-only",
        "chat-all-tokens",
        "text-completion",
        "chat-completion",
        "chat-pair-all-tokens",
        "chat-completion-assistant-only",
    ],
)
def test_tokens_and_loss_masks_equal_trl_sft_trainer(tokenizer, tmp_path, examples, options):
    theirs = _trl_tokens_and_masks(tokenizer, examples, tmp_path, **options)
    ours = [
        to_tokens_and_mask(
            example,
            tokenizer,
            assistant_only_loss=options.get("assistant_only_loss", False),
            completion_only_loss=options.get("completion_only_loss", True),
        )
        for example in examples
    ]
    assert ours == theirs
    for ids, mask in ours:  # neither all nor nothing is trained, except when asked for everything
        assert 0 < sum(mask) <= len(ids)
        assert sum(mask) < len(ids) or not (options.get("assistant_only_loss") or options.get("completion_only_loss"))


def test_assistant_tokens_are_the_replies_and_their_end_of_turn(tokenizer):
    ids, mask = to_tokens_and_mask(CONVERSATIONS[1], tokenizer)
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "Seven.<|eot_id|>Two, the only even prime.<|eot_id|>"
    text_ids, text_mask = to_tokens_and_mask(TEXT_PAIRS[1], tokenizer)
    assert tokenizer.decode([t for t, m in zip(text_ids, text_mask) if m]) == " chat<|end_of_text|>"


@pytest.mark.parametrize(
    "example, message",
    [
        ([1, 2], "an example must be a JSON object, got list"),
        ({"text": "hi"}, "an example needs 'messages' or 'prompt' and 'completion'; it has ['text']"),
        ({"messages": []}, "'messages' must be a non-empty list of messages"),
        ({"messages": [{"role": "user"}]}, "messages[0] must be an object with a string 'role' and a string 'content'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0] has the unknown role 'robot'"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]},
            "messages[1] is an empty assistant turn",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "the conversation has no assistant turn"),
        ({"prompt": "a", "completion": ""}, "the completion is empty"),
        ({"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}, "must both be text or both be"),
        ({**CONVERSATIONS[0], "tools": "{not json"}, "'tools' is text but not JSON"),
        ({**CONVERSATIONS[0], "chat_template_kwargs": [1]}, "'chat_template_kwargs' must be an object"),
        (
            {"messages": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]},
            "the chat template refused the example: roles must alternate",
        ),
    ],
)
def test_an_example_that_cannot_be_trained_is_one_line(tokenizer, example, message):
    with pytest.raises(SFTExampleError) as error:
        to_tokens_and_mask(example, tokenizer)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_tokenizer_without_chat_template_or_generation_markers_is_one_line(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(SFTExampleError, match="the tokenizer has no chat template"):
        to_tokens_and_mask(CONVERSATIONS[0], bare)
    assert to_tokens_and_mask(TEXT_PAIRS[0], bare)[0]  # text pairs need none
    unmarked = copy.deepcopy(tokenizer)
    unmarked.chat_template = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(SFTExampleError, match=r"marks no assistant tokens: it needs \{% generation %\}"):
        to_tokens_and_mask(CONVERSATIONS[0], unmarked)
    ids, mask = to_tokens_and_mask(CONVERSATIONS[0], unmarked, assistant_only_loss=False)
    assert mask == [1] * len(ids)
    json.dumps(ids)  # plain ints


def test_tokenised_examples_train_where_their_masks_say_without_a_tokenizer():
    example = {"input_ids": [5, 6, 7, 8], "completion_mask": [0, 0, 1, 1], "assistant_masks": [0, 1, 1, 0]}
    assert to_tokens_and_mask(example, None) == ([5, 6, 7, 8], [0, 0, 1, 0])
    assert to_tokens_and_mask(example, None, assistant_only_loss=False) == ([5, 6, 7, 8], [0, 0, 1, 1])
    assert to_tokens_and_mask(example, None, assistant_only_loss=False, completion_only_loss=False)[1] == [1] * 4
    assert to_tokens_and_mask({"input_ids": [1, 2]}, None) == ([1, 2], [1, 1])
    for bad, message in [
        ({"input_ids": []}, "non-empty list of non-negative integers"),
        ({"input_ids": [1, -2]}, "non-empty list of non-negative integers"),
        ({"input_ids": [1, 2], "completion_mask": [1]}, "'completion_mask' must be a list of 0 and 1 as long"),
        ({"messages": CONVERSATIONS[0]["messages"]}, "need a tokenizer"),
    ]:
        with pytest.raises(SFTExampleError, match=message):
            to_tokens_and_mask(bad, None)
