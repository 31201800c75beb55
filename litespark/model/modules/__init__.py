"""Litespark's attention and MLP building blocks for the torch backend.

The Transformer Engine backend fills the same layer-spec slots with TE's fused modules; these are
their torch counterparts with the same parameter names, so a checkpoint moves between backends
unchanged.  See docs/design.md for why each choice should be faster.
"""

from litespark.model.modules.attention import SDPAttention
from litespark.model.modules.norm_linear import RMSNormColumnParallelLinear

__all__ = ["RMSNormColumnParallelLinear", "SDPAttention"]
