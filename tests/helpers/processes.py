"""Running Litespark's commands in subprocesses, as a user would: the training CLI on 1..N CPU
processes, torchrun workers, and reading what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from litespark.runtime.distributed import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
"""The checkout the tests run from."""

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The launcher's environment variables; tests start subprocesses without them."""


def train_env() -> dict:
    """This environment without the launcher variables, with the checkout first on PYTHONPATH (a
    PYTHONPATH the host already has, e.g. where the GPU host's packages live, is kept after it)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return dict(env, OMP_NUM_THREADS="1", PYTHONPATH=path)


def torchrun(script: str, nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun with ``nproc`` local CPU processes; raises with the log on failure."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        script,
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def train_cmd(nproc: int, *args: str) -> list[str]:
    """The command that trains with ``nproc`` local processes (plain python for one)."""
    if nproc == 1:
        return [sys.executable, "-m", "litespark.train", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "litespark.train",
        *args,
    ]


def run_training(
    run_dir, *sets: str, nproc: int = 1, preset: str = "tiny", timeout: int = 600, expect: int = 0
) -> subprocess.CompletedProcess:
    """Train into ``run_dir`` with ``--set`` overrides; asserts the exit code, returns the process."""
    args = ["--preset", preset, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        train_cmd(nproc, *args), cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != expect:
        raise AssertionError(
            f"training exited {proc.returncode}, expected {expect}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def read_metrics(run_dir, split: str = "train") -> list[dict]:
    """The records of one split in ``run_dir``/metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == split]


def run_module(module: str, *args: str, expect: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` in one process, as a user runs it; asserts the exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != expect:
        raise AssertionError(
            f"{module} exited {proc.returncode}, expected {expect}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
