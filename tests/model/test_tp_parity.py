"""Tensor parallelism over gloo: TP=2 gives the TP=1 loss and gradient norm (fp32, tolerance 1e-5)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import torchrun

pytestmark = pytest.mark.slow


def _run(tmp_path, tp: int, *overrides: str) -> dict:
    out = tmp_path / f"tp{tp}.json"
    sets = [a for o in (f"parallel.tensor_parallel={tp}", *overrides) for a in ("--set", o)]
    torchrun("tests/helpers/workers/loss_worker.py", tp, "--out", str(out), *sets)
    return json.loads(out.read_text())


def test_tp2_reproduces_tp1(tmp_path):
    shape = (
        "model.hidden_size=96",
        "model.num_attention_heads=6",
        "model.num_query_groups=2",
        "model.ffn_hidden_size=192",
        "model.rotary_base=50000",
    )
    one, two = _run(tmp_path, 1, *shape), _run(tmp_path, 2, *shape)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-5)
    assert two["grad_sq"] == pytest.approx(one["grad_sq"], rel=1e-5)
