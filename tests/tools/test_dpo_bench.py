"""``python -m litespark.bench.dpo_vs_trl`` on a CPU-sized model: both stacks train on the same pairs
and pass over all of them for the reference, TRL at each micro-batch asked for, and the report counts
tokens the same way for both (its speeds are the GPU host's business: here only that each run trains
and is counted)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import run_module
from tests.tools.test_sft_bench import TINY

pytestmark = pytest.mark.slow


def test_the_dpo_bench_runs_litespark_and_trl_on_the_same_pairs_and_reports_them(tmp_path):
    out = tmp_path / "r"
    args = ["--out", str(out), "--preset", "tiny", "--layers", "2", "--seq", "128", "--global-batch", "4"]
    args += ["--steps", "6", "--warmup", "2", "--pairs", "60", "--prompt-median", "30", "--response-median", "20"]
    args += ["--trl-micro-batches", "1,2"]
    run_module("litespark.bench.dpo_vs_trl", *args, *[a for s in TINY for a in ("--set", s)], timeout=900)
    report = json.loads(out.with_suffix(".json").read_text())
    results, setup = report["results"], report["setup"]
    assert {k: v["status"] for k, v in results.items()} == {"litespark-dpo": "ok", "trl": "ok"}

    data = setup["data"]
    assert data["pairs"] == 60 and data["sequence"]["max"] <= 128 and data["prompt"]["max"] <= 64
    assert 15 <= data["prompt"]["median"] <= 60 and 10 <= data["response"]["median"] <= 40
    assert data["trained_tokens"] < data["tokens"] and (data["tokens"] - data["trained_tokens"]) % 2 == 0
    # TRL's pairs a step carry about Litespark's 4 rows of 2 x 128 tokens: 1024 / ~124 a pair -> 8.
    assert setup["trl_global_batch"] == 8

    lite, trl = results["litespark-dpo"], results["trl"]
    for x in (lite, trl):
        # The reference pass covers every pair once; real tokens are both sequences of each pair (the
        # prompt twice), trained tokens the two responses.
        assert x["reference"]["pairs"] == 60 and x["reference"]["tokens"] == data["tokens"]
        assert x["reference"]["cached"] is False and x["reference"]["seconds"] > 0
        assert x["steps_timed"] == 4 and 0 < x["trained_tokens"] < x["tokens"]
        assert (x["tokens"] - x["trained_tokens"]) % 2 == 0
        assert x["trained_tokens_per_s"] == pytest.approx(x["trained_tokens"] / x["seconds"])
        assert x["total_tokens_per_s"] < min(x["tokens_per_s"], x["reference"]["tokens_per_s"])
    # Litespark's rows hold whole pairs: at most 4 timed steps x 4 rows x 256 tokens, with little padding.
    assert lite["tokens"] + lite["padding_tokens"] <= 4 * 4 * 256 and lite["pairs"] >= 4 * 4
    assert trl["pairs"] == 4 * 8 and 0.7 < trl["tokens_per_step"] / lite["tokens_per_step"] < 1.4
    assert trl["padding_tokens"] > 0  # TRL 1.16's DPO pads (padding_free is disabled)
    assert set(trl["by_micro_batch"]) == {"1", "2"}
    assert trl["tokens_per_s"] == max(v["tokens_per_s"] for v in trl["by_micro_batch"].values())
    assert trl["reference"]["tokens_per_s"] == pytest.approx(
        max(v["reference_tokens_per_s"] for v in trl["by_micro_batch"].values())
    )

    markdown = out.with_suffix(".md").read_text()
    assert "| litespark-dpo |" in markdown and "| trl |" in markdown and "reference s (pairs)" in markdown
    assert out.with_suffix(".png").is_file()

    # A micro-batch that could not run is named with why, not left out silently.
    from litespark.bench.dpo_vs_trl import to_markdown

    trl["attempts"] = [{"micro_batch": 4, "liger": True, "error": "out of memory"}]
    assert "TRL micro-batches that did not run: 4 (Liger): out of memory." in to_markdown(report)
