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
# Stands in for python: every `python -m ...` the job script runs succeeds.
case "$*" in
  *--print-config*) echo "preset: stub" ;;
  *--preflight*) echo "preflight ok: stub" ;;
esac
exit 0
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


def test_a_long_git_status_does_not_fail_the_job(tmp_path):
    """The job records the first 50 lines of ``git status`` and trains; the lines it does not read
    must not end the script with SIGPIPE (exit 141 under pipefail)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "git", STUB_GIT)
    python = _stub(tmp_path / "python", STUB_PYTHON)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        LITESPARK_HOME=str(ROOT),
        LITESPARK_PYTHON=str(python),
        LITESPARK_LAUNCHER="torchrun",
        LITESPARK_RUN_DIR=str(run_dir),
        LITESPARK_GPUS_PER_NODE="1",
    )
    proc = subprocess.run(
        ["bash", "slurm/pretrain_3b.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "training finished" in proc.stdout
    (git_txt,) = run_dir.glob("slurm/job-local-restart-0/git.txt")
    lines = git_txt.read_text().splitlines()
    assert lines[0] == "0123456789abcdef0123456789abcdef01234567" and len(lines) == 51, lines[:3]
