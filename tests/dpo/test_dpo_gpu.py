"""DPO on the Transformer Engine backend: before the weights move, the policy's log-probabilities are
the reference pass's, so the first step's rewards are zero and the loss is log 2.  The reference is
computed in other micro-batches than training puts the pairs in; a number format whose rounding
depends on the rest of the micro-batch (per-tensor FP8 scales) or on history (delayed scaling) shows
here as non-zero margins: on an H200 (4 layers of llama-3b) tensorwise gave a first-step loss of
0.646 and margins of 0.10, and DPO refuses it and delayed; blockwise FP8 (DPO's default) and BF16
were within 1e-5.  Skipped without CUDA; run with ``make gpu-test``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.helpers.processes import read_metrics, run_module

pytestmark = pytest.mark.gpu


def _pairs(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            prompt = rng.integers(0, 32000, int(rng.integers(50, 600))).tolist()
            chosen = rng.integers(0, 32000, int(rng.integers(20, 400))).tolist()
            rejected = rng.integers(0, 32000, int(rng.integers(20, 400))).tolist()
            f.write(json.dumps({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}) + "\n")


def _first_steps(tmp_path, *sets: str) -> list[dict]:
    data = tmp_path / "pairs.jsonl"
    _pairs(data, 64, 0)
    run = tmp_path / "run"
    args = ["--set", "model.num_layers=4", "--set", "model.seq_length=2048", "--set", "data.micro_batch_size=2"]
    args += ["--set", "data.global_batch_size=4", "--set", "run.log_interval=1", "--set", "checkpoint.enabled=false"]
    run_module(
        "litespark.dpo", "--preset", "llama-3b", "--data", str(data), "--run-dir", str(run), "--train-iters", "3",
        *args, *[a for s in sets for a in ("--set", s)], timeout=600,
    )  # fmt: skip
    return read_metrics(run)


@pytest.mark.parametrize(
    "sets",
    [(), ("precision.fp8=false",)],
    ids=["fp8-blockwise", "bf16"],
)
def test_before_the_weights_move_the_policy_is_the_reference(tmp_path, sets):
    records = _first_steps(tmp_path, *sets)
    # Step 1 runs on the initial weights: the policy is still the reference.
    for r in records[:1]:
        assert abs(r["rewards/chosen"]) < 1e-3 and abs(r["rewards/rejected"]) < 1e-3, r
        assert r["loss"] == pytest.approx(math.log(2), abs=1e-3), r
