"""Fixtures for every test: CPU by default, `gpu` tests skipped without CUDA, one process group per test,
and the `slow` marker on every test that starts another process (checked, not trusted).

Shared helpers that are not fixtures live in ``tests/helpers/``.
"""

from __future__ import annotations

import multiprocessing.util
import os
import subprocess

import pytest

from tests.helpers.processes import LAUNCH_VARS


def pytest_configure(config):
    from litespark.config.cli import quiet_optional_dependency_warnings

    quiet_optional_dependency_warnings()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _tear_down_process_group() -> None:
    """Destroy torch.distributed and Megatron's groups and drop the launcher variables
    init_distributed wrote into os.environ."""
    from litespark.runtime.distributed import destroy_distributed

    destroy_distributed()
    for k in LAUNCH_VARS:
        os.environ.pop(k, None)


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


QUICK_COMMANDS = ("git", "gcc", "fc-list")
"""Programs a test may run without being `slow`: they answer in milliseconds (git, for the revision
recorded beside results; gcc, which DeepSpeed runs on a test file to decide whether its CPU ops build;
fc-list, which matplotlib runs once per machine to build its font cache, in whichever test plots first)."""


@pytest.fixture(autouse=True)
def slow_marker_on_process_tests(request, monkeypatch):
    """A test that starts a process (``subprocess``, ``multiprocessing``, torchrun) must be marked
    `slow`, so that ``make test-fast`` (``-m "not slow"``) stays an edit loop of seconds per test."""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("gpu"):
        yield
        return
    started: list[str] = []
    popen_init, spawn = subprocess.Popen.__init__, multiprocessing.util.spawnv_passfds

    def recording_popen_init(self, args, *a, **kw):
        program = os.path.basename(str(args if isinstance(args, (str, bytes)) else args[0]))
        if program not in QUICK_COMMANDS:
            started.append(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
        popen_init(self, args, *a, **kw)

    def recording_spawn(path, args, passfds):
        started.append(" ".join(map(str, args)))
        return spawn(path, args, passfds)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_popen_init)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", recording_spawn)
    yield
    if started:
        pytest.fail(f"this test starts a process ({started[0][:200]}): mark it @pytest.mark.slow")
