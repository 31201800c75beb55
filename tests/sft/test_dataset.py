"""An SFT data file: every line counted (examples, bad lines with reasons, too long truncated or
dropped), nothing to train on is one line, and the packed rows hold every example once."""

from __future__ import annotations

import json

import pytest
import zstandard

from litespark.sft.dataset import (
    SFTDataError,
    SFTOptions,
    pack_rows,
    packing_efficiency,
    read_sft_dataset,
    read_sft_file,
)
from tests.helpers.sft_data import CONVERSATIONS, TEXT_PAIRS


def _write(path, lines):
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if path.name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(data.encode()))
    else:
        path.write_text(data)
    return path


@pytest.mark.parametrize("name", ["chat.jsonl", "chat.jsonl.zst"])
def test_every_line_is_an_example_or_a_counted_bad_line(tokenizer, tmp_path, name):
    lines = [
        *CONVERSATIONS,
        "{not json",
        {"messages": [{"role": "robot", "content": "beep"}]},
        "",
        *TEXT_PAIRS,
        {"prompt": "x", "completion": ""},
    ]
    data = read_sft_file(_write(tmp_path / name, lines), tokenizer, SFTOptions(256))
    c = data.counts
    assert (c.lines, c.examples, sum(c.bad.values())) == (9, 6, 3)
    assert c.bad["invalid JSON"] == 1 and c.bad["the completion is empty"] == 1
    assert c.first_bad[0] == "line 4: invalid JSON" and c.first_bad[2] == "line 10: the completion is empty"
    assert c.tokens == sum(map(len, data.tokens)) and c.target_tokens == sum(sum(m[1:]) for m in data.masks)
    assert "6 examples from 9 lines" in c.summary() and "3 bad lines" in c.summary()


def test_too_long_examples_are_truncated_or_dropped_and_counted(tokenizer, tmp_path):
    long = {"prompt": "Tell a story.", "completion": " once upon a time" * 40}
    path = _write(tmp_path / "d.jsonl", [long, *TEXT_PAIRS])
    kept = read_sft_file(path, tokenizer, SFTOptions(32))
    assert kept.counts.truncated == 1 and kept.counts.examples == 4 and max(map(len, kept.tokens)) == 32
    dropped = read_sft_file(path, tokenizer, SFTOptions(32, too_long="drop"))
    assert dropped.counts.dropped_too_long == 1 and dropped.counts.examples == 3
    # A prompt longer than the row leaves no trained token after truncation: dropped, not trained on the prompt.
    prompt_only = _write(tmp_path / "p.jsonl", [{"prompt": "word " * 80, "completion": " end"}, TEXT_PAIRS[0]])
    assert read_sft_file(prompt_only, tokenizer, SFTOptions(32)).counts.dropped_too_long == 1


def test_a_file_with_nothing_to_train_on_is_one_line(tokenizer, tmp_path):
    with pytest.raises(SFTDataError, match=r"nothing to train on \(line 1: invalid JSON; line 2: the conversation"):
        read_sft_file(
            _write(tmp_path / "bad.jsonl", ["{", {"messages": [{"role": "user", "content": "hi"}]}]),
            tokenizer,
            SFTOptions(64),
        )
    with pytest.raises(SFTDataError, match="no such file"):
        read_sft_file(tmp_path / "missing.jsonl", tokenizer, SFTOptions(64))
    with pytest.raises(SFTDataError, match="expected a .jsonl"):
        read_sft_file(_write(tmp_path / "d.csv", ["a"]), tokenizer, SFTOptions(64))
    with pytest.raises(SFTDataError, match="too_long must be one of truncate, drop"):
        read_sft_file(tmp_path / "bad.jsonl", tokenizer, SFTOptions(64, too_long="cut"))


def test_packed_rows_hold_every_example_once_within_the_row(tokenizer, tmp_path):
    lines = [*CONVERSATIONS, *TEXT_PAIRS] * 7
    data = read_sft_file(_write(tmp_path / "d.jsonl", lines), tokenizer, SFTOptions(128))
    rows = pack_rows(data, 128, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(len(lines)))
    assert all(sum(len(data.tokens[i]) for i in row) <= 128 for row in rows)
    assert pack_rows(data, 128, seed=1) == rows and pack_rows(data, 128, seed=2) != rows
    assert 0.5 < packing_efficiency(data, rows, 128) <= 1.0


def test_a_hugging_face_dataset_is_read_as_a_file_is(tokenizer, tmp_path):
    """``datasets.load_dataset`` on a local directory (a hub name takes the same path, with network)."""
    lines = [*CONVERSATIONS, {"messages": [{"role": "robot", "content": "x"}]}]
    (tmp_path / "ds").mkdir()
    _write(tmp_path / "ds" / "train.jsonl", lines)
    from_file = read_sft_file(tmp_path / "ds" / "train.jsonl", tokenizer, SFTOptions(256))
    from_dataset = read_sft_dataset(str(tmp_path / "ds"), "train", tokenizer, SFTOptions(256))
    assert from_dataset.tokens == from_file.tokens and from_dataset.masks == from_file.masks
    assert from_dataset.counts.first_bad == [
        "row 3: messages[0] has the unknown role 'robot' (known: system, user, assistant, tool)"
    ]
    with pytest.raises(SFTDataError, match=r"SFT data .*ds \(validation\): "):
        read_sft_dataset(str(tmp_path / "ds"), "validation", tokenizer, SFTOptions(256))
