"""fp32 gradients written by Transformer Engine into DeepSpeed's buffers, on a CUDA GPU."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.gpu_models import build_on_gpu, losses_and_norms

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_fp32_grad_accumulation_trains_like_bf16_gradients(dist_world_1, fp8):
    """precision.fp32_grad_accumulation: every TE linear's weight gradient goes straight into
    DeepSpeed's fp32 buffer (no .grad), and 8 steps of 2 micro-batches, clipping active, follow the
    run with bf16 gradients.

    The first 3 steps (warm-up learning rates, where the loss has not moved yet, so both runs still
    hold practically the same weights) must give the same gradient norm within 0.5%: there the runs
    differ only in the accumulation dtype, and a gradient that was missed, counted twice or left over
    from the last step moves the norm by far more.  After that the weights drift apart and the check
    is that the runs track: losses within 1%, norms within 2% in BF16 and 10% in FP8.  FP8 gets the
    room because a slightly different weight changes which values round where in the FP8 casts, and
    the seventh step of this run is a gradient spike (the norm nearly doubles in every variant
    measured): on an H100 with the FP8 output layer the two runs' norms were 0.00% apart in the first
    3 steps and 5.9% apart at the spike, losses within 0.06% (benchmarks/results/fp8head_h100_20261128/)."""
    if fp8 and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FP8 needs Hopper or newer")
    from litespark.runtime.engine import build_engine

    early = 3  # steps 0-2 run at warm-up learning rates; the loss had not moved yet in any measured run
    runs = {}
    for fused in (True, False):
        plan, model = build_on_gpu(
            "te",
            f"precision.fp8={str(fp8).lower()}",
            "data.global_batch_size=4",
            "optim.lr=1e-3",
            "optim.warmup_iters=2",
            "optim.min_lr=1e-3",
            "optim.clip_grad=0.5",
            f"precision.fp32_grad_accumulation={str(fused).lower()}",
        )
        assert plan.fp32_grad_accumulation is fused
        engine, optimizer, _ = build_engine(plan, model)
        assert type(optimizer).__name__ == ("BF16_Optimizer" if fused else "DeepSpeedZeroOptimizer")
        if fused:
            link = engine.litespark_fp32_grads
            # + the output layer where it is a TE linear too (precision.fp8_output_layer)
            assert len(link.slots) == 4 * plan.config.model.num_layers + plan.fp8_output_layer, (
                "not every TE linear (qkv, proj, fc1, fc2, FP8 output layer) is linked"
            )
        out = losses_and_norms(engine, plan, 8)
        if fused:
            qkv = engine.module.decoder.layers[0].self_attention.linear_qkv.weight
            assert qkv.grad is None and qkv.main_grad.dtype == torch.float32
        runs[fused] = out
        del engine, model, optimizer
        torch.cuda.empty_cache()
    for step, ((loss, norm), (ref_loss, ref_norm)) in enumerate(zip(runs[True], runs[False])):
        norm_tol = 0.005 if step < early else (0.10 if fp8 else 0.02)
        assert abs(loss - ref_loss) <= 0.01 * ref_loss, f"step {step}: loss; fp32 {runs[True]} bf16 {runs[False]}"
        assert abs(norm - ref_norm) <= norm_tol * ref_norm, (
            f"step {step}: gradient norm {norm:.4f} vs {ref_norm:.4f}; fp32 {runs[True]} bf16 {runs[False]}"
        )
    assert runs[True][-1][0] < 0.8 * runs[True][0][0], f"loss did not fall: {runs[True]}"
