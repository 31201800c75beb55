"""Resuming a run: what fits is resumed, also on another data-parallel size; what does not is refused
in one line with nothing on disk touched; two trainers never share a run directory.  Every test
trains in subprocesses, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers.processes import ROOT, read_metrics, run_training, train_cmd, train_env

pytestmark = pytest.mark.slow

FAST = ["data.source=mock", "run.log_interval=1", "optim.warmup_iters=2", "optim.decay_iters=100"]


def _snapshot(run_dir) -> dict:
    """Every file under ``run_dir`` with its size and modification time (the lock file excepted: it
    is rewritten by whoever asks for it)."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "litespark.lock"
    }


def _errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error:" in line]


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def test_checkpoints_of_another_model_are_refused_and_nothing_is_touched(tmp_path):
    run_training(tmp_path, *FAST, "run.train_iters=10", "checkpoint.save_interval=5", nproc=2)
    before = _snapshot(tmp_path)
    # One process (a requeue on fewer nodes): the model is checked before any resharding.
    proc = run_training(
        tmp_path, *FAST, "run.train_iters=20", "checkpoint.save_interval=5", "model.num_layers=3", expect=2
    )
    assert len(_errors(proc)) == 1 and "model.num_layers is 2 there and 3 in this run" in _errors(proc)[0]
    assert _snapshot(tmp_path) == before  # no checkpoint pruned, no metrics appended, no config rewritten


def test_a_run_dir_whose_checkpoints_are_all_damaged_is_refused(tmp_path):
    run_training(tmp_path, *FAST, "run.train_iters=10", "checkpoint.save_interval=5")
    for step in ("step_00000005", "step_00000010"):
        states = next((tmp_path / "checkpoints" / step).glob("*model_states.pt"))
        data = bytearray(states.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one bit pattern changed in place
        states.write_bytes(bytes(data))
    before = _snapshot(tmp_path)
    proc = run_training(tmp_path, *FAST, "run.train_iters=20", expect=2)
    (error,) = _errors(proc)
    assert "none of the 2 checkpoints under" in error and "is damaged" in error and "nothing was changed" in error
    assert _snapshot(tmp_path) == before


def test_a_tensor_parallel_change_is_refused_naming_the_converter(tmp_path):
    run_training(tmp_path, *FAST, "run.train_iters=4", "checkpoint.save_interval=4", nproc=2)
    # Under torchrun every rank prints the line and exits 2; torchrun itself exits 1 (--preflight, one
    # process, gives the line with exit 2 before a launch: the preflight test below).
    proc = run_training(tmp_path, *FAST, "run.train_iters=8", "parallel.tensor_parallel=2", nproc=2, expect=1)
    assert len(set(_errors(proc))) == 1, proc.stderr
    error = _errors(proc)[0]
    assert "written with parallel.tensor_parallel=1 and this run has 2" in error
    assert "python -m litespark.convert to-hf" in error


@pytest.mark.parametrize(
    "before, after, sets",
    [
        (2, 1, []),
        (1, 2, []),
        (2, 1, ["precision.bf16=true", "precision.fp32_grad_accumulation=true"]),  # DeepSpeed's BF16_Optimizer
    ],
    ids=["dp2-to-dp1", "dp1-to-dp2", "dp2-to-dp1-bf16-optimizer"],
)
def test_a_data_parallel_change_resumes_and_continues_the_loss_curve(tmp_path, before, after, sets):
    """A job requeued on fewer or more nodes: the checkpoint is resharded (DeepSpeed's universal
    checkpoint) and the loss curve goes on as a run that never stopped.  Not bit-exact: the same
    samples' gradients are summed in another order (2 ranks x 1 micro-batch against 1 rank x 2), so
    fp32 runs agree to about 1e-6, bf16 ones to what bf16 rounding allows."""
    common = [*FAST, "checkpoint.save_interval=10", *sets]
    run_training(tmp_path / "ref", *common, "run.train_iters=20", nproc=before)
    run_training(tmp_path / "run", *common, "run.train_iters=10", nproc=before)
    proc = run_training(tmp_path / "run", *common, "run.train_iters=20", nproc=after)
    assert f"resharded from data-parallel size {before}" in proc.stderr
    reference, resumed = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert sorted(resumed) == list(range(1, 21))
    tolerance = 2e-2 if sets else 1e-5
    for step in range(11, 21):
        assert resumed[step] == pytest.approx(reference[step], rel=tolerance), (step, resumed, reference)
    assert not list((tmp_path / "run" / "checkpoints").glob(".universal-*"))  # the converted copy is gone
    # What the resharded run saved resumes in its own layout.
    again = run_training(tmp_path / "run", *common, "run.train_iters=22", nproc=after)
    assert "resumed from" in again.stderr and "resharded" not in again.stderr


def test_a_second_trainer_on_the_same_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        train_cmd(
            1,
            "--preset",
            "tiny",
            "--run-dir",
            str(run_dir),
            "--train-iters",
            "400",
            "--set",
            "data.source=mock",
            "--set",
            "run.log_interval=1",
        ),
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first trainer ended before the second started"
        second = run_training(run_dir, *FAST, "run.train_iters=5", expect=2)
        (error,) = _errors(second)
        assert f"is in use by pid {first.pid}" in error and "another training run is using it" in error
        assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    finally:
        first.kill()
        first.wait()
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, 401))  # every step once: the second trainer wrote nothing


def test_the_lock_of_a_trainer_that_was_killed_is_free(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom litespark.files import hold_lock\n"
            "Path(sys.argv[1]).mkdir()\nhold_lock(Path(sys.argv[1]) / 'litespark.lock', 'run')\nprint('held', flush=True)\n"
            "time.sleep(600)",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_training(tmp_path / "run", *FAST, "run.train_iters=2", expect=2)
        assert f"in use by pid {holder.pid}" in _errors(refused)[0]
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
        run_training(tmp_path / "run", *FAST, "run.train_iters=2")
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(tmp_path / "run" / "litespark.lock")  # a run that ends removes it


def _preflight(run_dir, world: int, *sets: str) -> subprocess.CompletedProcess:
    args = ["--preset", "tiny", "--run-dir", str(run_dir), "--preflight", str(world)]
    args += [a for s in sets for a in ("--set", s)]
    return subprocess.run(train_cmd(1, *args), cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)


def test_preflight_says_in_one_process_where_the_run_would_start_and_what_it_would_refuse(tmp_path):
    run_training(tmp_path, *FAST, "run.train_iters=4", "checkpoint.save_interval=4")
    same = _preflight(tmp_path, 1, *FAST)
    assert same.returncode == 0 and "starts at step_00000004" in same.stdout, same.stderr
    more = _preflight(tmp_path, 2, *FAST)
    assert more.returncode == 0 and "starts at step_00000004 (resharded from DP 1)" in more.stdout, more.stderr
    other = _preflight(tmp_path, 2, *FAST, "parallel.tensor_parallel=2")
    assert other.returncode == 2 and len(_errors(other)) == 1
    assert "written with parallel.tensor_parallel=1 and this run has 2" in _errors(other)[0]
