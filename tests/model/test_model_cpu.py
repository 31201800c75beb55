"""The torch backend on CPU: trains (finite loss, a gradient for every parameter), has the analytic
parameter count, and computes exactly the function of transformers.LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch

from litespark.config import apply_overrides, resolve
from litespark.config.presets import get_preset
from litespark.convert.hf_llama import from_hf_state_dict, to_hf_config_kwargs, to_hf_state_dict, to_llama_config_kwargs
from litespark.model.build import build_model, padded_vocab_size, position_ids_for
from litespark.runtime.distributed import init_distributed
from litespark.training.metrics import count_parameters


def _build(overrides=(), seed=1234):
    """The tiny preset with ``overrides`` (its config as given) and its model, built from the plan."""
    plan = resolve(apply_overrides(get_preset("tiny"), list(overrides)))
    init_distributed(plan.tensor_parallel, seed)
    return plan.config, build_model(plan)


def test_forward_backward_on_cpu(dist_world_1):
    cfg, model = _build()
    tokens = torch.randint(0, cfg.model.vocab_size, (3, cfg.model.seq_length + 1))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    losses = model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels)
    assert losses.shape == (3, cfg.model.seq_length)
    loss = losses.mean()
    assert torch.isfinite(loss)
    # A freshly initialised model predicts roughly uniformly over the padded vocabulary.
    assert abs(float(loss.detach()) - torch.log(torch.tensor(float(padded_vocab_size(cfg))))) < 0.2
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_matches_analytic(dist_world_1, tied):
    cfg, model = _build([f"model.tie_embeddings={str(tied).lower()}"])
    n = count_parameters(cfg.model, vocab_size=padded_vocab_size(cfg))
    assert sum(p.numel() for p in model.parameters()) == n.total


def test_a_few_sgd_steps_lower_the_loss_on_a_fixed_batch(dist_world_1):
    cfg, model = _build()
    tokens = torch.randint(
        0, cfg.model.vocab_size, (4, cfg.model.seq_length + 1), generator=torch.Generator().manual_seed(0)
    )
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5, losses


SHAPES = {
    "gqa": [
        "model.hidden_size=96",
        "model.num_attention_heads=6",
        "model.num_query_groups=2",
        "model.ffn_hidden_size=200",
        "model.vocab_size=300",
        "model.rotary_base=50000",
    ],
    "mha-odd": [
        "model.hidden_size=40",
        "model.num_attention_heads=5",
        "model.num_query_groups=5",
        "model.ffn_hidden_size=72",
        "model.vocab_size=97",
        "model.num_layers=3",
        "model.norm_epsilon=1e-6",
    ],
    "mqa-tied": [
        "model.hidden_size=64",
        "model.num_attention_heads=4",
        "model.num_query_groups=1",
        "model.tie_embeddings=true",
        "model.rotary_base=500000",
    ],
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_equal_hf_llama(dist_world_1, shape):
    import transformers

    torch.manual_seed(hash(shape) % 1000)
    cfg, model = _build(SHAPES[shape], seed=hash(shape) % 1000)
    model.eval()
    # Norm weights start at one; perturb them so a swapped norm could not hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # layer_norm_weight (fused slots) and final_layernorm
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**to_llama_config_kwargs(to_hf_config_kwargs(cfg.model)))
    ).eval()
    hf.load_state_dict(to_hf_state_dict(sd, cfg.model), strict=True)
    for _ in range(2):  # fresh random batches
        ids = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_length))
        with torch.no_grad():
            ours = model(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None)[
                ..., : cfg.model.vocab_size
            ]
            ref = hf(input_ids=ids).logits
        rel = float((ours - ref).norm() / ref.norm())
        assert rel < 1e-5, f"{shape}: relative logit difference {rel:.2e}"


def test_hf_mapping_round_trip_is_exact(dist_world_1):
    cfg, model = _build(SHAPES["gqa"])
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    hf = to_hf_state_dict(sd, cfg.model)
    back = from_hf_state_dict(hf, cfg.model, padded_vocab_size(cfg))
    assert back.keys() == sd.keys()
    for k in sd:
        ours = sd[k] if "word_embeddings" not in k and "output_layer" not in k else sd[k][: cfg.model.vocab_size]
        assert torch.equal(back[k][: ours.shape[0]], ours), k


@pytest.fixture
def clean_norm_switches(monkeypatch):
    from litespark.model.build import TE_CUDNN_NORM_SWITCHES

    for name in TE_CUDNN_NORM_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    return TE_CUDNN_NORM_SWITCHES


@pytest.mark.parametrize("kernel, value", [("cudnn", "1"), ("te", "0")])
def test_norm_kernel_sets_both_te_switches(clean_norm_switches, kernel, value):
    import os

    from litespark.model.build import select_te_norm_kernels

    select_te_norm_kernels(kernel)
    assert {name: os.environ.get(name) for name in clean_norm_switches} == dict.fromkeys(clean_norm_switches, value)


def test_norm_kernel_overrides_a_conflicting_switch_with_a_warning(clean_norm_switches, monkeypatch, caplog):
    import logging
    import os

    from litespark.model.build import select_te_norm_kernels

    monkeypatch.setenv(clean_norm_switches[0], "1")
    with caplog.at_level(logging.WARNING):
        select_te_norm_kernels("te")
    assert os.environ[clean_norm_switches[0]] == "0"
    assert f"{clean_norm_switches[0]}=1 in the environment overridden by kernels.norm_kernel=te" in caplog.text
    with pytest.raises(ValueError, match="'te' or 'cudnn'"):
        select_te_norm_kernels("fast")


def test_torch_backend_leaves_the_te_switches_alone(dist_world_1, clean_norm_switches):
    import os

    plan = resolve(apply_overrides(get_preset("tiny"), ["kernels.backend=torch", "kernels.norm_kernel=cudnn"]))
    init_distributed(plan.tensor_parallel, 1234)
    build_model(plan)
    assert plan.backend == "torch"
    assert not any(name in os.environ for name in clean_norm_switches)
