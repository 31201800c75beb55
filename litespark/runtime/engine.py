"""``build_engine``: DeepSpeed ZeRO over the Litespark GPTModel.

The DeepSpeed config is ``to_deepspeed_config(plan)`` passed as a dict; ZeRO shards and
reduces over Megatron's data-parallel group through :class:`litespark.runtime.megatron_mpu.MegatronMPU`.  Weights are
bf16 (or fp32) in the module, DeepSpeed keeps fp32 master weights in the optimizer.  FP8 needs no
engine support: Megatron's ``TransformerBlock`` enters TE's ``fp8_autocast`` itself, with the amax
reduction group of the TP group (``parallel_state.get_amax_reduction_group``).  With
``kernels.cuda_graphs`` the layers are captured here, once the engine owns the weights; with
``precision.fp32_grad_accumulation`` the TE linears are pointed at DeepSpeed's fp32 gradient buffers
(:mod:`litespark.runtime.fp32_grads`).
"""

from __future__ import annotations

import contextlib
import io

import torch

import deepspeed_patches
from litespark.config import RunPlan
from litespark.log import get_logger
from litespark.runtime.deepspeed_config import start_schedule, to_deepspeed_config
from litespark.runtime.megatron_mpu import MegatronMPU

log = get_logger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float, max_group_numel: int | None = None) -> list[dict]:
    """AdamW groups: decay matrices, no decay for 1-D parameters (norm weights, biases).

    ``max_group_numel`` splits the matrices, in model order, into groups of at most that many
    elements (a single larger matrix gets a group of its own).  DeepSpeed ZeRO 1/2 step one group at
    a time, each with a flat fp32 copy of the group's gradients: 4 bytes per parameter of the whole
    model in one group, at most 4 bytes x ``max_group_numel`` when split.
    """
    decay: list[list[torch.nn.Parameter]] = [[]]
    no_decay = []
    size = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            no_decay.append(p)
            continue
        if max_group_numel is not None and decay[-1] and size + p.numel() > max_group_numel:
            decay.append([])
            size = 0
        decay[-1].append(p)
        size += p.numel()
    return [{"params": group, "weight_decay": weight_decay} for group in decay if group] + [
        {"params": no_decay, "weight_decay": 0.0}
    ]


def init_deepspeed_comm() -> None:
    """Let DeepSpeed adopt the existing torch.distributed group (NCCL on GPU, gloo on CPU)."""
    import os

    # Name the accelerator instead of letting DeepSpeed probe for one (and warn on CPU hosts).
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import deepspeed.ops

    if not torch.cuda.is_available():
        # deepspeed 0.19: its CPU accelerator JIT-builds a shared-memory all-reduce (g++, ninja,
        # ~30 s per fresh host) on first use; gloo already does the reduction, so mark it unavailable.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def build_engine(plan: RunPlan, model: torch.nn.Module, load_universal: bool = False):
    """Wrap ``model`` in the DeepSpeed engine of ``plan``; returns ``(engine, optimizer, lr_scheduler)``.

    ``load_universal``: the engine will load a universal checkpoint (a checkpoint resharded for another
    data-parallel size, :mod:`litespark.training.resume`); DeepSpeed reads that choice at initialisation.
    """
    import deepspeed

    cfg = plan.config
    ds_config = to_deepspeed_config(plan)
    if load_universal:
        ds_config["checkpoint"] = {"load_universal": True}

    init_deepspeed_comm()
    deepspeed_patches.select(cfg.optim.deepspeed_step_patches)
    if torch.cuda.is_available():
        model = model.cuda()
    # DeepSpeed's BF16_Optimizer prints a memory report to stdout for every parameter group.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(
                model,
                cfg.optim.weight_decay,
                # ZeRO-3 bounds its step with sub_group_size (deepspeed_config)
                None if cfg.parallel.zero_stage == 3 else plan.zero_sub_group_size,
            ),
            config=ds_config,
            mpu=MegatronMPU(),
            dist_init_required=False,
        )
    if printed.getvalue():
        log.debug("deepspeed.initialize printed:\n%s", printed.getvalue().rstrip())
    start_schedule(scheduler, cfg)
    if plan.fp32_grad_accumulation:
        from litespark.runtime.fp32_grads import link_fp32_main_grads

        engine.litespark_fp32_grads = link_fp32_main_grads(engine.module, optimizer)
    if plan.cuda_graphs:
        # After initialize: DeepSpeed has moved the weights into its flat buffers by now.
        from litespark.runtime.cuda_graphs import capture_layer_graphs

        capture_layer_graphs(engine.module, plan)
    return engine, optimizer, scheduler
