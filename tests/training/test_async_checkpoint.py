"""Asynchronous checkpoints: the host copy is what torch.save would write, training goes on while the
files are written, and a process killed or preempted during the background write keeps the
atomic-commit guarantees (the previous checkpoint stays the newest usable one; a preemption waits for
the write before exit 75)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from litespark.training.checkpoint import prune, remove_unfinished_saves
from litespark.training.host_copy import HostCopies
from tests.helpers.processes import ROOT, read_metrics, run_training, train_env

FAST = ["data.source=mock", "run.log_interval=1", "optim.warmup_iters=2", "optim.decay_iters=100"]


def _state():
    flat = torch.arange(12, dtype=torch.float32)
    weight = flat[2:8].view(2, 3)  # views sharing one storage, as DeepSpeed's flat buffers are
    bias = flat[8:10]
    step = torch.tensor(5)
    master = torch.zeros(4, requires_grad=True)
    betas = (0.9, 0.95)  # one object in two param groups, as in DeepSpeed's optimizer state
    module = OrderedDict(weight=weight, bias=bias, scale=torch.nn.Parameter(torch.ones(2)))
    module._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]  # as Module.state_dict() has
    return flat, {
        "module": module,
        "optimizer": {
            "state": {0: {"step": step, "exp_avg": torch.ones(3)}},
            "param_groups": [{"lr": 0.1, "betas": betas}, {"lr": 0.1, "betas": betas}],
        },
        "fp32_partition": master,
        "same_tensor_again": [weight],
        "iteration": 7,
    }


def test_a_host_copy_is_what_torch_save_writes_and_does_not_follow_later_updates():
    flat, state = _state()
    copies = HostCopies()
    copied = copies.copy("model.pt", state)
    assert copies.finish() is None  # CPU tensors: the copies are done when copy() returns
    original, snapshot = io.BytesIO(), io.BytesIO()
    torch.save(state, original)
    torch.save(copied, snapshot)
    assert snapshot.getvalue() == original.getvalue()  # views, shared storages and aliases kept

    flat.add_(100.0)  # the optimizer steps on after the copy
    state["optimizer"]["state"][0]["step"].add_(1)
    state["optimizer"]["param_groups"][0]["lr"] = 0.5
    assert copied["module"]["weight"].tolist() == [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]
    assert int(copied["optimizer"]["state"][0]["step"]) == 5
    assert copied["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert copied["same_tensor_again"][0] is copied["module"]["weight"]


def test_host_buffers_are_reused_from_one_save_to_the_next():
    flat, state = _state()
    copies = HostCopies()
    first = copies.copy("model.pt", state)
    allocated = copies.bytes_allocated
    pointer = first["module"]["weight"].untyped_storage().data_ptr()
    flat.add_(1.0)
    second = copies.copy("model.pt", state)
    assert copies.bytes_allocated == allocated  # nothing new
    assert second["module"]["weight"].untyped_storage().data_ptr() == pointer
    assert second["module"]["weight"][0, 0].item() == 3.0
    copies.copy("other.pt", state)  # another file has its own buffers
    assert copies.bytes_allocated == 2 * allocated


def test_buffers_reserved_from_the_storage_sizes_are_the_ones_the_first_copy_uses():
    _, state = _state()
    copies = HostCopies()
    sizes = copies.storage_sizes(state)
    assert [n for n, _ in sizes] == [12 * 4, 2 * 4, 8, 3 * 4, 4 * 4]  # flat buffer once, scale, step, exp_avg, master
    assert copies.bytes_allocated == 0 and copies.bytes_copied == 0  # measuring copies nothing
    copies.reserve("model.pt", sizes)
    allocated = copies.bytes_allocated
    assert allocated == sum(n for n, _ in sizes)
    copied = copies.copy("model.pt", state)
    assert copies.bytes_allocated == allocated  # the first copy found its buffers ready
    assert copied["module"]["bias"].tolist() == [8.0, 9.0]


# ------------------------------------------------------------------------------------------------
# A trainer whose background writes can be held: the file GATE_DIR/step_N holds the write of step N's
# checkpoint after its first file, so that the test decides when the write is "in progress".

_GATED_TRAINER = """
import os, pathlib, sys, time
from litespark.training import checkpoint

gate = pathlib.Path(os.environ["GATE_DIR"])
real_write = checkpoint._write_hashed
written = {}


def gated_write(obj, path, records):
    tag = pathlib.Path(path).parent.name.removeprefix(".incomplete-")
    if written.get(tag):  # the first file goes out, then the write waits while the gate is there
        while (gate / tag).exists():
            time.sleep(0.02)
    written[tag] = written.get(tag, 0) + 1
    return real_write(obj, path, records)


checkpoint._write_hashed = gated_write
from litespark.train import main

sys.exit(main())
"""


def _start_gated(run_dir: Path, gate: Path, *sets: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    args = ["--preset", "tiny", "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-c", _GATED_TRAINER, *args],
        cwd=ROOT,
        env=dict(train_env(), GATE_DIR=str(gate)),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def _wait_for(what: str, condition, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the trainer exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"timed out waiting for {what}")


def _last_step(run_dir: Path) -> int:
    if not (run_dir / "metrics.jsonl").exists():
        return 0
    steps = [r["step"] for r in read_metrics(run_dir)]
    return steps[-1] if steps else 0


def _latest(run_dir: Path) -> str | None:
    pointer = run_dir / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.exists() else None


@pytest.mark.slow
def test_sigkill_during_a_background_write_leaves_the_previous_checkpoint_and_training_went_on(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    gate.mkdir()
    (gate / "step_00000010").touch()
    (gate / "step_00000020").touch()
    sets = [*FAST, "run.train_iters=400", "checkpoint.save_interval=10", "checkpoint.keep_last=3"]
    proc = _start_gated(run_dir, gate, *sets)
    checkpoints = run_dir / "checkpoints"
    try:
        # Step 10's save is copied, its write is held half-way: training goes on meanwhile.
        _wait_for("step 15 with step 10's write in flight", lambda: _last_step(run_dir) >= 15, proc)
        assert (checkpoints / ".incomplete-step_00000010").is_dir() and _latest(run_dir) is None
        (gate / "step_00000010").unlink()  # the write finishes; the next step boundary commits it
        _wait_for("step 10's commit", lambda: _latest(run_dir) == "step_00000010", proc)
        _wait_for("step 25 with step 20's write in flight", lambda: _last_step(run_dir) >= 25, proc)
        unfinished = checkpoints / ".incomplete-step_00000020"
        assert unfinished.is_dir() and any(unfinished.iterdir()), "step 20's write should be half-way"
        assert _latest(run_dir) == "step_00000010"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert _latest(run_dir) == "step_00000010" and not (checkpoints / "step_00000020").exists()

    resumed = run_training(run_dir, *[s for s in sets if "train_iters" not in s], "run.train_iters=22")
    assert "resumed from" in resumed.stderr and "(step 10)" in resumed.stderr, resumed.stderr[-3000:]
    assert "removed 1 unfinished checkpoint save(s)" in resumed.stderr
    assert _latest(run_dir) == "step_00000022"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000010", "step_00000020", "step_00000022"]


@pytest.mark.slow
def test_a_preemption_during_a_background_write_waits_for_it_then_saves_and_exits_75(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    gate.mkdir()
    (gate / "step_00000010").touch()
    sets = [*FAST, "run.train_iters=400", "checkpoint.save_interval=10", "checkpoint.keep_last=3"]
    proc = _start_gated(run_dir, gate, *sets, stderr=subprocess.PIPE)
    _wait_for("step 13 with step 10's write in flight", lambda: _last_step(run_dir) >= 13, proc)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    assert proc.poll() is None, "the trainer must not exit while its checkpoint is being written"
    assert _latest(run_dir) is None
    (gate / "step_00000010").unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    stopped = _last_step(run_dir)
    assert stopped > 10
    assert _latest(run_dir) == f"step_{stopped:08d}"
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert names == ["step_00000010", f"step_{stopped:08d}"]
    assert not list((run_dir / "checkpoints").glob(".incomplete-*"))


@pytest.mark.slow
def test_asynchronous_and_synchronous_saves_write_the_same_files(tmp_path):
    sets = [*FAST, "run.train_iters=6", "checkpoint.save_interval=3", "checkpoint.keep_last=2"]
    proc = run_training(tmp_path / "async", *sets)
    # The buffers were allocated at the first step, complete (Adam's moments included): no save had to
    # allocate any.
    assert "host buffers for asynchronous saves allocated and page-locked in" in proc.stderr
    assert "allocated during this save" not in proc.stderr, proc.stderr[-3000:]
    assert "(first step: warm-up" in proc.stderr
    assert [r.get("warmup", False) for r in read_metrics(tmp_path / "async")][:2] == [True, False]
    run_training(tmp_path / "sync", *sets, "checkpoint.async_save=false")
    for kind in ("async", "sync"):  # the asynchronous run's dry-run save left nothing behind
        assert sorted(p.name for p in (tmp_path / kind / "checkpoints").glob("*step_*")) == [
            "step_00000003",
            "step_00000006",
        ]
    for step in ("step_00000003", "step_00000006"):
        manifests = [
            json.loads((tmp_path / kind / "checkpoints" / step / "litespark.json").read_text())
            for kind in ("async", "sync")
        ]
        files = [m["files"] for m in manifests]
        assert files[0].keys() == files[1].keys()
        # The model file holds the run's config (which differs in checkpoint.async_save); the
        # optimizer state and the RNG states must be the same bytes.
        for name in files[0]:
            if "model_states" not in name:
                assert files[0][name] == files[1][name], name
        models = [
            torch.load(next((tmp_path / kind / "checkpoints" / step).glob("*model_states.pt")), weights_only=False)
            for kind in ("async", "sync")
        ]
        assert models[0].keys() == models[1].keys()
        for key in models[1]:
            if key not in ("module", "config"):
                assert models[0][key] == models[1][key], key
                assert type(models[0][key]) is type(models[1][key]), key
        for key, tensor in models[1]["module"].items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(models[0]["module"][key], tensor), key
        shapes = models[0]["param_shapes"][0]
        assert all(type(shape) is torch.Size for shape in shapes.values())  # kept as torch.Size, not a tuple

    # Pruning renames at once and leaves the deleting to the caller: no complete checkpoint is
    # half-deleted if the process dies meanwhile, and the next start removes what is left.
    root = tmp_path / "async" / "checkpoints"
    retired = prune(root, keep_last=1)
    assert [p.name for p in retired] == [".incomplete-old-step_00000003"] and retired[0].is_dir()
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000006"]
    assert remove_unfinished_saves(tmp_path / "async") == [".incomplete-old-step_00000003"]
