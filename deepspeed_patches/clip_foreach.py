"""``clip_tensors_by_global_norm`` as one foreach multiply (see the package docstring)."""

from __future__ import annotations

import torch

from litespark.patching import rebind, require_tested_version, restore

TESTED = ("0.19.8",)
TARGET = "deepspeed.runtime.utils.clip_tensors_by_global_norm"
NAME = "clip_tensors_by_global_norm"
MODULES = ("deepspeed.runtime.utils", "deepspeed.runtime.bf16_optimizer")
"""Where DeepSpeed 0.19.8 defines it and where ``BF16_Optimizer.step`` calls it by name."""


def clip_tensors_by_global_norm(input_tensors, max_norm=1.0, global_norm=None, mpu=None, eps=1e-6):
    """DeepSpeed's function (scale every tensor by ``max_norm / (global_norm + eps)`` when that is
    below 1; return the global norm), with the scaling done by one ``torch._foreach_mul_``."""
    from deepspeed.runtime.utils import get_global_norm_of_tensors

    if global_norm is None:
        global_norm = get_global_norm_of_tensors(input_tensors, mpu=mpu)
    clip_coef = max_norm / (global_norm + eps)
    if clip_coef < 1:
        tensors = [t.detach() for t in input_tensors]
        if torch.is_tensor(clip_coef):
            clip_coef = clip_coef.to(tensors[0].device, tensors[0].dtype) if tensors else clip_coef
        torch._foreach_mul_(tensors, clip_coef)
    return global_norm


def apply() -> None:
    require_tested_version("deepspeed", __name__, TESTED, hint=" or set optim.deepspeed_step_patches=false")
    rebind(NAME, clip_tensors_by_global_norm, MODULES)


def remove() -> None:
    restore(NAME, clip_tensors_by_global_norm, MODULES)
