"""The project's Slurm scripts on a real Slurm (two simulated nodes on this machine, see
``tests/helpers/slurm_cluster.py``): a 2-node run trains and checkpoints, a second submission resumes, a
USR1 preemption checkpoints, requeues and finishes, a bad config fails in preflight without a requeue,
and the tokenisation array job plus merge reproduces a direct run byte for byte.

The job scripts are submitted unchanged; the tiny CPU preset and the 2-node allocation come from the
environment and from ``sbatch`` options, as a user would override them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.processes import ROOT, read_metrics
from tests.helpers.slurm_cluster import Cluster, ensure_installed

pytestmark = pytest.mark.slow

ALLOC = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gres=none", "--time=15"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield c.start()
    finally:
        c.stop()


def _env(run_dir: Path, sets: str, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "LITESPARK_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        LITESPARK_PRESET="tiny",
        LITESPARK_PYTHON=sys.executable,
        LITESPARK_RUN_DIR=str(run_dir),
        LITESPARK_SET=sets,
        LITESPARK_DATA="mock",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _submit(cluster: Cluster, script: str, env: dict, out: Path, *extra: str, wait: bool = True):
    args = ["sbatch", "--parsable", *ALLOC, f"--output={out}", f"--chdir={ROOT}", *extra]
    if wait:
        args.insert(1, "--wait")
    proc = cluster.run(*args, f"slurm/{script}", env=env, timeout=600)
    return proc


def _wait_done(cluster: Cluster, job: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = cluster.job_state(job)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} not finished after {timeout} s: {cluster.job_state(job)}\n{cluster.logs()}")


def test_two_node_run_then_resume(cluster, tmp_path):
    run = tmp_path / "run"
    sets = "run.train_iters=40 run.log_interval=10 checkpoint.save_interval=20"
    proc = _submit(cluster, "pretrain_30b.sh", _env(run, sets), tmp_path / "first.out")
    log = (tmp_path / "first.out").read_text()
    assert proc.returncode == 0, f"{proc.stderr}\n{log[-4000:]}\n{cluster.logs()}"
    assert "on 2 node(s) x 1 = 2 processes, rendezvous 127.0.0.1:" in log and "preflight ok" in log
    first = read_metrics(run)
    # Each start's first step is an interval of its own (warm-up), then every 10 steps.
    assert [r["step"] for r in first] == [1, 10, 20, 30, 40] and first[-1]["loss"] < first[1]["loss"]
    assert [r.get("warmup", False) for r in first] == [True, False, False, False, False]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000040"
    job = proc.stdout.strip().split(";")[0]
    logdir = run / "slurm" / f"job-{job}-restart-0"
    assert (logdir / "config.yaml").is_file() and (logdir / "git.txt").read_text().strip()
    assert "srun --kill-on-bad-exit=1 --nodes=2" in (logdir / "launch.txt").read_text()

    proc = _submit(cluster, "pretrain_30b.sh", _env(run, sets.replace("40", "60", 1)), tmp_path / "second.out")
    log = (tmp_path / "second.out").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert "resumed from" in log and "step_00000040" in log
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == [1, 10, 20, 30, 40, 41, 50, 60]  # the resumed start's warm-up is step 41


def test_preemption_checkpoints_requeues_and_finishes(cluster, tmp_path):
    run = tmp_path / "run"
    sets = "run.train_iters=1500 run.log_interval=50 data.micro_batch_size=4 data.global_batch_size=8"
    proc = _submit(cluster, "pretrain_3b.sh", _env(run, sets), tmp_path / "job.out", wait=False)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    deadline = time.time() + 180
    while not (run / "metrics.jsonl").is_file() or not read_metrics(run):
        assert time.time() < deadline, f"training never logged\n{(tmp_path / 'job.out').read_text()[-3000:]}"
        time.sleep(0.5)
    assert cluster.run("scancel", "--signal=USR1", "--batch", job).returncode == 0
    state = _wait_done(cluster, job, timeout=300)
    log = (tmp_path / "job.out").read_text()
    assert state["JobState"] == "COMPLETED", f"{state}\n{log[-4000:]}\n{cluster.logs()}"
    assert int(state.get("Restarts", "0")) == 1, state
    assert "USR1: preemption notice" in log and "requeueing job" in log and "training finished" in log
    steps = [r["step"] for r in read_metrics(run)]
    assert steps[-1] == 1500
    setups = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "setup"]
    assert len(setups) == 2 and 0 < setups[1]["step"] < 1500  # the second start resumed mid-run
    assert (run / "slurm" / f"job-{job}-restart-1").is_dir()


def test_bad_config_fails_in_preflight_without_requeue(cluster, tmp_path):
    env = _env(tmp_path / "run", "run.train_iters=5")
    env["LITESPARK_DATA"] = str(tmp_path / "missing_prefix")
    t0 = time.time()
    proc = _submit(cluster, "pretrain_30b.sh", env, tmp_path / "bad.out")
    log = (tmp_path / "bad.out").read_text()
    assert proc.returncode == 2, log[-3000:]
    assert "missing_prefix.bin does not exist" in log and "requeue" not in log
    assert time.time() - t0 < 120
    job = proc.stdout.strip().split(";")[0]
    assert cluster.job_state(job).get("Restarts", "0") == "0"


def test_tokenize_array_job_and_merge(cluster, tmp_path):
    import subprocess

    sample = tmp_path / "sample"
    subprocess.run(
        [sys.executable, "data_prep/make_sample.py", "--out", str(sample), "--max-mb", "1"], cwd=ROOT, check=True
    )
    subprocess.run(
        [
            sys.executable,
            "data_prep/train_tokenizer.py",
            "--input",
            str(sample / "train"),
            "--vocab-size",
            "400",
            "--out",
            str(tmp_path / "tok.model"),
        ],
        cwd=ROOT,
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        INPUT=str(sample / "train"),
        TOKENIZER=str(tmp_path / "tok.model"),
        OUTPUT=str(tmp_path / "sharded"),
        TASKS="2",
        CPUS="1",
        MERGE_CPUS="1",
        WORKERS="1",
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
    )
    proc = cluster.run("bash", "slurm/tokenize_slimpajama.sh", env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    merge = proc.stdout.split("merge job")[1].split()[0]
    state = _wait_done(cluster, merge, timeout=300)
    assert state["JobState"] == "COMPLETED", f"{state}\n{cluster.logs()}"
    subprocess.run(
        [
            sys.executable,
            "data_prep/tokenize_slimpajama.py",
            "--input",
            str(sample / "train"),
            "--tokenizer",
            str(tmp_path / "tok.model"),
            "--output-prefix",
            str(tmp_path / "direct"),
            "--no-progress",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"sharded{suffix}").read_bytes() == (tmp_path / f"direct{suffix}").read_bytes()


def test_dry_run_prints_launch_and_config(tmp_path):
    import subprocess

    env = _env(tmp_path / "run", "optim.lr=1e-4")
    env.update(LITESPARK_PRESET="llama-30b", LITESPARK_NODES="4", LITESPARK_HOME=str(ROOT))
    proc = subprocess.run(
        ["bash", "slurm/pretrain_30b.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "llama-30b on 4 node(s) x 8 = 32 processes" in proc.stdout
    assert "preflight ok: llama-30b, world 32 = TP 4 x DP 8" in proc.stdout and "lr: 0.0001" in proc.stdout
    assert not (tmp_path / "run").exists()
