"""What an SFT run prepares once in its run directory, and what it refuses to reuse: the tokenised
examples (``sft_data``) and the converted Hugging Face weights (``hf_init``); and rank 0's work
reaching every rank as one line whatever it raised."""

from __future__ import annotations

import json
import shutil

import pytest

from litespark.config import ConfigError
from tests.helpers.sft_data import CONVERSATIONS, sft_config


def _cfg(tmp_path, tok_dir, *sets):
    data = tmp_path / "chat.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS * 3))
    return sft_config(tmp_path, data, tok_dir, "model.vocab_size=1024", *sets)


def test_prepared_examples_are_reused_only_for_the_same_data_split_and_settings(tokenizer, tmp_path):
    from litespark.sft.prepare import _ensure_cache, read_corpus

    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    cache = tmp_path / "run" / "sft_data"
    cfg = _cfg(tmp_path, tok_dir, "sft.valid_fraction=0.25")
    _ensure_cache(cfg, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["lines"], manifest["examples"], len(read_corpus(cache))) == (9, 9, 9)
    assert not list(cache.parent.glob("sft_data.*"))  # the temporary name is gone
    _ensure_cache(_cfg(tmp_path, tok_dir, "sft.valid_fraction=0.25"), cache)  # the same: reused
    for sets, changed in [
        (["sft.valid_fraction=0.5"], "split"),
        (["sft.valid_fraction=0.25", "run.seed=7"], "split"),
        (["sft.valid_fraction=0.25", "sft.assistant_only_loss=false"], "assistant_only_loss"),
        (["sft.valid_fraction=0.25", "model.seq_length=64"], "seq_length"),
    ]:
        with pytest.raises(ConfigError, match=f"was prepared from other {changed} than this run's"):
            _ensure_cache(_cfg(tmp_path, tok_dir, *sets), cache)
    (tmp_path / "chat.jsonl").write_text(json.dumps(CONVERSATIONS[0]) + "\n")
    with pytest.raises(ConfigError, match="prepared from other data than"):
        _ensure_cache(_cfg(tmp_path, tok_dir, "sft.valid_fraction=0.25"), cache)


def test_a_converted_model_is_reused_only_for_the_same_model_and_tp_size(hf_llama_dir, tmp_path):
    from litespark.sft.hf_init import SOURCE, _ensure_converted

    out = tmp_path / "run" / "hf_init"
    cfg = _cfg(tmp_path, hf_llama_dir, f"sft.hf_model={hf_llama_dir}", "model.vocab_size=956")
    _ensure_converted(cfg, out)
    assert (out / SOURCE).is_file() and (out / "checkpoints").is_dir()
    _ensure_converted(cfg, out)  # the same model: kept
    other = tmp_path / "other-llama"
    shutil.copytree(hf_llama_dir, other)
    with pytest.raises(ConfigError, match="a run keeps its starting point"):
        _ensure_converted(_cfg(tmp_path, other, f"sft.hf_model={other}", "model.vocab_size=956"), out)
    (out / SOURCE).unlink()  # a conversion killed before its record is redone
    _ensure_converted(_cfg(tmp_path, other, f"sft.hf_model={other}", "model.vocab_size=956"), out)
    assert json.loads((out / SOURCE).read_text())["hf_model"] == str(other.resolve())


def test_rank0_work_reaches_every_rank_as_one_line_whatever_it_raised(dist_world_1):
    from litespark.runtime.distributed import init_distributed, run_on_rank0

    init_distributed(1, 1234)

    def disk_full():
        raise OSError(28, "No space left on device")

    def refused():
        raise ConfigError("sft.data: nothing to train on")

    assert run_on_rank0(lambda: None, "nothing") is None
    assert run_on_rank0(disk_full, "writing X") == "writing X failed: OSError: [Errno 28] No space left on device"
    assert run_on_rank0(refused, "preparing") == "sft.data: nothing to train on"
