"""precision.fp32_grad_accumulation: config rules, the DeepSpeed config, and the main_grad link.

Transformer Engine needs a GPU, so the link is exercised here with a CPU linear that follows TE's
``fuse_wgrad_accumulation`` contract (accumulate the fp32 weight gradient into ``weight.main_grad``,
return no ``.grad``); tests/runtime/test_fp32_grads_gpu.py runs the real TE modules.
"""

from __future__ import annotations

import pytest
import torch

from litespark.config import ConfigError, apply_overrides, resolve, validate
from litespark.config.automatic import fp32_grad_accumulation
from litespark.config.presets import get_preset
from litespark.runtime.deepspeed_config import to_deepspeed_config
from tests.helpers.te_like import TELikeLinear, ToyLM, train_toy


def _cfg(*sets: str):
    """The tiny preset (fp32 for CPU speed) in BF16, which fp32 gradient accumulation is about."""
    return apply_overrides(get_preset("tiny"), ["precision.bf16=true", *sets])


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["kernels.backend=te", "data.micro_batch_size=4", "data.global_batch_size=8"], True),
        (["kernels.backend=te", "data.micro_batch_size=2"], False),  # graphs come on automatically there
        (["kernels.backend=te", "data.micro_batch_size=2", "kernels.cuda_graphs=false"], True),
        (["kernels.backend=te", "data.micro_batch_size=4", "data.global_batch_size=8", "parallel.zero_stage=2"], False),
        (["kernels.backend=te", "data.micro_batch_size=4", "data.global_batch_size=8", "precision.bf16=false"], False),
        (["kernels.backend=torch", "data.micro_batch_size=4", "data.global_batch_size=8"], False),
        (["kernels.backend=torch", "precision.fp32_grad_accumulation=true"], True),
    ],
)
def test_automatic_setting(sets, expected):
    cfg = _cfg(*sets)
    plan = resolve(cfg)
    assert plan.fp32_grad_accumulation is expected
    assert fp32_grad_accumulation(cfg, plan.backend, plan.cuda_graphs) is expected  # the rule the plan follows


def test_resolve_decides_the_automatic_choice_in_the_plan():
    cfg = _cfg("kernels.backend=torch")
    assert resolve(cfg).fp32_grad_accumulation is False
    assert cfg.precision.fp32_grad_accumulation is None  # the config keeps its automatic setting


def test_asking_for_fp32_gradients_keeps_the_automatic_graphs_off():
    cfg = _cfg("kernels.backend=te", "data.micro_batch_size=2", "precision.fp32_grad_accumulation=true")
    plan = resolve(cfg)
    assert plan.cuda_graphs is False and plan.fp32_grad_accumulation is True
    assert cfg.kernels.cuda_graphs is None
    cfg = _cfg("kernels.backend=te", "data.micro_batch_size=2")
    plan = resolve(cfg)
    assert plan.cuda_graphs is True and plan.fp32_grad_accumulation is False
    assert cfg.kernels.cuda_graphs is None and cfg.precision.fp32_grad_accumulation is None


@pytest.mark.parametrize(
    "sets, message",
    [
        (["parallel.zero_stage=2"], "needs parallel.zero_stage=1, not 2"),
        (["precision.bf16=false"], "needs precision.bf16=true"),
        (
            ["kernels.backend=te", "kernels.cuda_graphs=true"],
            "kernels.cuda_graphs=true cannot be combined with precision.fp32_grad_accumulation=true",
        ),
    ],
)
def test_impossible_combinations_are_refused(sets, message):
    cfg = _cfg("precision.fp32_grad_accumulation=true", *sets)
    validate(cfg)  # the config alone is fine: resolving it decides what can hold
    with pytest.raises(ConfigError, match=message):
        resolve(cfg)


def test_deepspeed_config_asks_for_fp32_gradients_only_when_on():
    on = to_deepspeed_config(resolve(_cfg("precision.fp32_grad_accumulation=true")))
    assert on["data_types"] == {"grad_accum_dtype": "fp32"}
    assert on["communication_data_type"] == "fp32"  # reduced as fp32, not rounded to bf16 and back
    assert on["bf16"] == {"enabled": True, "immediate_grad_update": True}
    off = to_deepspeed_config(resolve(_cfg("precision.fp32_grad_accumulation=false")))
    assert "data_types" not in off and "communication_data_type" not in off and off["bf16"] == {"enabled": True}


class _ToyLMWithIdleLinear(ToyLM):
    """A TE-like linear that the forward never calls: the overwrite would leave its gradient stale."""

    def __init__(self):
        super().__init__()
        self.idle = TELikeLinear(32, 32)


def test_linked_weights_accumulate_into_deepspeeds_fp32_buffers(dist_world_1):
    engine, optimizer, _, _ = train_toy(True, link=True)
    link = engine.litespark_fp32_grads
    assert type(optimizer).__name__ == "BF16_Optimizer"
    assert len(link.slots) == 2 and link.numel == 32 * 64 + 64 * 64
    buffers = [g for group in optimizer.fp32_groups_gradients for g in group]
    for module in (engine.module.up, engine.module.down):
        w = module.weight
        assert module.fuse_wgrad_accumulation and w.main_grad.dtype == torch.float32
        assert any(w.main_grad.data_ptr() == b.data_ptr() for b in buffers), "main_grad is not DeepSpeed's buffer"
        assert w.grad is None, "a fused weight still produced a .grad"
    assert not hasattr(engine.module.embed.weight, "main_grad")  # not a TE linear: DeepSpeed's own path
    # The first step's participation check is done and its hooks are gone.
    assert not engine.module.up._forward_pre_hooks and not engine.module.down._forward_pre_hooks


def test_a_linked_weight_missing_from_the_first_micro_batch_is_refused(dist_world_1):
    with pytest.raises(
        RuntimeError, match=r"1 linked TE weight\(s\) took no part in the first micro-batch \(idle.weight\)"
    ):
        train_toy(True, link=True, steps=1, model_class=_ToyLMWithIdleLinear)


def test_the_optimizer_steps_on_unrounded_fp32_gradients(dist_world_1):
    """What the optimizer step sees after DeepSpeed's gradient reduction is still fp32: not rounded
    to bf16 on the way (DeepSpeed reduces in bf16 unless told otherwise)."""
    seen = []

    def spy_on_step(engine, optimizer):
        step = optimizer.step

        def spied(*args, **kwargs):
            seen.append(torch.cat([g.detach().clone() for g in optimizer.fp32_groups_gradients_flat]))
            return step(*args, **kwargs)

        optimizer.step = spied

    train_toy(True, link=True, steps=1, before_steps=spy_on_step)
    (grads,) = seen
    assert grads.dtype == torch.float32 and torch.count_nonzero(grads) > 0
    assert (grads != grads.to(torch.bfloat16).float()).any(), "the fp32 gradients were rounded to bf16"


def test_the_step_zeroes_only_gradients_that_arrive_by_addition(dist_world_1):
    """After a step the linked buffers still hold that step's gradients (the next first backward
    writes over them) and are flagged for overwriting; DeepSpeed's own gradients (embedding, norm)
    are zeroed, and no gradient counts as present.  Whether the overwrite gives the right training
    is test_fused_accumulation_trains_like_deepspeeds_own_fp32_accumulation's job."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    assert callable(BF16_Optimizer.clear_hp_grads)  # the method the link narrows
    engine, optimizer, _, _ = train_toy(True, link=True, steps=2)
    link = engine.litespark_fp32_grads
    assert optimizer.clear_hp_grads == link.clear_hp_grads
    for module in (engine.module.up, engine.module.down):
        assert module.weight.overwrite_main_grad is True
        assert module.weight.main_grad.abs().sum() > 0, "a linked gradient was zeroed"
    linked = {(i, j) for i, j in link.slots}
    others = [
        g
        for i, group in enumerate(optimizer.fp32_groups_gradients)
        for j, g in enumerate(group)
        if (i, j) not in linked
    ]
    assert len(others) == 2 and all(torch.count_nonzero(g) == 0 for g in others)  # embedding, norm weight
    assert not any(any(flags) for flags in optimizer.fp32_groups_has_gradients)
    link.mark()
    assert engine.module.up.weight.overwrite_main_grad is False


def test_fused_accumulation_trains_like_deepspeeds_own_fp32_accumulation(dist_world_1):
    """The same five steps (2 micro-batches each, clipping active; the LR warm-up leaves the first
    three at LR ~0) with the TE-like weights writing
    into main_grad and with DeepSpeed adding their bf16 .grad into the same fp32 buffers: the grad
    norms agree (they would not if the fused gradients were missed by the norm or counted twice) and
    so do the weights, up to the bf16 rounding of the unfused gradients."""
    _, _, fused, fused_norms = train_toy(True, link=True)
    _, _, plain, plain_norms = train_toy(True, link=False)
    _, _, _zero, zero_norms = train_toy(False, link=False)
    start = {k: v.float() for k, v in ToyLM().to(torch.bfloat16).state_dict().items()}
    assert any(not torch.equal(fused[k], start[k]) for k in fused), "the steps did not change the weights"
    for ref_norms in (plain_norms, zero_norms):
        for a, b in zip(fused_norms, ref_norms):
            assert abs(a - b) <= 0.01 * b, (fused_norms, ref_norms)
    for k in fused:
        moved = (plain[k] - start[k]).norm()
        assert (fused[k] - plain[k]).norm() <= 0.1 * moved, (k, float((fused[k] - plain[k]).norm()), float(moved))


@pytest.mark.slow
def test_linked_gradients_on_two_data_parallel_ranks_train_like_deepspeeds_own(dist_world_1, tmp_path):
    """DP=2 with the link: each rank's first backward overwrites its fp32 buffers, DeepSpeed
    all-reduces them in fp32 and each rank steps its half.  Norms and weights match the same run
    with DeepSpeed adding the bf16 gradients itself (a rank that kept a stale or unreduced buffer,
    or a reduction that missed the linked gradients, would not)."""
    from tests.helpers.processes import torchrun

    runs = {}
    for link in (1, 0):
        out = tmp_path / f"link{link}.pt"
        torchrun("tests/helpers/workers/fp32_link_worker.py", 2, "--link", str(link), "--out", str(out))
        runs[link] = torch.load(out)
    assert runs[1]["linked"] == 2 and runs[0]["linked"] == 0
    start = {k: v.float() for k, v in ToyLM().to(torch.bfloat16).state_dict().items()}
    for a, b in zip(runs[1]["norms"], runs[0]["norms"]):
        assert abs(a - b) <= 0.01 * b, (runs[1]["norms"], runs[0]["norms"])
    one_rank_norms = train_toy(True, link=True)[3]
    assert any(abs(a - b) > 0.01 * b for a, b in zip(runs[1]["norms"], one_rank_norms)), (
        "two ranks saw the same gradients as one: the second rank's data did not count"
    )
    for k, fused in runs[1]["weights"].items():
        plain = runs[0]["weights"][k]
        moved = (plain - start[k]).norm()
        assert moved > 0 and (fused - plain).norm() <= 0.1 * moved, (k, float((fused - plain).norm()), float(moved))


@pytest.mark.slow
def test_fp32_gradients_on_two_data_parallel_ranks(tmp_path):
    """DP=2 with precision.fp32_grad_accumulation: DeepSpeed's BF16_Optimizer all-reduces the fp32
    buffers and each rank steps its half of the flat parameters.  The losses track the run with bf16
    gradients, and the fp32 masters that ``to-hf --dtype fp32`` consolidates from both ranks'
    partitions round to the bf16 weights the checkpoint stores (a wrong offset or rank order would
    not)."""
    from litespark.convert.litespark_checkpoint import fp32_master_weights, read_checkpoint, resolve_checkpoint
    from tests.helpers.processes import read_metrics, run_training

    common = [
        "data.source=mock",
        "run.log_interval=1",
        "optim.warmup_iters=2",
        "optim.decay_iters=100",
        "precision.bf16=true",
        "run.train_iters=6",
        "checkpoint.save_interval=6",
    ]
    losses = {}
    for fp32 in (True, False):
        run_dir = tmp_path / str(fp32)
        run_training(run_dir, *common, f"precision.fp32_grad_accumulation={str(fp32).lower()}", nproc=2)
        losses[fp32] = {r["step"]: r["loss"] for r in read_metrics(run_dir)}
    assert sorted(losses[True]) == list(range(1, 7))
    for step, loss in losses[True].items():
        assert loss == pytest.approx(losses[False][step], rel=2e-2), (step, losses)
    step_dir = resolve_checkpoint(tmp_path / "True")
    assert sorted(p.name for p in step_dir.glob("bf16_zero_pp_rank_*_optim_states.pt")) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    _, (stored,) = read_checkpoint(step_dir)
    masters = fp32_master_weights(step_dir)
    assert masters.keys() == stored.keys()
    for name, weight in stored.items():
        assert masters[name].dtype == torch.float32 and not masters[name].requires_grad, name
        assert torch.equal(masters[name].to(torch.bfloat16), weight), name
