"""``python -m litespark.bench.qkv_rope_kernels`` on a CUDA GPU."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_qkv_rope_microbench_times_the_same_rotation_in_both_implementations(tmp_path):
    """litespark/bench/qkv_rope_kernels.py at a small shape: both kernels timed, same results."""
    import json
    import subprocess
    import sys

    from tests.helpers.processes import ROOT

    out = tmp_path / "rope.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "litespark.bench.qkv_rope_kernels",
            "--seq",
            "512",
            "--micro-batch",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for name in ("te", "triton"):
        assert result[name]["fwd_ms"] > 0 and result[name]["fwd_bwd_ms"] > result[name]["fwd_ms"], result[name]
    assert set(result["triton_vs_te_max_abs"]) == {"q", "k", "v", "qkv_grad"}
    assert max(result["triton_vs_te_max_abs"].values()) < 0.1, result["triton_vs_te_max_abs"]
    assert result["triton_vs_te_max_abs"]["v"] == 0.0  # v is copied, not rotated
