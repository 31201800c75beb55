"""The pretraining job script's control flow outside Slurm, with the programs it calls stubbed: what
it records for a run and how it ends.  (tests/slurm/test_slurm.py runs it on a real two-node Slurm.)"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.processes import ROOT

pytestmark = pytest.mark.slow  # runs bash and the stubs as processes

STUB_PYTHON = """#!/usr/bin/env bash
# Stands in for python: every `python -m ...` the job script runs succeeds, except that the launch
# (torch.distributed.run) exits with $STUB_TRAIN_EXIT and `-c` (the environment check) with $STUB_IMPORT_EXIT.
case "$*" in
  -c*) exit ${STUB_IMPORT_EXIT:-0} ;;
  *--print-config*) echo "preset: stub" ;;
  *--preflight*) echo "preflight ok: stub" ;;
  *torch.distributed.run*) exit ${STUB_TRAIN_EXIT:-0} ;;
esac
exit 0
"""

STUB_SCONTROL = """#!/usr/bin/env bash
echo "$*" >> "$SCONTROL_CALLS"
"""

# A checkout with a long `git status`: far more than the 50 lines the script keeps.
STUB_GIT = """#!/usr/bin/env bash
case "$*" in
  *rev-parse*) echo 0123456789abcdef0123456789abcdef01234567 ;;
  *status*) seq 1 200000 | sed 's/^/ M file/' ;;
esac
"""


def _stub(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _job_env(tmp_path, **extra) -> dict:
    """The job script's environment outside Slurm, with python, git and scontrol stubbed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _stub(bin_dir / "git", STUB_GIT)
    _stub(bin_dir / "scontrol", STUB_SCONTROL)
    python = _stub(tmp_path / "python", STUB_PYTHON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        LITESPARK_HOME=str(ROOT),
        LITESPARK_PYTHON=str(python),
        LITESPARK_LAUNCHER="torchrun",
        LITESPARK_RUN_DIR=str(tmp_path / "run"),
        LITESPARK_GPUS_PER_NODE="1",
        SCONTROL_CALLS=str(tmp_path / "scontrol.calls"),
    )
    env.update(extra)
    return env


def _job(
    tmp_path, script: str = "slurm/pretrain_3b.sh", args: tuple[str, ...] = (), **extra
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", script, *args],
        cwd=ROOT,
        env=_job_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_long_git_status_does_not_fail_the_job(tmp_path):
    """The job records the first 50 lines of ``git status`` and trains; the lines it does not read
    must not end the script with SIGPIPE (exit 141 under pipefail)."""
    proc = _job(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "training finished" in proc.stdout
    (git_txt,) = (tmp_path / "run").glob("slurm/job-local-restart-0/git.txt")
    lines = git_txt.read_text().splitlines()
    assert lines[0] == "0123456789abcdef0123456789abcdef01234567" and len(lines) == 51, lines[:3]


@pytest.mark.parametrize("train_exit, requeued", [(74, False), (2, False), (1, True)])
def test_a_full_disk_and_a_config_error_are_not_requeued(tmp_path, train_exit, requeued):
    """Exit 74 (a checkpoint could not be written) and 2 (bad config or data) would fail again after a
    requeue; any other failure is requeued (up to LITESPARK_MAX_RESTARTS)."""
    proc = _job(tmp_path, SLURM_JOB_ID="4242", STUB_TRAIN_EXIT=str(train_exit))
    calls = (tmp_path / "scontrol.calls").read_text() if (tmp_path / "scontrol.calls").exists() else ""
    assert ("requeue 4242" in calls) is requeued, (calls, proc.stdout)
    assert proc.returncode == (0 if requeued else train_exit), proc.stdout + proc.stderr
    if train_exit == 74:
        assert "a checkpoint could not be written (exit 74, disk full?): not requeued" in proc.stdout


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("LITESPARK_NODES", "abc", "LITESPARK_NODES=abc is not a whole number >= 1"),
        ("LITESPARK_GPUS_PER_NODE", "0", "LITESPARK_GPUS_PER_NODE=0 is not a whole number >= 1"),
        ("LITESPARK_MAX_RESTARTS", "-1", "LITESPARK_MAX_RESTARTS=-1 is not a whole number >= 0"),
        ("LITESPARK_LAUNCHER", "mpirun", "LITESPARK_LAUNCHER=mpirun is not srun or torchrun"),
        ("STUB_IMPORT_EXIT", "1", "cannot import torch, deepspeed, megatron-core and yaml"),
    ],
)
def test_a_bad_environment_is_one_line_and_exit_2(tmp_path, variable, value, message):
    proc = _job(tmp_path, **{variable: value})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [f"litespark: error: {message}"] or (
        len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    ), proc.stderr


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_the_fine_tuning_jobs_launch_their_entry_point_on_the_model_and_the_data(tmp_path, kind):
    proc = _job(
        tmp_path,
        f"slurm/{kind}.sh",
        ("--export-hf", "out/chat"),
        LITESPARK_HF="/models/llama",
        LITESPARK_DATA="/data/chat.jsonl",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (launch,) = [line for line in proc.stdout.splitlines() if line.startswith("launch: ")]
    assert f"-m litespark.{kind} --preset llama-3b" in launch
    assert "--data /data/chat.jsonl --hf /models/llama --set data.global_batch_size=64 --export-hf out/chat" in launch
    assert "training finished" in proc.stdout


@pytest.mark.parametrize(
    "script, env, message",
    [
        ("slurm/sft.sh", {}, "LITESPARK_DATA must name the fine-tuning data (litespark.sft)"),
        ("slurm/dpo.sh", {}, "LITESPARK_DATA must name the fine-tuning data (litespark.dpo)"),
        (
            "slurm/pretrain_3b.sh",
            {"LITESPARK_HF": "/m"},
            "LITESPARK_HF is read by litespark.sft and litespark.dpo only",
        ),
        ("slurm/pretrain_3b.sh", {"LITESPARK_ENTRY": "litespark.kto"}, "LITESPARK_ENTRY=litespark.kto is not"),
    ],
)
def test_an_sft_job_without_its_inputs_is_one_line_and_exit_2(tmp_path, script, env, message):
    proc = _job(tmp_path, script, **env)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
