"""Shared fixtures: CPU by default, `gpu` tests skipped without CUDA, one process group per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from litespark.distributed import free_port  # noqa: F401 - re-exported for the tests

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    from litespark.cli import quiet_optional_dependency_warnings

    quiet_optional_dependency_warnings()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _tear_down_process_group() -> None:
    """Destroy torch.distributed and Megatron's groups and drop the launcher variables
    init_distributed wrote into os.environ."""
    from litespark.distributed import destroy_distributed

    destroy_distributed()
    for k in LAUNCH_VARS:
        os.environ.pop(k, None)


def micro_batches(sequences, size: int = 2) -> list[dict]:
    """The trainer's micro-batch dicts from ``[n, seq + 1]`` token ids, ``size`` sequences each, every
    position counted in the loss."""
    import torch

    return [{"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones_like(t[:, 1:], dtype=torch.float)}
            for t in sequences.split(size)]


@pytest.fixture(autouse=True)
def no_leaked_process_group():
    """A test that initialises torch.distributed in this process must tear it down (``dist_world_1``):
    a leaked group and its launcher variables break later tests in confusing ways (a missing
    LOCAL_RANK in DeepSpeed, a port in use in a Slurm job that inherited MASTER_PORT)."""
    yield
    import torch.distributed

    if torch.distributed.is_initialized():
        _tear_down_process_group()
        pytest.fail("the test left torch.distributed initialised: give it the dist_world_1 fixture")


@pytest.fixture
def dist_world_1():
    """torch.distributed (gloo) + Megatron parallel_state for one process, torn down afterwards.

    init_distributed writes the launcher variables into os.environ; they are removed again so that
    later tests (and the training subprocesses they start) see a clean environment.
    """
    saved = {k: os.environ.pop(k) for k in LAUNCH_VARS if k in os.environ}
    try:
        yield
    finally:
        _tear_down_process_group()
        os.environ.update(saved)


def torchrun(script: str, nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun with ``nproc`` local CPU processes; raises with the log on failure."""
    env = train_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", script, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def train_cmd(nproc: int, *args: str) -> list[str]:
    """The command that trains with ``nproc`` local processes (plain python for one)."""
    if nproc == 1:
        return [sys.executable, "-m", "litespark.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={free_port()}", "-m", "litespark.train", *args]


def train_env() -> dict:
    """This environment without the launcher variables, with the checkout first on PYTHONPATH (a
    PYTHONPATH the host already has, e.g. where the GPU host's packages live, is kept after it)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return dict(env, OMP_NUM_THREADS="1", PYTHONPATH=path)


def run_training(run_dir, *sets: str, nproc: int = 1, preset: str = "tiny", timeout: int = 600,
                 expect: int = 0) -> subprocess.CompletedProcess:
    """Train into ``run_dir`` with ``--set`` overrides; asserts the exit code, returns the process."""
    args = ["--preset", preset, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(train_cmd(nproc, *args), cwd=ROOT, env=train_env(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != expect:
        raise AssertionError(f"training exited {proc.returncode}, expected {expect}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(run_dir, split: str = "train") -> list[dict]:
    import json

    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == split]
