"""The allocator-trace replay behind ``python -m litespark.bench.memory_peak``: the allocated peak and
what was live at it, by allocation site; graph-pool allocations apart; the reserved peak."""

from __future__ import annotations

import pytest

from litespark.bench.memory_peak import allocation_site, peak_breakdown, private_pool_gib

GIB = 2**30
TORCH = {"filename": "/site/torch/nn/modules/module.py", "line": 10, "name": "_call_impl"}
ADAM = {"filename": "/site/deepspeed/runtime/zero/stage_1_and_2.py", "line": 937, "name": "initialize_optimizer_states"}
LAYER = {"filename": "/work/litespark/model/modules/mlp.py", "line": 42, "name": "forward"}


def _alloc(addr, gib, frames, pool=(0, 0)):
    return {"action": "alloc", "addr": addr, "size": int(gib * GIB), "frames": frames, "pool_id": pool}


def _free(addr, gib):
    return {"action": "free_completed", "addr": addr, "size": int(gib * GIB)}


def test_site_is_the_innermost_frame_outside_torch():
    assert (
        allocation_site([TORCH, ADAM, LAYER])
        == "deepspeed/runtime/zero/stage_1_and_2.py:937 initialize_optimizer_states"
    )
    assert allocation_site([TORCH]) == "/site/torch/nn/modules/module.py:10 _call_impl"
    assert allocation_site([]) == "unknown"


def test_peak_is_replayed_with_what_was_live_then():
    trace = [
        {"action": "segment_alloc", "addr": 0, "size": 8 * GIB},
        _alloc(1, 2.0, [TORCH, ADAM]),
        _alloc(2, 3.0, [LAYER]),
        _alloc(3, 1.0, [LAYER]),  # peak: 6 GiB (2 Adam + 4 layer)
        _free(2, 3.0),
        _free(3, 1.0),
        _alloc(4, 2.5, [LAYER], pool=(1, 0)),  # 4.5 GiB: below the peak; the pool's own peak is 2.5
        _free(4, 2.5),
        {"action": "segment_free", "addr": 0, "size": 8 * GIB},
        {"action": "segment_alloc", "addr": 9, "size": 3 * GIB},
    ]
    report = peak_breakdown(trace)
    assert report["peak_allocated_gib"] == pytest.approx(6.0)
    assert report["peak_event"] == 3
    assert report["peak_reserved_gib"] == pytest.approx(8.0)
    live = {row["site"]: row["gib"] for row in report["live_at_peak_gib"]}
    assert live == {
        "litespark/model/modules/mlp.py:42 forward": pytest.approx(4.0),
        "deepspeed/runtime/zero/stage_1_and_2.py:937 initialize_optimizer_states": pytest.approx(2.0),
    }
    assert report["pool_peak_allocated_gib"] == pytest.approx(2.5)
    assert [row["site"] for row in report["live_in_pools_at_their_peak_gib"]] == [
        "[graph pool] litespark/model/modules/mlp.py:42 forward"
    ]


def test_private_pool_segments_are_summed():
    segments = [
        {"total_size": 4 * GIB, "segment_pool_id": (0, 0)},
        {"total_size": 2 * GIB, "segment_pool_id": (1, 3)},
        {"total_size": 1 * GIB, "segment_pool_id": [1, 3]},
    ]
    assert private_pool_gib(segments) == pytest.approx(3.0)
