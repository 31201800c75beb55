"""The layers replayed as CUDA graphs (``kernels.cuda_graphs``) train, evaluate and resume like eager layers."""

from __future__ import annotations

import pytest
import torch

from litespark.model.build import position_ids_for
from tests.helpers.batches import micro_batches
from tests.helpers.gpu_models import build_on_gpu, losses_and_norms

pytestmark = pytest.mark.gpu


def evaluate_once(engine, sequences: torch.Tensor) -> float:
    """The trainer's evaluation path on one batch: eval mode, fresh FP8 weights, no autograd."""
    from litespark.training.step import refresh_fp8_weight_cache

    engine.eval()
    refresh_fp8_weight_cache(engine)
    tokens, labels = sequences[:, :-1], sequences[:, 1:]
    with torch.no_grad():
        losses = engine(input_ids=tokens, position_ids=position_ids_for(tokens), attention_mask=None, labels=labels)
    engine.train()
    return float(losses.float().mean())


@pytest.mark.parametrize("fp8,captured", [(False, None), (True, None), (True, 2)], ids=["bf16", "fp8", "fp8-first2of4"])
def test_cuda_graphs_train_like_eager(dist_world_1, fp8, captured):
    """kernels.cuda_graphs through the trainer's engine and train_step, 4 layers, 2 micro-batches per
    step (so gradients accumulate across replays, the FP8 weight cache is both refreshed and reused
    inside the graphs, and TE's reused weight-gradient buffers are overwritten by the next layer's
    backward), with an evaluation mid-run: every step's gradient norm and loss, and the evaluation
    loss, follow the eager run's, which they could not if a graph kept stale weights or casts or a
    reused buffer were read after its next use, and every training call of a captured layer was a
    replay (``captured``: kernels.cuda_graph_layers, the rest eager)."""
    if fp8 and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FP8 needs Hopper or newer")
    from litespark.runtime.cuda_graphs import _ReplayingForward
    from litespark.runtime.engine import build_engine
    from litespark.training.step import train_step

    steps, runs, evals = 8, {}, {}
    for graphs in (False, True):
        partial = [f"kernels.cuda_graph_layers={captured}"] if graphs and captured else []
        # The eager run keeps the graphed run's bf16 gradients (the graphs cannot use fp32 accumulation).
        plan, model = build_on_gpu(
            "te",
            f"precision.fp8={str(fp8).lower()}",
            f"kernels.cuda_graphs={str(graphs).lower()}",
            "model.num_layers=4",
            *partial,
            "precision.fp32_grad_accumulation=false",
            "data.global_batch_size=4",
            "optim.lr=1e-3",
            "optim.warmup_iters=2",
            f"run.train_iters={steps}",
            "optim.min_lr=1e-3",
        )
        assert plan.cuda_graphs is graphs and plan.cuda_graph_layers == ((captured or 4) if graphs else 0)
        engine, _, _ = build_engine(plan, model)
        g = torch.Generator().manual_seed(11)
        data = torch.randint(0, 64, (4, plan.config.model.seq_length + 1), generator=g).cuda()
        runs[graphs] = []
        batches = micro_batches(data)
        for step in range(steps):
            loss = float(train_step(engine, batches))
            runs[graphs].append((loss, float(engine.get_global_grad_norm())))
            if step == steps // 2:  # an evaluation mid-run (eager layers), then training goes on
                evals[graphs] = evaluate_once(engine, data[:2])
        if graphs:
            forwards = [layer.forward for layer in engine.module.decoder.layers]
            n = captured or len(forwards)
            assert all(isinstance(f, _ReplayingForward) for f in forwards[:n])
            assert not any(isinstance(f, _ReplayingForward) for f in forwards[n:])
            assert [(r.replays, r.fallbacks) for r in forwards[:n]] == [(2 * steps, 0)] * n
        del engine, model
        torch.cuda.empty_cache()
    losses = [loss for loss, _ in runs[True]]
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall with graphs: {losses}"
    tol = 0.03 if fp8 else 0.01
    for step, ((eager, eager_norm), (graphed, graphed_norm)) in enumerate(zip(runs[False], runs[True])):
        assert abs(graphed_norm - eager_norm) <= tol * eager_norm, (
            f"step {step}: gradient norm graphed {graphed_norm:.4f} vs eager {eager_norm:.4f}; (loss, norm) {runs}"
        )
        assert abs(graphed - eager) <= tol * eager, (
            f"step {step}: loss graphed {graphed:.4f} vs eager {eager:.4f}; {runs}"
        )
    assert abs(evals[True] - evals[False]) <= tol * evals[False], f"evaluation loss: {evals}"


def test_cuda_graphs_resume_continues_like_uninterrupted(dist_world_1, tmp_path):
    """A checkpoint saved mid-run with graphed layers and loaded into a freshly captured engine goes
    on as the uninterrupted run does.  The graphs read the weights and TE's FP8 scales and amax
    histories at the addresses they were captured with, so loading must write into those tensors; a
    load that replaced them would leave the replays on the new engine's initial weights or scales."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("FP8 needs Hopper or newer")
    from litespark.config import to_dict
    from litespark.runtime.engine import build_engine
    from litespark.training.checkpoint import save_checkpoint
    from litespark.training.resume import load_planned, plan_resume

    overrides = (
        "precision.fp8=true",
        "kernels.cuda_graphs=true",
        "model.num_layers=4",
        "data.global_batch_size=4",
        "optim.lr=1e-3",
        "optim.warmup_iters=2",
        "run.train_iters=8",
        "optim.min_lr=1e-4",
    )
    plan, model = build_on_gpu("te", *overrides)
    engine, _, _ = build_engine(plan, model)
    losses_and_norms(engine, plan, 4, seed=5)
    save_checkpoint(engine, tmp_path, 4, {"step": 4, "config": to_dict(plan.config)}, keep_last=1)
    uninterrupted = losses_and_norms(engine, plan, 4, seed=5)
    del engine, model
    torch.cuda.empty_cache()

    plan, model = build_on_gpu(
        "te", *overrides, "run.seed=99"
    )  # other initial weights: the checkpoint must replace them
    engine, _, _ = build_engine(plan, model)
    assert load_planned(engine, plan_resume(plan.config, tmp_path, 1))["step"] == 4
    resumed = losses_and_norms(engine, plan, 4, seed=5)
    replays = [layer.forward.replays for layer in engine.module.decoder.layers]
    assert replays == [2 * 4] * 4, f"not every training forward was a replay: {replays}"
    for step, ((ref, ref_norm), (got, got_norm)) in enumerate(zip(uninterrupted, resumed)):
        assert abs(got - ref) <= 2e-3 * ref and abs(got_norm - ref_norm) <= 1e-2 * ref_norm, (
            f"step {step + 5}: (loss, grad norm) resumed {resumed} vs uninterrupted {uninterrupted}"
        )
