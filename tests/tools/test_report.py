"""``python -m litespark.report``: figures recomputed independently from metrics.jsonl, energy
arithmetic on recorded counter readings (wrap, reset, a rank without a reading), A/B ratios,
truncated and resumed runs, plots that are real images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from litespark.config.presets import get_preset
from litespark.report.runs import load_run
from litespark.report.summary import compare, loss_at_tokens, summarize
from tests.helpers.processes import ROOT, read_metrics, run_training, train_env

PNG = b"\x89PNG\r\n\x1a\n"


def _report(*args, expect=0):
    proc = subprocess.run(
        [sys.executable, "-m", "litespark.report", *map(str, args)],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------------------------------------
# energy arithmetic


# ---------------------------------------------------------------------------------------------
# summaries of hand-written runs


def _write_run(path, records, world=8, gb=8, seq=4096, extra_lines=""):
    path.mkdir(parents=True)
    cfg = json.loads(json.dumps(__import__("litespark.config", fromlist=["to_dict"]).to_dict(get_preset("llama-3b"))))
    cfg["data"]["global_batch_size"], cfg["model"]["seq_length"] = gb, seq
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "environment.json").write_text(json.dumps({"world_size": world, "gpu": "NVIDIA H200", "torch": "2.11"}))
    lines = [json.dumps(r) for r in records]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra_lines)


def _interval(step, seconds, energy=None, loss=5.0, tokens=10 * 8 * 4096, mfu=0.7, gb=8, seq=4096):
    r = {
        "split": "train",
        "step": step,
        "loss": loss,
        "lr": 1e-4,
        "grad_norm": 1.0,
        "seconds": seconds,
        "data_wait_s": 0.5,
        "tokens": tokens,
        "consumed_samples": step * gb,
        "tokens_per_s_per_gpu": tokens / seconds / 8,
        "mfu": mfu,
    }
    if energy is not None:
        r.update(energy_j=energy, joules_per_token=energy / tokens, power_w_per_gpu=energy / seconds / 8)
    return r


def test_summary_arithmetic(tmp_path):
    recs = [
        {"split": "setup", "step": 0, "seconds": 60.0, "world_size": 8, "energy_j": 36_000.0},
        _interval(10, 100.0, 560_000.0, loss=6.0),
        {"split": "eval", "step": 10, "seconds": 20.0, "energy_j": 72_000.0},
        _interval(20, 100.0, 540_000.0, loss=5.0),
        {"split": "checkpoint", "step": 20, "seconds": 30.0, "energy_j": 18_000.0},
    ]
    _write_run(tmp_path / "r", recs, extra_lines='{"split": "train", "step": 30, "lo')  # killed mid-write
    run = load_run(tmp_path / "r")
    s = summarize(run, grid_gco2_per_kwh=100.0, price_per_gpu_hour=2.5)
    tokens = 20 * 8 * 4096
    assert s["tokens"] == tokens and s["steps"] == 20 and s["skipped_lines"] == 1
    assert s["wall_seconds"] == 60 + 100 + 20 + 100 + 30
    assert s["gpu_hours"] == pytest.approx(310 * 8 / 3600)
    assert s["cost"] == pytest.approx(310 * 8 / 3600 * 2.5)
    assert s["tokens_per_s_per_gpu"] == pytest.approx(tokens / 200 / 8)
    e = s["energy"]
    total_j = 36_000 + 560_000 + 72_000 + 540_000 + 18_000
    assert e["total_kwh"] == pytest.approx(total_j / 3.6e6)
    assert e["train_joules_per_token"] == pytest.approx(1_100_000 / tokens)
    assert e["all_in_joules_per_token"] == pytest.approx(total_j / tokens)
    assert e["kwh_per_billion_tokens"] == pytest.approx(total_j / 3.6e6 / (tokens / 1e9))
    assert e["co2_kg"] == pytest.approx(total_j / 3.6e6 * 100 / 1000)
    assert e["avg_power_w_per_gpu"] == pytest.approx(1_100_000 / 200 / 8)
    assert s["eval_seconds"] == 20 and s["checkpoint_seconds"] == 30 and s["data_wait_seconds"] == 1.0
    assert s["goodput"] == pytest.approx((200 - 1.0) / 310)
    assert s["steady_goodput"] == pytest.approx((200 - 1.0) / (310 - 60))


def test_the_final_save_counts_in_the_wall_time_and_apart_from_the_steady_state(tmp_path):
    recs = [
        {"split": "setup", "step": 0, "seconds": 40.0, "world_size": 8},
        _interval(10, 100.0),
        {"split": "checkpoint", "step": 10, "seconds": 1.0},  # the copy of an asynchronous save
        _interval(20, 100.0),
        {"split": "checkpoint", "step": 20, "seconds": 0.5, "final": True},
        {"split": "checkpoint", "step": 20, "seconds": 30.0, "final": True},  # waiting for the last write
    ]
    _write_run(tmp_path / "r", recs)
    s = summarize(load_run(tmp_path / "r"))
    assert s["wall_seconds"] == 40 + 200 + 1 + 0.5 + 30
    assert s["checkpoint_seconds"] == 1.0 and s["final_checkpoint_seconds"] == 30.5
    assert s["goodput"] == pytest.approx(199 / 271.5)
    assert s["steady_goodput"] == pytest.approx(199 / 201)  # start-up and the final save are once per job


def test_the_first_step_of_each_start_counts_as_start_up(tmp_path):
    warm = {**_interval(1, 25.0, 90_000.0), "warmup": True, "mfu": 0.1}
    recs = [
        {"split": "setup", "step": 0, "seconds": 40.0, "world_size": 8, "energy_j": 10_000.0},
        warm,
        _interval(10, 100.0, 500_000.0),
        _interval(20, 100.0, 500_000.0),
    ]
    _write_run(tmp_path / "r", recs)
    s = summarize(load_run(tmp_path / "r"))
    assert s["setup_seconds"] == 40 + 25 and s["train_seconds"] == 200
    assert s["wall_seconds"] == 265 and s["steps"] == 20
    assert s["tokens_per_s_per_gpu"] == pytest.approx(2 * 10 * 8 * 4096 / 200 / 8)  # the warm-up's rate is not in it
    assert s["data_wait_seconds"] == 1.0 and s["mfu"] == pytest.approx(0.7)
    assert s["goodput"] == pytest.approx(199 / 265) and s["steady_goodput"] == pytest.approx(199 / 200)
    assert s["energy"]["setup_kwh"] == pytest.approx(100_000 / 3.6e6)
    assert s["energy"]["train_joules_per_token"] == pytest.approx(1_000_000 / (2 * 10 * 8 * 4096))


def test_partial_energy_and_resumed_runs(tmp_path):
    recs = [
        _interval(10, 100.0, 500_000.0),
        _interval(20, 100.0, None),
        _interval(30, 100.0, 500_000.0),
        {"split": "setup", "step": 20, "seconds": 50.0, "world_size": 8},  # resumed from step 20
        _interval(30, 90.0, 450_000.0),
    ]
    _write_run(tmp_path / "r", recs)
    run = load_run(tmp_path / "r")
    assert [r["step"] for r in run.train] == [10, 20, 30] and len(run.redone) == 1
    s = summarize(run)
    assert s["redone_seconds"] == 100.0 and s["energy_intervals_measured"] == 2 and s["energy_intervals"] == 3
    assert s["goodput"] == pytest.approx((290 - 3 * 0.5) / (290 + 50 + 100))  # the redone interval is lost time
    assert s["energy"]["train_joules_per_token"] == pytest.approx(950_000 / (2 * 10 * 8 * 4096))
    assert s["energy"]["redone_kwh"] == pytest.approx(500_000 / 3.6e6)


@pytest.mark.slow
def test_compare_ratios(tmp_path):
    _write_run(tmp_path / "a", [_interval(10, 100.0, 700_000.0, loss=6.0), _interval(20, 100.0, 700_000.0, loss=5.0)])
    _write_run(
        tmp_path / "b",
        [
            _interval(10, 50.0, 300_000.0, loss=6.2),
            _interval(20, 50.0, 300_000.0, loss=5.2),
            _interval(30, 50.0, 300_000.0, loss=4.8),
        ],
    )
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    c = compare(a, b)
    assert c["throughput_ratio"] == pytest.approx(2.0)
    assert c["energy_saving_percent"] == pytest.approx(100 * (1 - 300 / 700))
    assert c["equal_tokens"] == 20 * 8 * 4096
    assert c["loss_at_equal_tokens"] == {"a": 5.0, "b": 5.2}
    assert loss_at_tokens(b, 15 * 8 * 4096) == pytest.approx(5.7)
    _report("--compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| 2.00x |" in md and "57.1%" in md
    for name in ("loss", "throughput", "energy", "optimizer"):
        assert (tmp_path / "cmp" / f"compare_{name}.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path):
    proc = _report(tmp_path, expect=2)
    assert "no metrics.jsonl" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _report(expect=2)
    assert "give either RUN_DIR or --compare" in proc.stderr


# ---------------------------------------------------------------------------------------------
# a real CPU run


@pytest.mark.slow
def test_report_of_a_cpu_training_run(tmp_path):
    run_dir = tmp_path / "run"
    run_training(
        run_dir,
        "run.train_iters=12",
        "run.log_interval=4",
        "run.eval_interval=6",
        "run.eval_iters=2",
        "checkpoint.save_interval=6",
        "data.split=90,10,0",
        nproc=2,
    )
    proc = _report(run_dir, "--price-per-gpu-hour", "3")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = read_metrics(run_dir)
    kinds = {r["split"] for r in records}
    assert {"setup", "train", "valid", "eval", "checkpoint"} <= kinds
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    tokens = 12 * cfg["data"]["global_batch_size"] * cfg["model"]["seq_length"]
    wall = sum(r["seconds"] for r in records if "seconds" in r)
    steady = [r for r in train if not r.get("warmup")]  # the first step counts as start-up
    assert [r["step"] for r in train if r.get("warmup")] == [1]
    tok_s = sum(r["tokens"] for r in steady) / sum(r["seconds"] for r in steady) / 2
    md = (run_dir / "report.md").read_text()
    assert f"| tokens trained | {tokens:,} (" in md
    assert f"| GPU-hours | {wall * 2 / 3600:.3f} |" in md
    assert f"| tokens/s per GPU (training intervals) | {tok_s:,.0f} |" in md
    assert f"| final training loss | {train[-1]['loss']:.4f} |" in md
    assert "No energy figures" in md and md.strip() in proc.stdout
    for name in ("loss", "throughput", "energy", "optimizer"):
        png = (run_dir / f"report_{name}.png").read_bytes()
        assert png[:8] == PNG and len(png) > 10_000
