"""RMSNorm fused into the following column-parallel linear, torch version.

Transformer Engine fills the QKV and FC1 slots with ``LayerNormLinear``, which normalises and casts
(to FP8 when enabled) in one kernel before the GEMM, so the layer spec has no separate norm modules.
This is the torch module for the same slot: it owns the norm weight under TE's parameter name
(``layer_norm_weight``) beside the linear ``weight``, so state dicts are interchangeable between the
two backends and with Megatron's TE GPT checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear


class RMSNormColumnParallelLinear(ColumnParallelLinear):
    """``ColumnParallelLinear(rms_norm(x))`` with the norm weight as ``layer_norm_weight``."""

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs):
        if config.normalization != "RMSNorm":
            raise ValueError(f"RMSNormColumnParallelLinear needs normalization='RMSNorm', got {config.normalization!r}")
        if config.sequence_parallel:
            raise ValueError("sequence parallelism needs the 'te' backend (the torch backend runs on gloo)")
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.eps = config.layernorm_epsilon
        device = (
            "cpu" if config.use_cpu_initialization or not torch.cuda.is_available() else torch.cuda.current_device()
        )
        self.layer_norm_weight = torch.nn.Parameter(torch.ones(input_size, device=device, dtype=config.params_dtype))

    def forward(self, input_: torch.Tensor, *args, **kwargs):
        # Norm in fp32 like Llama's reference RMSNorm, then back to the activation dtype.
        normed = F.rms_norm(input_.float(), (input_.shape[-1],), self.layer_norm_weight.float(), self.eps)
        return super().forward(normed.to(input_.dtype), *args, **kwargs)
