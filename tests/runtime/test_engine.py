"""build_engine's optimizer parameter groups: split to bound the ZeRO step's transient memory, same training."""

from __future__ import annotations

import pytest
import torch

from litespark.config import ConfigError, apply_overrides, resolve, validate
from litespark.config.presets import get_preset
from litespark.runtime.engine import param_groups
from tests.helpers.batches import micro_batches


def _model():
    from litespark.model.build import build_model

    return build_model(resolve(apply_overrides(get_preset("tiny"), [])))


def test_param_groups_split_matrices_in_order(dist_world_1):
    from litespark.runtime.distributed import init_distributed

    init_distributed(1, 1234)
    model = _model()
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    limit = 30_000  # tiny: the embedding and output matrices are larger, a layer's four matrices 46k
    groups = param_groups(model, 0.1, limit)
    *decay, no_decay = groups
    assert len(decay) > 2 and no_decay["weight_decay"] == 0.0 and no_decay["params"] == vectors
    assert [p for g in decay for p in g["params"]] == matrices  # every matrix once, in model order
    for g in decay:
        assert g["weight_decay"] == 0.1
        numel = sum(p.numel() for p in g["params"])
        assert numel <= limit or len(g["params"]) == 1, f"group of {numel} > {limit} with {len(g['params'])} tensors"
    whole = param_groups(model, 0.1)
    assert len(whole) == 2 and whole[0]["params"] == matrices


def test_sub_group_size_must_be_positive():
    cfg = apply_overrides(get_preset("tiny"), ["parallel.zero_sub_group_size=0"])
    with pytest.raises(ConfigError, match="parallel.zero_sub_group_size must be positive"):
        validate(cfg)


def test_split_groups_train_exactly_like_one_group(dist_world_1):
    """The same three ZeRO-1 steps (clipping on, which needs the global norm across groups) with the
    matrices in one group and in many: identical weights afterwards."""
    from litespark.model.build import build_model
    from litespark.runtime.distributed import init_distributed
    from litespark.runtime.engine import build_engine
    from litespark.training.step import train_step

    finals, counts = {}, {}
    for sub_group in (10**12, 20_000):
        plan = resolve(
            apply_overrides(
                get_preset("tiny"),
                [
                    "data.global_batch_size=4",
                    "data.micro_batch_size=2",
                    "optim.clip_grad=0.05",
                    "optim.warmup_iters=1",
                    "optim.lr=1e-2",
                    f"parallel.zero_sub_group_size={sub_group}",
                ],
            )
        )
        assert plan.zero_sub_group_size == sub_group
        init_distributed(plan.tensor_parallel, plan.config.run.seed)
        engine, optimizer, _ = build_engine(plan, build_model(plan))
        counts[sub_group] = len(optimizer.bit16_groups)
        m = plan.config.model
        data = torch.randint(0, m.vocab_size, (4, m.seq_length + 1), generator=torch.Generator().manual_seed(3))
        for _ in range(3):
            train_step(engine, micro_batches(data))
        finals[sub_group] = {
            k: v.detach().float().clone() for k, v in engine.module.state_dict().items() if isinstance(v, torch.Tensor)
        }
    assert counts[10**12] == 2 and counts[20_000] > 4, counts
    one, many = finals[10**12], finals[20_000]
    start = {k: v.float() for k, v in build_model(plan).state_dict().items() if isinstance(v, torch.Tensor)}
    assert any(not torch.equal(one[k], start[k]) for k in one), "the steps did not change the weights"
    for k in one:
        assert torch.equal(one[k], many[k]), f"{k} differs between one group and split groups"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], None),  # fp32 gradients (auto): one group
        (["precision.fp32_grad_accumulation=false"], 250_000_000),
        (["parallel.zero_stage=2"], 250_000_000),  # no fp32 gradients with ZeRO-2
        (["kernels.backend=torch", "precision.fp8=false"], 250_000_000),
        (["parallel.zero_sub_group_size=1000"], 1000),  # explicit value wins
    ],
)
def test_automatic_sub_group_size_follows_the_gradient_precision(overrides, expected):
    from litespark.config.automatic import zero_sub_group_size

    cfg = apply_overrides(
        get_preset("llama-3b"),
        ["kernels.backend=te", "kernels.cuda_graphs=false", "data.micro_batch_size=2", *overrides],
    )
    plan = resolve(cfg)
    assert plan.zero_sub_group_size == expected
    assert zero_sub_group_size(cfg, plan.fp32_grad_accumulation) == expected  # the rule the plan follows
    assert cfg.parallel.zero_sub_group_size == (1000 if expected == 1000 else None)
