"""One preference example -> the token ids of its prompt, chosen and rejected responses.

The formats and the tokens are TRL's ``DPOTrainer``'s (``tests/dpo/test_examples.py`` compares them
with TRL 1.16's own preparation, token for token), so that a preference set and a chat template that
work there work here:

- ``{"prompt", "chosen", "rejected"}``, all three text (the tokenizer's EOS is appended to each
  response that lacks it) or all three message lists (rendered by the chat template: the prompt with
  the generation prompt, then the prompt followed by each response);
- ``{"chosen", "rejected"}`` only: the prompt is what the two have in common at the start (TRL's
  ``extract_prompt``: the shared leading turns, or the shared leading characters of text);
- ``{"prompt_ids", "chosen_ids", "rejected_ids"}``: token ids already (TRL's tokenised columns),
  taken as they are.

The responses start where the tokenised prompt and the tokenised prompt + response part (usually the
end of the prompt; a template or a merge across the boundary can move it earlier).  An example's
``tools`` and ``chat_template_kwargs`` go to the chat template.  Anything that cannot be trained on
(missing fields, an empty response, a chosen response identical to the rejected one, malformed
messages, a template that refuses the example) is a :class:`PreferenceExampleError` with one line.
"""

from __future__ import annotations

from typing import Any

from litespark.sft.examples import SFTExampleError, check_messages, render, template_kwargs


class PreferenceExampleError(ValueError):
    """A preference example that cannot be trained on; the message is one line."""


def to_preference_ids(example: dict[str, Any], tokenizer) -> tuple[list[int], list[int], list[int]]:
    """``(prompt ids, chosen ids, rejected ids)`` of ``example`` under ``tokenizer`` (a
    ``transformers`` tokenizer); each response's ids follow the prompt's."""
    if not isinstance(example, dict):
        raise PreferenceExampleError(f"an example must be a JSON object, got {type(example).__name__}")
    if any(k in example for k in TOKENISED):
        return _tokenised(example)
    if tokenizer is None:
        raise PreferenceExampleError(
            "text and conversational pairs need a tokenizer (--hf or --tokenizer); without one, give "
            f"{', '.join(TOKENISED)}"
        )
    missing = [k for k in ("chosen", "rejected") if k not in example]
    if missing:
        raise PreferenceExampleError(
            f"a preference example needs 'chosen' and 'rejected' (and usually 'prompt'); it lacks {', '.join(missing)}"
        )
    if "prompt" not in example:
        example = dict(example, **extract_prompt(example["chosen"], example["rejected"]))
    prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
    try:
        if isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list):
            return _conversational(prompt, chosen, rejected, tokenizer, template_kwargs(example))
        if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
            return _text(prompt, chosen, rejected, tokenizer)
    except SFTExampleError as exc:
        raise PreferenceExampleError(str(exc)) from None
    raise PreferenceExampleError(
        "'prompt', 'chosen' and 'rejected' must all be text or all be message lists, got "
        f"{type(prompt).__name__}, {type(chosen).__name__} and {type(rejected).__name__}"
    )


TOKENISED = ("prompt_ids", "chosen_ids", "rejected_ids")


def _tokenised(example: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    missing = [k for k in TOKENISED if k not in example]
    if missing:
        raise PreferenceExampleError(f"a tokenised pair needs {', '.join(TOKENISED)}; it lacks {', '.join(missing)}")
    ids = []
    for key in TOKENISED:
        value = example[key]
        if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise PreferenceExampleError(f"'{key}' must be a list of integer token ids")
        if any(t < 0 for t in value):
            raise PreferenceExampleError(f"'{key}' has a negative token id")
        ids.append(value)
    prompt, chosen, rejected = ids
    for name, response in (("chosen_ids", chosen), ("rejected_ids", rejected)):
        if not response:
            raise PreferenceExampleError(f"'{name}' is empty")
    if chosen == rejected:
        raise PreferenceExampleError("'chosen_ids' and 'rejected_ids' are identical: nothing to prefer")
    return prompt, chosen, rejected


def extract_prompt(chosen: Any, rejected: Any) -> dict[str, Any]:
    """The prompt implicit in a pair without one: the leading turns (or characters) ``chosen`` and
    ``rejected`` share, a space before the first difference left to the responses, as TRL's
    ``extract_prompt``."""
    if not (isinstance(chosen, (list, str)) and type(chosen) is type(rejected)):
        raise PreferenceExampleError(
            "without 'prompt', 'chosen' and 'rejected' must both be text or both message lists"
        )
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return {"prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}


def _conversational(prompt: list, chosen: list, rejected: list, tokenizer, template: dict):
    check_messages(prompt, "prompt")
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        check_messages(response, name)
    if chosen == rejected:
        raise PreferenceExampleError("'chosen' and 'rejected' are identical: nothing to prefer")
    prompt_ids = list(render(tokenizer, prompt, add_generation_prompt=True, **template)["input_ids"])
    with_chosen = list(render(tokenizer, prompt + chosen, **template)["input_ids"])
    with_rejected = list(render(tokenizer, prompt + rejected, **template)["input_ids"])
    return _split(prompt_ids, with_chosen, with_rejected)


def _text(prompt: str, chosen: str, rejected: str, tokenizer):
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response.strip():
            raise PreferenceExampleError(f"'{name}' is empty")
    if chosen == rejected:
        raise PreferenceExampleError("'chosen' and 'rejected' are identical: nothing to prefer")
    eos = tokenizer.eos_token
    if eos is None:
        raise PreferenceExampleError("the tokenizer has no EOS token to end the responses with")
    chosen = chosen if chosen.endswith(eos) else chosen + eos
    rejected = rejected if rejected.endswith(eos) else rejected + eos
    prompt_ids = list(tokenizer(text=prompt)["input_ids"])
    with_chosen = list(tokenizer(text=prompt + chosen)["input_ids"])
    with_rejected = list(tokenizer(text=prompt + rejected)["input_ids"])
    return _split(prompt_ids, with_chosen, with_rejected)


def _split(prompt_ids: list[int], with_chosen: list[int], with_rejected: list[int]):
    start = min(_common_prefix(prompt_ids, with_chosen), _common_prefix(prompt_ids, with_rejected))
    chosen, rejected = with_chosen[start:], with_rejected[start:]
    if not chosen or not rejected:
        raise PreferenceExampleError("a response has no tokens after the prompt")
    return prompt_ids[:start], chosen, rejected


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
