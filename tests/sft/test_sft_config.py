"""The SFT settings of the config: what is refused, and what packed rows change in the plan."""

from __future__ import annotations

import pytest

from litespark.config import ConfigError, apply_overrides, resolve, validate
from litespark.config.automatic import cuda_graphs_refusal, fused_qkv_rope
from litespark.config.presets import get_preset

SFT = ["data.source=sft", "sft.data=chat.jsonl", "sft.tokenizer=tok"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["data.source=sft"], "data.source=sft needs sft.data"),
        ([*SFT, "sft.valid_fraction=1.0"], "sft.valid_fraction must lie in [0, 1)"),
        ([*SFT, "run.eval_interval=10"], "needs sft.valid_fraction > 0"),
        ([*SFT, "kernels.cuda_graphs=true"], "kernels.cuda_graphs=true cannot run data.source=sft"),
        ([*SFT, "sft.too_long=cut"], "sft.too_long"),
    ],
)
def test_sft_settings_that_cannot_run_are_refused_in_one_line(sets, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")) as info:
        validate(apply_overrides(get_preset("tiny"), sets))
    assert "\n" not in str(info.value)


def test_packed_rows_turn_off_the_fused_qkv_rope_and_the_automatic_cuda_graphs():
    """Megatron's single-QKV RoPE does not take document boundaries, and graphs need fixed shapes:
    an SFT run on the te backend plans neither, a pretraining run both."""
    pretrain = get_preset("llama-3b")
    sft = apply_overrides(get_preset("llama-3b"), SFT)
    assert fused_qkv_rope(pretrain, "te") and not fused_qkv_rope(sft, "te")
    assert cuda_graphs_refusal(pretrain, "te") is None and "packed SFT rows" in cuda_graphs_refusal(sft, "te")
    for cfg, graphs in ((pretrain, True), (sft, False)):
        plan = resolve(apply_overrides(cfg, ["data.micro_batch_size=2"]), backend="te")
        assert plan.cuda_graphs is graphs
