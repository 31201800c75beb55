"""Asynchronous checkpoints on a CUDA GPU with ``checkpoint.overlap_copy``: the device-to-host copies
run on a stream of their own, overlapping the next step, so they must be ordered after the step that produced the state, must not
read memory the training stream has reused, and must be done before the next optimizer update."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.batches import micro_batches
from tests.helpers.gpu_models import build_on_gpu

pytestmark = pytest.mark.gpu

SPIN = 200_000_000  # GPU clock cycles of torch.cuda._sleep: ~0.1 s, long beside the copies below


def test_the_copy_waits_for_the_work_that_produced_the_state():
    from litespark.training.host_copy import HostCopies

    source = torch.zeros(16 << 20, device="cuda")  # 64 MiB
    copies = HostCopies(overlap=True)
    copies.reserve("model.pt", copies.storage_sizes({"w": source}))  # page-locking now, not inside the race
    torch.cuda.synchronize()
    torch.cuda._sleep(SPIN)
    source.fill_(7.0)  # still queued behind the sleep when the copy is issued
    copied = copies.copy("model.pt", {"w": source})
    done = copies.finish()
    assert done is not None
    done.synchronize()
    assert torch.equal(copied["w"], torch.full_like(copied["w"], 7.0))


def test_a_temporary_of_the_state_dict_is_not_reused_before_it_is_copied():
    """DeepSpeed's state dicts can hold tensors made for the save and dropped when it returns; their
    memory must not go back to the training stream while the side stream still reads it."""
    from litespark.training.host_copy import HostCopies

    n = 64 << 20  # 256 MiB: the copy takes milliseconds, the fill below microseconds
    copies = HostCopies(overlap=True)
    copies.reserve("model.pt", [(4 * n, torch.device("cuda", torch.cuda.current_device()))])
    torch.cuda.synchronize()
    torch.cuda._sleep(SPIN)  # the copy cannot start before the sleep is over
    temporary = torch.full((n,), 3.0, device="cuda")
    copied = copies.copy("model.pt", {"t": temporary})
    del temporary
    reused = torch.empty(n, device="cuda")  # the allocator's first choice would be the freed block
    reused.fill_(9.0)
    done = copies.finish()
    assert done is not None
    done.synchronize()
    assert torch.equal(copied["t"], torch.full_like(copied["t"], 3.0))


def test_an_asynchronous_save_holds_the_step_it_was_taken_at(dist_world_1, tmp_path):
    """Saved at step 2, the copy overlapping step 3's forward and backward: the files hold step 2's
    weights and optimizer state exactly, though step 3 changed both before the write finished."""
    from litespark.runtime.engine import build_engine
    from litespark.training.checkpoint import CheckpointSaver
    from litespark.training.step import train_step

    plan, model = build_on_gpu("te", "data.global_batch_size=4", "optim.lr=1e-2", "optim.warmup_iters=1")
    engine, _, _ = build_engine(plan, model)
    data = torch.randint(0, 64, (4, plan.config.model.seq_length + 1), generator=torch.Generator().manual_seed(3))
    batches = micro_batches(data.cuda())
    for _ in range(2):
        train_step(engine, batches)
    saver = CheckpointSaver(engine, tmp_path, keep_last=2, asynchronous=True, overlap_copy=True)
    try:
        saver.prepare()
        at_step_2 = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items() if torch.is_tensor(v)}
        # ZeRO's optimizer keeps them as single_partition_of_fp32_groups; BF16_Optimizer (with fp32
        # gradient accumulation, on here) as fp32_groups_flat_partition.  Both save the former name.
        optimizer = engine.optimizer
        groups = getattr(optimizer, "single_partition_of_fp32_groups", None) or optimizer.fp32_groups_flat_partition
        masters = [g.detach().cpu().clone() for g in groups]
        pending = saver.start(2, {"step": 2})
        assert pending.copied is not None  # asynchronous: the copy is still on its way
        train_step(engine, batches, before_update=saver.wait_for_copy)
        assert pending.copied is None  # the update waited for it
        path = saver.commit()
    finally:
        saver.close()
    saved = torch.load(next(path.glob("*model_states.pt")), weights_only=False)["module"]
    changed = 0
    for name, value in at_step_2.items():
        assert torch.equal(saved[name].cpu(), value), name
        changed += not torch.equal(engine.module.state_dict()[name].cpu(), value)
    assert changed, "step 3 changed no weight: the test would not see a copy that raced it"
    optim = torch.load(next(path.glob("*optim_states.pt")), weights_only=False)["optimizer_state_dict"]
    saved_masters = optim["single_partition_of_fp32_groups"]  # ZeRO's without its alignment padding
    assert len(saved_masters) == len(masters)
    for ours, theirs in zip(masters, saved_masters):
        assert torch.equal(theirs.cpu(), ours[: theirs.numel()])
