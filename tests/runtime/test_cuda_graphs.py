"""The CUDA-graph layer replay's dispatch, on the CPU: which calls replay, which run eagerly, and the
FP8 weight-cache flag handed to the graph.  The capture itself needs a GPU (tests/runtime/test_cuda_graphs_gpu.py)."""

from __future__ import annotations

import inspect

import pytest
import torch

from litespark.config import ConfigError, apply_overrides, resolve
from litespark.config.presets import get_preset
from litespark.runtime.cuda_graphs import _MUST_BE_NONE, _ReplayingForward

SEQ, MB, HIDDEN = 8, 2, 4


class _FlaggedLinear(torch.nn.Linear):
    """Stands in for a Megatron TE linear: carries ``is_first_microbatch``."""

    def __init__(self):
        super().__init__(HIDDEN, HIDDEN)
        self.is_first_microbatch = True


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = _FlaggedLinear()
        self.layer_number = 1

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return self.fc(hidden_states), kwargs.get("context")


def _replaying():
    layer = _Layer()
    calls = []

    def graphed(hidden, rope, is_first_microbatch):
        calls.append(is_first_microbatch)
        return hidden * 2

    replay = _ReplayingForward(layer, graphed, layer.forward, torch.Size([SEQ, MB, HIDDEN]), torch.Size([SEQ, 1, 1, 2]))
    layer.forward = replay
    return layer, replay, calls


def _kwargs(**changes):
    kwargs = dict.fromkeys(_MUST_BE_NONE)
    kwargs["rotary_pos_emb"] = torch.zeros(SEQ, 1, 1, 2)
    kwargs.update(changes)
    return kwargs


def test_matching_training_calls_replay_and_pass_the_weight_cache_flag():
    layer, replay, calls = _replaying()
    x = torch.ones(SEQ, MB, HIDDEN)
    out, context = layer(hidden_states=x, **_kwargs())
    assert torch.equal(out, x * 2) and context is None
    out, _ = layer(hidden_states=x, **_kwargs())
    assert calls == [True, False], "first call of a step re-quantises, later calls reuse the cache"
    assert layer.fc.is_first_microbatch is False
    layer.fc.is_first_microbatch = True  # what refresh_fp8_weight_cache does before the next step
    layer(hidden_states=x, **_kwargs())
    assert calls == [True, False, True] and replay.replays == 3 and replay.fallbacks == 0


@pytest.mark.parametrize("why", ["eval", "no_grad", "shape", "mask", "no rope", "positional"])
def test_other_calls_run_the_eager_forward(why):
    layer, replay, calls = _replaying()
    x = torch.ones(SEQ, MB, HIDDEN)
    kwargs = _kwargs()
    if why == "eval":
        layer.eval()
    elif why == "shape":
        x = x[:, :1]
    elif why == "mask":
        kwargs["attention_mask"] = torch.ones(1)
    elif why == "no rope":
        kwargs["rotary_pos_emb"] = None
    with torch.set_grad_enabled(why != "no_grad"):
        if why == "positional":  # TransformerBlock passes keywords; anything else is not what was captured
            mask = kwargs.pop("attention_mask")
            out, _ = layer(x, mask, **kwargs)
        else:
            out, _ = layer(hidden_states=x, **kwargs)
    assert calls == [], f"{why}: the graph was replayed"
    assert torch.allclose(out, layer.fc(x)), f"{why}: not the eager result"
    assert replay.fallbacks == (0 if why in ("eval", "no_grad") else 1)


def test_block_arguments_still_match_megatron():
    """The keywords TransformerBlock passes to each layer are exactly the captured ones: a new keyword
    in a later Megatron-Core would be silently ignored by the replay, so this must be revisited."""
    import ast
    import textwrap

    from megatron.core.transformer.transformer_block import TransformerBlock

    tree = ast.parse(textwrap.dedent(inspect.getsource(TransformerBlock.forward)))
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "layer"
    ]
    assert calls, "TransformerBlock.forward no longer calls layer(...)"
    for call in calls:
        assert {k.arg for k in call.keywords} == {"hidden_states", "rotary_pos_emb", *_MUST_BE_NONE}


def test_torch_backend_refuses_cuda_graphs():
    cfg = apply_overrides(get_preset("tiny"), ["kernels.cuda_graphs=true"])
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ConfigError, match="kernels.cuda_graphs=true needs Transformer Engine on a CUDA host"):
        resolve(cfg)


class _StaticBufferGrad(torch.autograd.Function):
    """Returns its weight's gradient in one reused buffer, as a replayed graph's backward does."""

    buffer = torch.zeros(3)

    @staticmethod
    def forward(ctx, weight, grad_value):
        ctx.grad_value = grad_value
        return weight.sum()

    @staticmethod
    def backward(ctx, _):
        _StaticBufferGrad.buffer.copy_(ctx.grad_value)
        return _StaticBufferGrad.buffer.detach(), None


@pytest.mark.parametrize("hooked", [False, True])
def test_first_gradient_is_copied_out_of_the_graph_buffer(hooked):
    """Without the hook AccumulateGrad adopts the reused buffer and two micro-batches sum to 2 x g2
    (the reason the hook exists); with it they sum to g1 + g2."""
    from litespark.runtime.cuda_graphs import _own_first_gradient

    weight = torch.nn.Parameter(torch.zeros(3))
    if hooked:
        weight.register_hook(lambda g: _own_first_gradient(weight, g))
    g1, g2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    for value in (g1, g2):
        _StaticBufferGrad.apply(weight, value).backward()
    expected = g1 + g2 if hooked else 2 * g2
    assert torch.equal(weight.grad, expected)


def _fragments(model) -> list[tuple[int, bool]]:
    """(address, tracked by autograd) of DeepSpeed's bf16 slice of each weight (no tensor kept)."""
    return [
        (p._hp_mapping.lp_fragment.data_ptr(), p._hp_mapping.lp_fragment.grad_fn is not None)
        for p in model.parameters()
        if getattr(p, "_hp_mapping", None) is not None
    ]


def test_deepspeed_retained_grad_nodes_are_released(dist_world_1):
    """DeepSpeed ZeRO-1 keeps each weight's AccumulateGrad node alive through ``_hp_mapping.lp_fragment``
    (which breaks graph capture on the GPU); the release detaches it without moving the data, and
    refuses, naming a parameter, when something else holds a node."""
    from litespark.model.build import build_model
    from litespark.runtime.cuda_graphs import release_retained_grad_nodes
    from litespark.runtime.distributed import init_distributed
    from litespark.runtime.engine import build_engine

    plan = resolve(apply_overrides(get_preset("tiny"), ["data.global_batch_size=4", "data.micro_batch_size=2"]))
    init_distributed(plan.tensor_parallel, plan.config.run.seed)
    engine, _, _ = build_engine(plan, build_model(plan))
    model = engine.module
    before = _fragments(model)
    assert before and all(tracked for _, tracked in before), "DeepSpeed no longer keeps grad-tracking slices"
    release_retained_grad_nodes(model)
    after = _fragments(model)
    assert [ptr for ptr, _ in after] == [ptr for ptr, _ in before], "the fragments must still alias DeepSpeed's weights"
    assert not any(tracked for _, tracked in after)
    name, weight = next(iter(model.named_parameters()))
    holder = weight * 1  # its grad_fn keeps the weight's AccumulateGrad node alive
    with pytest.raises(RuntimeError, match=rf"the gradient node of 1 parameters \(e.g. {name}\) is kept alive"):
        release_retained_grad_nodes(model)
    del holder
