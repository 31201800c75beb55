"""The output layer (LM head) as a Transformer Engine linear that runs under the model's FP8 recipe.

Megatron-Core builds ``GPTModel.output_layer`` as its own BF16 ``ColumnParallelLinear``, outside the
FP8 region of the transformer block, so its three GEMMs (forward, input gradient, weight gradient)
run in BF16.  Megatron keeps the first and last layers in higher precision by default because the
logits and their gradient are where FP8's 3-bit (E4M3) and 2-bit (E5M2) mantissas hurt most; the
benchmark's FP8-vs-BF16 loss check is what decided that Litespark's head runs in FP8 by default
with FP8 and untied embeddings (``precision.fp8_output_layer``; the gain and the check:
docs/performance.md).

:func:`use_fp8_output_layer` swaps the module after ``GPTModel`` is built: same parameter name
(``output_layer.weight``, plus TE's ``output_layer._extra_state`` with the FP8 scaling state), same
weight values, same call signature, and the forward runs inside Megatron's own FP8 context for the
config.  Being a TE linear with a single weight, it is also linked to DeepSpeed's fp32 gradient
buffer by :mod:`litespark.runtime.fp32_grads` like the layers' linears.  Tied embeddings are refused: the
tied weight is the embedding's, which this module does not own.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def fp8_output_layer_class():
    """``FP8OutputLayer``: Megatron's ``TEColumnParallelLinear`` called like ``ColumnParallelLinear``
    (defined on first use: Transformer Engine imports only on a GPU host)."""
    from megatron.core.extensions.transformer_engine import TEColumnParallelLinear
    from megatron.core.fp8_utils import get_fp8_context

    class FP8OutputLayer(TEColumnParallelLinear):
        """The LM head in FP8; ``forward(hidden, weight=None, runtime_gather_output=None) -> (logits, None)``."""

        def forward(self, input_, weight=None, runtime_gather_output=None):
            if weight is not None:
                raise RuntimeError(
                    "precision.fp8_output_layer: the output layer was handed an outside weight "
                    "(tied embeddings?), which it does not support"
                )
            if runtime_gather_output:
                raise RuntimeError("precision.fp8_output_layer: gathering the logits over TP is not supported")
            with get_fp8_context(self.config):
                logits, _ = super().forward(input_)
            return logits, None

    return FP8OutputLayer


def use_fp8_output_layer(model) -> None:
    """Replace ``model.output_layer`` (Megatron's BF16 ``ColumnParallelLinear``) by an
    ``FP8OutputLayer`` holding the same weight; leaves the global RNG as it found it."""
    old = model.output_layer
    if model.share_embeddings_and_output_weights:
        raise RuntimeError("precision.fp8_output_layer does not support tied embeddings")
    if getattr(old, "bias", None) is not None:
        raise RuntimeError("precision.fp8_output_layer: the output layer has a bias, which Llama's does not")
    rng = torch.get_rng_state()
    try:
        new = fp8_output_layer_class()(
            old.input_size,
            old.output_size,
            config=model.config,
            init_method=model.config.init_method,
            gather_output=False,
            bias=False,
            skip_bias_add=False,
            is_expert=False,
            tp_comm_buffer_name="lm_head",
        )
    finally:
        torch.set_rng_state(rng)
    with torch.no_grad():
        new.weight.copy_(old.weight)
    for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):
        if hasattr(old.weight, attr):
            setattr(new.weight, attr, getattr(old.weight, attr))
    model.output_layer = new
