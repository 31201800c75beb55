"""The start-up probe: which candidates the planner is unsure of, the order they are tried in and what
is taken when a probe fails, the child process it runs (for real, on the CPU's torch backend), and
how the child's exit and memory reading become a verdict."""

from __future__ import annotations

import json

import pytest

from litespark.config import ConfigError, apply_overrides, plan_for, resolve
from litespark.config.presets import get_preset
from litespark.planner import MEMORY_ERROR, ProbeResult, automatic_micro_batch, plan_candidates, to_probe
from litespark.planner.gpus import Gpu, parse_gpu
from litespark.planner.probe import PROBE_MICRO_BATCHES, PROBE_STEPS, probe_config, read_probe, run_probe, startup_probe

# llama-3b (global batch 8) is predicted at 130.2 GiB with micro-batch 8 and 93.6 with 4: on a GPU of
# 131 GiB, 8 is within the model's error of the memory (unsure) and 4 surely fits.
NEAR = parse_gpu("near:131:989.4:4.8")


class FakeProbe:
    def __init__(self, fits: dict[int, bool]):
        self.fits, self.calls = fits, []

    def __call__(self, plan, gpu):
        self.calls.append(plan.micro_batch_size)
        ok = self.fits[plan.micro_batch_size]
        return ProbeResult(ok, f"fake: {'ran' if ok else 'out of memory'}")


def test_candidates_within_the_models_error_of_the_memory_are_unsure():
    candidates = plan_candidates(get_preset("llama-3b"), 1, NEAR)
    verdicts = {c.plan.micro_batch_size: c.verdict for c in candidates}
    assert verdicts[8] == "unsure" and verdicts[4] == "yes"
    for c in candidates:
        share = c.memory.total / (NEAR.memory_gib * 2**30)
        assert c.fits == (share <= 1 - MEMORY_ERROR)
        assert c.unsure == (1 - MEMORY_ERROR < share <= 1 + MEMORY_ERROR)
    assert [c.plan.micro_batch_size for c in to_probe(candidates)] == [8]


def test_a_probe_that_runs_takes_the_faster_micro_batch():
    probe = FakeProbe({8: True})
    mb, why = automatic_micro_batch(get_preset("llama-3b"), 1, NEAR, probe)
    assert (mb, probe.calls) == (8, [8])
    assert "start-up probe" in why and "fake: ran" in why


def test_a_failed_probe_leaves_the_safe_choice_and_says_so():
    probe = FakeProbe({8: False})
    mb, why = automatic_micro_batch(get_preset("llama-3b"), 1, NEAR, probe)
    assert (mb, probe.calls) == (4, [8])
    assert "8 (probed: fake: out of memory)" in why
    # Without a probe (several processes, packed rows) the unsure candidate is not taken either.
    mb, why = automatic_micro_batch(get_preset("llama-3b"), 1, NEAR)
    assert mb == 4 and "8 (not probed)" in why


def test_unsure_candidates_are_probed_fastest_first_until_one_runs():
    # llama-30b's width cut to 4 layers: model states dominate, so micro-batches 1 and 2 are within
    # 10% of each other and a GPU between them is unsure of both.
    cfg = apply_overrides(
        get_preset("llama-30b"), ["model.num_layers=4", "parallel.tensor_parallel=1", "data.global_batch_size=8"]
    )
    totals = {c.plan.micro_batch_size: c.memory.total / 2**30 for c in plan_candidates(cfg, 1, NEAR)}
    low, high = totals[2] / (1 + MEMORY_ERROR), totals[1] / (1 - MEMORY_ERROR)
    assert low < high
    gpu = Gpu("between", (low + high) / 2, 989.4, 4.8)
    candidates = plan_candidates(cfg, 1, gpu)
    assert [c.verdict for c in candidates] == ["unsure", "unsure", "no", "no"]
    assert [c.plan.micro_batch_size for c in to_probe(candidates)] == [2, 1]
    probe = FakeProbe({2: False, 1: True})
    assert automatic_micro_batch(cfg, 1, gpu, probe)[0] == 1 and probe.calls == [2, 1]


def test_nothing_sure_and_every_probe_failing_is_one_line():
    cfg = get_preset("llama-3b")
    smallest = plan_candidates(cfg, 1, NEAR)[0].memory.total / 2**30
    gpu = Gpu("tight", smallest, 989.4, 4.8)  # micro-batch 1 predicted at exactly the memory: unsure
    assert next(c.verdict for c in plan_candidates(cfg, 1, gpu)) == "unsure"
    with pytest.raises(ConfigError, match=r"even micro-batch 1 .* and micro-batch 1 \(probed: fake: out of memory\)"):
        automatic_micro_batch(cfg, 1, gpu, FakeProbe({1: False}))


def test_resolve_passes_the_probe_and_records_why():
    plan = resolve(get_preset("llama-3b"), 1, backend="te", gpu=NEAR, probe=FakeProbe({8: True}))
    assert plan.micro_batch_size == 8 and "start-up probe" in plan.micro_batch_source


def test_only_one_process_launches_of_pretraining_rows_probe():
    cfg = get_preset("llama-3b")
    assert startup_probe(cfg, 1) is run_probe
    assert startup_probe(cfg, 2) is None
    assert startup_probe(apply_overrides(get_preset("llama-3b"), ["data.source=sft"]), 1) is None


def test_the_childs_config_runs_the_candidate_alone(tmp_path):
    cfg = apply_overrides(
        get_preset("llama-3b"), ["data.source=indexed", "data.prefixes=/data/a", "run.eval_interval=50"]
    )
    c = probe_config(cfg, 2, tmp_path)
    # The preset's global batch 8 is 4 micro-batches of 2: the probe steps accumulate all of them.
    assert (c.data.source, c.data.prefixes, c.data.micro_batch_size, c.data.global_batch_size) == ("mock", [], 2, 8)
    assert (c.run.train_iters, c.run.eval_interval, c.checkpoint.enabled, c.checkpoint.resume) == (
        PROBE_STEPS,
        0,
        False,
        False,
    )
    assert c.model == cfg.model and c.precision == cfg.precision and c.kernels == cfg.kernels
    assert cfg.data.source == "indexed"  # the run's own config is untouched


def test_the_probe_accumulates_at_most_probe_micro_batches(tmp_path):
    cfg = apply_overrides(get_preset("llama-3b"), ["data.global_batch_size=256"])
    assert probe_config(cfg, 2, tmp_path).data.global_batch_size == 2 * PROBE_MICRO_BATCHES
    assert probe_config(cfg, 256, tmp_path).data.global_batch_size == 256


def _metrics(run_dir, peaks, key="peak_reserved_gib"):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"split": "setup", "seconds": 3.0})]
    lines += [json.dumps({"split": "train", "step": i + 1, key: p}) for i, p in enumerate(peaks)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_verdict_from_the_childs_exit_and_memory(tmp_path):
    gpu = Gpu("g", 100.0, 989.4, 4.8)
    oom = "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert read_probe(tmp_path / "none", 1, oom, gpu, 30.0) == ProbeResult(False, "ran out of memory in 30 s")
    crashed = read_probe(tmp_path / "none", 1, "boom\nValueError: bad\n", gpu, 1.0)
    assert not crashed.fits and crashed.detail == "exited with 1: ValueError: bad"
    assert not read_probe(tmp_path / "none", 0, "", gpu, 1.0).fits  # no metrics: no reading, not taken
    _metrics(tmp_path / "ok", [90.0, 98.5])
    ok = read_probe(tmp_path / "ok", 0, "", gpu, 12.0)
    assert ok.fits and ok.detail.startswith("98.5 GiB at its peak")
    _metrics(tmp_path / "full", [90.0, 99.5])
    full = read_probe(tmp_path / "full", 0, "", gpu, 12.0)
    assert not full.fits and "more than 99% of 100.0 GiB" in full.detail


@pytest.mark.slow
def test_the_child_process_trains_the_candidate(tmp_path, monkeypatch):
    """The probe for real on this host: the tiny preset on the torch backend (its memory reading is
    the child's resident memory), then a GPU budget it cannot meet."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    cfg = apply_overrides(get_preset("tiny"), ["data.source=indexed", "data.prefixes=/no/such/prefix"])
    plan = plan_for(cfg, 1, "torch", 2)
    result = run_probe(plan, Gpu("roomy", 1000.0, 1.0, 1.0))
    assert result.fits, result.detail
    assert f"at its peak in {PROBE_STEPS} steps" in result.detail
    assert list(tmp_path.iterdir()) == []  # the probe's run directory is gone
    tight = run_probe(plan, Gpu("tight", 0.01, 1.0, 1.0))
    assert not tight.fits and "more than 99% of 0.0 GiB" in tight.detail
