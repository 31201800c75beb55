"""One SFT example -> token ids and the mask of the tokens the loss is computed on.

The formats are the ones TRL's ``SFTTrainer`` accepts, and the tokens and masks are the ones it
computes (``tests/sft/test_examples.py`` compares them token for token), so a dataset and a chat
template that work there work here:

- tokenised, ``{"input_ids": [...]}`` with optional ``completion_mask`` / ``assistant_masks`` (0/1
  per token), as TRL's own tokenisation writes them: no tokenizer needed;
- conversational, ``{"messages": [{"role", "content"}, ...]}``: rendered by the tokenizer's chat
  template; with ``assistant_only_loss`` the loss covers the tokens the template marks as generated
  (``{% generation %}`` ... ``{% endgeneration %}``), i.e. the assistant turns;
- prompt-completion, ``{"prompt", "completion"}``, both text or both message lists: the loss covers
  the completion (``completion_only_loss``).  Text gets the tokenizer's EOS after the completion;
  messages are rendered by the chat template, the prompt with the generation prompt, and with
  ``assistant_only_loss`` a token is trained on only when the template also marks it generated.

An example's ``tools`` (a list, or JSON text) and ``chat_template_kwargs`` go to the chat template,
as in TRL.

Anything else is an :class:`SFTExampleError` with one line that says what is wrong with the example.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class SFTExampleError(ValueError):
    """An example that cannot be trained on; the message is one line."""


def to_tokens_and_mask(
    example: dict[str, Any], tokenizer, *, assistant_only_loss: bool = True, completion_only_loss: bool = True
) -> tuple[list[int], list[int]]:
    """``(token ids, loss mask)`` of ``example`` under ``tokenizer`` (a ``transformers`` tokenizer):
    ``mask[j]`` is 1 when token ``j`` is a target of the loss."""
    if not isinstance(example, dict):
        raise SFTExampleError(f"an example must be a JSON object, got {type(example).__name__}")
    if "input_ids" in example:  # already tokenised, as TRL takes it
        return _pretokenized(example, assistant_only_loss, completion_only_loss)
    if tokenizer is None:
        raise SFTExampleError("text and messages need a tokenizer (sft.tokenizer); only 'input_ids' examples do not")
    if "prompt" in example and "completion" in example:  # TRL looks for a prompt first
        template = template_kwargs(example)
        return _prompt_completion(
            example["prompt"], example["completion"], tokenizer, template, assistant_only_loss, completion_only_loss
        )
    if "messages" in example:
        return _conversation(example["messages"], tokenizer, template_kwargs(example), assistant_only_loss)
    raise SFTExampleError(
        f"an example needs 'messages' or 'prompt' and 'completion'; it has {sorted(example) or 'no fields'}"
    )


def _pretokenized(example: dict, assistant_only_loss: bool, completion_only_loss: bool) -> tuple[list[int], list[int]]:
    """An example given as token ids: trained on every token, except where its ``completion_mask``
    (with ``completion_only_loss``) or ``assistant_masks`` (with ``assistant_only_loss``) says 0, the
    columns TRL's tokenisation writes and its collator reads."""
    ids = example["input_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
        raise SFTExampleError("'input_ids' must be a non-empty list of non-negative integers")
    mask = [1] * len(ids)
    for name, used in (("completion_mask", completion_only_loss), ("assistant_masks", assistant_only_loss)):
        given = example.get(name)
        if given is None or not used:
            continue
        if not isinstance(given, list) or len(given) != len(ids) or not all(m in (0, 1) for m in given):
            raise SFTExampleError(f"'{name}' must be a list of 0 and 1 as long as 'input_ids' ({len(ids)})")
        mask = [a & b for a, b in zip(mask, given)]
    return ids, mask


def template_kwargs(example: dict) -> dict:
    """The chat template's extra arguments an example carries, as TRL passes them."""
    tools = example.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except (ValueError, RecursionError):
            raise SFTExampleError("'tools' is text but not JSON") from None
    extra = example.get("chat_template_kwargs") or {}
    if not isinstance(extra, dict):
        raise SFTExampleError("'chat_template_kwargs' must be an object")
    return {"tools": tools, **extra}


def _conversation(messages: Any, tokenizer, template: dict, assistant_only_loss: bool) -> tuple[list[int], list[int]]:
    check_messages(messages, "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise SFTExampleError("the conversation has no assistant turn: nothing to train on")
    rendered = render(tokenizer, messages, return_assistant_tokens_mask=assistant_only_loss, **template)
    ids = list(rendered["input_ids"])
    if not assistant_only_loss:
        return ids, [1] * len(ids)
    return ids, _assistant_mask(rendered)


def _assistant_mask(rendered: dict) -> list[int]:
    mask = list(rendered["assistant_masks"])
    if 1 not in mask:
        raise SFTExampleError(
            "the chat template marks no assistant tokens: it needs {% generation %} ... {% endgeneration %} "
            "around the assistant turns (or train on every token: assistant_only_loss=false)"
        )
    return mask


def _prompt_completion(
    prompt: Any, completion: Any, tokenizer, template: dict, assistant_only_loss: bool, completion_only_loss: bool
) -> tuple[list[int], list[int]]:
    assistant: list[int] | None = None
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise SFTExampleError("the completion is empty")
        eos = tokenizer.eos_token
        if eos is None:
            raise SFTExampleError("the tokenizer has no EOS token to end the completion with")
        if not completion.endswith(eos):
            completion += eos
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        ids = list(tokenizer(text=prompt + completion)["input_ids"])
    elif isinstance(prompt, list) and isinstance(completion, list):
        check_messages(prompt, "prompt")
        check_messages(completion, "completion")
        prompt_ids = list(render(tokenizer, prompt, add_generation_prompt=True, **template)["input_ids"])
        rendered = render(tokenizer, prompt + completion, return_assistant_tokens_mask=assistant_only_loss, **template)
        ids = list(rendered["input_ids"])
        if assistant_only_loss:
            assistant = _assistant_mask(rendered)
    else:
        raise SFTExampleError(
            f"'prompt' and 'completion' must both be text or both be message lists, got "
            f"{type(prompt).__name__} and {type(completion).__name__}"
        )
    # Where the two renderings part: usually the end of the prompt (a template or a merge across the
    # boundary can change the prompt's last tokens; those then belong to the completion).
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    mask = [0] * start + [1] * (len(ids) - start) if completion_only_loss else [1] * len(ids)
    if assistant is not None:  # trained only where every mask says so, as TRL's labels
        mask = [a & b for a, b in zip(mask, assistant)]
    return ids, mask


def check_messages(messages: Any, field: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise SFTExampleError(f"'{field}' must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise SFTExampleError(f"{field}[{i}] must be an object with a string 'role' and a string 'content'")
        if m["role"] not in ROLES:
            raise SFTExampleError(f"{field}[{i}] has the unknown role {m['role']!r} (known: {', '.join(ROLES)})")
        if m["role"] == "assistant" and not m["content"].strip():
            raise SFTExampleError(f"{field}[{i}] is an empty assistant turn")


def render(tokenizer, messages: list, **kwargs) -> dict:
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise SFTExampleError("the tokenizer has no chat template: conversational data needs one")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    except (TemplateError, ValueError, TypeError) as exc:  # the template's raise_exception, bad arguments
        raise SFTExampleError(f"the chat template refused the example: {str(exc).splitlines()[0][:200]}") from None
