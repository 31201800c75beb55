"""``run.profile_start`` / ``run.profile_steps``: a real run's steps recorded with the PyTorch profiler,
summed into a report (kernel families, idle GPU, CUDA runtime calls) and a trace."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest
import torch

from litespark.config import ConfigError, apply_overrides, validate
from litespark.config.presets import get_preset
from litespark.training.profiling import summarize, to_markdown
from tests.helpers.processes import run_training

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def _event(key: str, device, start_us: float, end_us: float):
    class Range:
        def __init__(self):
            self.start, self.end = start_us, end_us

        def elapsed_us(self):
            return self.end - self.start

    return SimpleNamespace(key=key, device_type=device, time_range=Range())


def test_summarize_sums_kernels_idle_time_and_runtime_calls_per_step():
    events = [
        _event("sm90_xmma_gemm_bf16", CUDA, 0, 600),
        _event("fmha_cudnn_fwd", CUDA, 100, 300),  # on another stream, inside the GEMM's span
        _event("multi_tensor_apply_kernel<adam>", CUDA, 1000, 1400),  # 400 us idle before it
        _event("cudaStreamSynchronize", CPU, 600, 1000),
        _event("cudaStreamSynchronize", CPU, 1400, 1500),
        _event("cudaLaunchKernel", CPU, 0, 10),
        _event("cudaGetDeviceCount", CPU, 0, 50),  # device queries are not waits
        _event("aten::mm", CPU, 0, 900),  # ops are not runtime calls
    ]
    r = summarize(events, steps=2, wall_s=0.004, tokens=8000)
    assert r["step_wall_ms"] == pytest.approx(2.0) and r["tokens_per_s"] == pytest.approx(2e6)
    assert r["kernel_ms_per_step"] == pytest.approx((0.6 + 0.2 + 0.4) / 2)
    assert r["kernel_busy_fraction"] == pytest.approx(1.2e-3 / 0.004)
    assert r["families_ms_per_step"] == pytest.approx({"gemm": 0.3, "optimizer": 0.2, "attention": 0.1})
    assert r["idle_ms_per_step"] == pytest.approx(0.2)
    assert r["longest_idle"] == [
        {"at_ms": 0.6, "ms": 0.4, "after": "sm90_xmma_gemm_bf16", "before": r["longest_idle"][0]["before"]}
    ]
    assert r["longest_idle"][0]["before"] == "multi_tensor_apply_kernel<adam>"
    assert list(r["cuda_runtime_ms_per_step"]) == ["cudaStreamSynchronize", "cudaLaunchKernel"]
    assert r["cuda_runtime_ms_per_step"]["cudaStreamSynchronize"] == pytest.approx({"calls": 1.0, "ms": 0.25})
    text = to_markdown({**r, "first_step": 3, "last_step": 4, "rank": 0, "run_dir": "runs/x", "gpu": "CPU"})
    assert "| gemm | 0.3 | 50.0% |" in text and "`cudaStreamSynchronize` | 1.0 | 0.2 |" in text


def test_a_profile_window_past_the_run_is_refused():
    cfg = apply_overrides(get_preset("tiny"), ["run.train_iters=10", "run.profile_start=9", "run.profile_steps=3"])
    with pytest.raises(
        ConfigError, match=r"run.profile_start 9 with run.profile_steps 3 ends after run.train_iters \(10\)"
    ):
        validate(cfg)
    cfg = apply_overrides(get_preset("tiny"), ["run.profile_start=-1"])
    with pytest.raises(ConfigError, match="run.profile_start must be >= 0"):
        validate(cfg)


@pytest.mark.slow
def test_a_run_writes_the_profile_of_the_steps_it_was_asked_for(tmp_path):
    proc = run_training(tmp_path, "data.source=mock", "run.train_iters=4", "run.profile_start=2", "run.profile_steps=2")
    stem = tmp_path / "profile" / "steps_2-3_rank0"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["first_step"] == 2 and report["last_step"] == 3 and report["steps"] == 2
    assert report["gpu"] == "CPU" and report["kernels_per_step"] == 0  # no CUDA activity on CPU
    assert report["step_wall_ms"] > 0 and report["tokens_per_s"] > 0
    assert stem.with_suffix(".md").read_text().startswith("# Steps 2-3 of ")
    with gzip.open(f"{stem}.trace.json.gz", "rt") as f:
        trace = json.load(f)
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(name.startswith("aten::") for name in names), sorted(names)[:20]
    assert not list((tmp_path / "profile").glob("*.partial")) and not list((tmp_path / "profile").glob("*.trace.json"))
    assert "profile of steps 2-3:" in proc.stderr
