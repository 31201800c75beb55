"""``mask_nan_or_inf_with_val_inplace`` without host syncs (see the package docstring)."""

from __future__ import annotations

import torch

from litespark.patching import rebind, require_tested_version, restore

TESTED = ("0.19.8",)
TARGET = "deepspeed.runtime.utils.mask_nan_or_inf_with_val_inplace"
NAME = "mask_nan_or_inf_with_val_inplace"
MODULES = ("deepspeed.runtime.utils", "deepspeed.runtime.zero.stage_1_and_2", "deepspeed.runtime.zero.stage3")
"""Where DeepSpeed 0.19.8 calls it: its own module, and the two ZeRO optimizers that import it by name."""


def mask_nan_or_inf_with_val_inplace(input: torch.Tensor, device=None, val: float = -1.0) -> None:
    """Replace inf and NaN entries of ``input`` by ``val`` (DeepSpeed's -1 sentinel), in place."""
    input.masked_fill_(~torch.isfinite(input), float(val))


def apply() -> None:
    require_tested_version("deepspeed", __name__, TESTED, hint=" or set optim.deepspeed_step_patches=false")
    rebind(NAME, mask_nan_or_inf_with_val_inplace, MODULES)


def remove() -> None:
    restore(NAME, mask_nan_or_inf_with_val_inplace, MODULES)
