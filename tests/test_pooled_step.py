"""litespark.pooled_step on the CPU: when the step may use the graph pool, and what it refuses.

The pool itself is CUDA-only; here its byte count and ``use_mem_pool`` are stand-ins that record
what the wrapper asked for.  tests/test_gpu.py::test_cuda_graphs_train_like_eager runs the real
thing against eager training.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from litespark import pooled_step
from litespark.pooled_step import install_pooled_step, optimizer_state_ready


class _ZeroLike:
    """The parts of DeepSpeed's ZeRO optimizer the wrapper touches: ``.optimizer``, ``.step``,
    ``._global_grad_norm``; ``leak`` bytes stay allocated in the pool after each step."""

    def __init__(self, pool_bytes: list[int], leak: int = 0):
        self.param = torch.nn.Parameter(torch.ones(4))
        self.optimizer = torch.optim.AdamW([self.param], lr=0.1)
        self._global_grad_norm = None
        self.pool_bytes, self.leak, self.steps = pool_bytes, leak, 0

    def step(self):
        self.param.grad = torch.full_like(self.param, 0.5)
        self.optimizer.step()
        self.param.grad = None
        self._global_grad_norm = torch.tensor(1.0)
        self.pool_bytes[0] += self.leak
        self.steps += 1


class _Stream:
    def __init__(self, name: str, events: list):
        self.name, self.events = name, events

    def wait_stream(self, other):
        self.events.append(f"{self.name} waits for {other.name}")


@pytest.fixture
def fake_pool(monkeypatch):
    pool_bytes, entered, events = [1000], [], []
    training = _Stream("training", events)

    @contextlib.contextmanager
    def use_mem_pool(pool):
        entered.append(pool)
        events.append(f"allocate from {pool}")
        yield

    @contextlib.contextmanager
    def stream(s):
        events.append(f"on {s.name}")
        yield

    monkeypatch.setattr(pooled_step, "pool_allocated_bytes", lambda pool: pool_bytes[0])
    monkeypatch.setattr(torch.cuda, "use_mem_pool", use_mem_pool)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: training)
    return pool_bytes, entered, events


def test_state_ready_only_after_the_first_step():
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [q], "weight_decay": 0.0}])
    assert not optimizer_state_ready(opt)
    p.grad = torch.ones(3)
    opt.step()  # q had no gradient: no state for it yet
    assert not optimizer_state_ready(opt)
    q.grad = torch.ones(2)
    opt.step()
    assert optimizer_state_ready(opt)


def test_first_step_outside_the_pool_then_pooled_with_the_norm_copied_out(fake_pool):
    pool_bytes, entered, events = fake_pool
    zero = _ZeroLike(pool_bytes)
    pooled = install_pooled_step(zero, pool="POOL", stream=_Stream("capture", events))
    zero.step()  # creates AdamW's state: must not be allocated in the pool
    assert entered == [] and pooled.pooled == 0 and zero.steps == 1
    zero.step()
    zero.step()
    assert entered == ["POOL", "POOL"] and pooled.pooled == 2 and zero.steps == 3
    # on the capture stream (whose freed pool blocks it may take), ordered after and before training
    assert events[:4] == ["capture waits for training", "on capture", "allocate from POOL", "training waits for capture"]
    assert float(zero._global_grad_norm) == 1.0


def test_the_norm_left_by_the_step_is_replaced_by_a_copy(fake_pool):
    pool_bytes, _, events = fake_pool
    zero = _ZeroLike(pool_bytes)
    made = []
    inner = zero.step

    def step():
        inner()
        made.append(zero._global_grad_norm)

    zero.step = step
    install_pooled_step(zero, pool="POOL", stream=_Stream("capture", events))
    zero.step()
    zero.step()
    assert made[-1] is not zero._global_grad_norm and torch.equal(made[-1], zero._global_grad_norm)


def test_a_step_that_leaves_memory_in_the_pool_is_refused(fake_pool):
    pool_bytes, _, events = fake_pool
    zero = _ZeroLike(pool_bytes, leak=512)
    install_pooled_step(zero, pool="POOL", stream=_Stream("capture", events))
    zero.step()  # unpooled first step: not checked
    with pytest.raises(RuntimeError, match="left 512 bytes allocated in the CUDA-graph memory pool"):
        zero.step()
