"""``python -m litespark.bench.sft_vs_trl`` on a CPU-sized model: the three runs it compares, the
TRL micro-batches it measures and keeps the fastest of, and the report it writes (its figures are
the GPU host's business: here only that each run trains and is counted)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import run_module

pytestmark = pytest.mark.slow

TINY = [
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=176",
    "model.vocab_size=1024",
    "data.micro_batch_size=2",
]


def test_the_sft_bench_runs_litespark_and_trl_on_the_same_examples_and_reports_them(tmp_path):
    out = tmp_path / "r"
    args = ["--out", str(out), "--preset", "tiny", "--layers", "2", "--seq", "256", "--global-batch", "4"]
    args += ["--steps", "6", "--warmup", "2", "--examples", "100", "--median", "60", "--trl-micro-batches", "1,2"]
    run_module("litespark.bench.sft_vs_trl", *args, *[a for s in TINY for a in ("--set", s)], timeout=900)
    report = json.loads(out.with_suffix(".json").read_text())
    results = report["results"]
    assert {k: v["status"] for k, v in results.items()} == {
        "litespark-sft": "ok",
        "litespark-pretrain": "ok",
        "trl": "ok",
    }
    data = report["setup"]["data"]
    assert data["examples"] == 100 and 32 <= data["median"] <= 256 and data["max"] <= 256
    # Four timed steps of 4 rows: pretraining computes 4 x 4 x 256 tokens; SFT fewer, all real but padding.
    assert results["litespark-pretrain"]["tokens"] == 4 * 4 * 256
    sft = results["litespark-sft"]
    assert 0 < sft["tokens"] <= 4 * 4 * 256 and sft["trained_tokens"] < sft["tokens"] and sft["padding_tokens"] < 16 * 8
    trl = results["trl"]
    assert set(trl["tokens_per_s_by_micro_batch"]) == {"1", "2"}
    assert trl["tokens_per_s"] == max(trl["tokens_per_s_by_micro_batch"].values())
    markdown = out.with_suffix(".md").read_text()
    assert "| litespark-sft |" in markdown and "Packing overhead" in markdown and out.with_suffix(".png").is_file()
