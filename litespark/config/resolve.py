"""What a run will do: every automatic choice decided once, into one frozen :class:`RunPlan`.

A :class:`~litespark.config.schema.LitesparkConfig` is pure data and keeps its automatic fields
(``None`` / ``'auto'``) as the user wrote them; :func:`resolve` validates it once and decides, for
this host (or a named GPU) and a world size, the kernel backend, the micro-batch (the planner's
choice), the data-parallel size and gradient accumulation, CUDA graphs, fp32 gradient accumulation,
the FP8 output layer, the optimizer's parameter groups and whether a checkpoint's copy overlaps the
next step.  Everything that builds or runs the model reads the plan, never the automatic fields, so
``--print-config`` (the config, then the plan) and ``RUN_DIR/plan.yaml`` are where a reader looks to
know what a run does.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from litespark.config.automatic import (
    backend_refusal,
    cuda_graphs,
    cuda_graphs_refusal,
    fp8_output_layer,
    fp32_grad_accumulation,
    fp32_grad_accumulation_refusal,
    host_backend,
    norm_kernel,
    overlap_copy,
    zero_sub_group_size,
)
from litespark.config.schema import ConfigError, LitesparkConfig
from litespark.config.validate import validate

if TYPE_CHECKING:
    from litespark.planner import Probe
    from litespark.planner.gpus import Gpu

Backend = Literal["te", "torch"]


@dataclass(frozen=True)
class RunPlan:
    """A config with every automatic choice decided, for one world size (immutable)."""

    config: LitesparkConfig
    """The config as given (a private copy: automatic fields stay ``None`` / ``'auto'``)."""
    world_size: int
    """Processes (GPUs): tensor_parallel x data_parallel."""
    tensor_parallel: int
    data_parallel: int
    backend: Backend
    """Which modules fill the layer spec's slots: 'te' or 'torch'."""
    micro_batch_size: int
    """Sequences per forward/backward on each data-parallel rank."""
    micro_batch_source: str
    """Where the micro-batch came from: the config, or the planner for which GPU."""
    gradient_accumulation_steps: int
    """Micro-batches per optimizer step on each data-parallel rank."""
    cuda_graphs: bool
    cuda_graph_layers: int
    """Decoder layers captured as CUDA graphs (0 without graphs)."""
    fp32_grad_accumulation: bool
    fp8_output_layer: bool
    norm_kernel: str
    """RMSNorm kernels on the te backend: 'te' or 'cudnn' (``kernels.norm_kernel``)."""
    zero_sub_group_size: int | None
    """Most parameters per optimizer group; None: one group for the weight matrices."""
    overlap_copy: bool
    """An asynchronous save's device-to-host copy runs during the next step (``checkpoint.overlap_copy``)."""

    def to_dict(self) -> dict:
        """The decisions, without the config (``plan.yaml``, ``--print-config``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}


def resolve(
    cfg: LitesparkConfig,
    world_size: int = 1,
    *,
    backend: str | None = None,
    gpu: Gpu | None = None,
    probe: Probe | None = None,
) -> RunPlan:
    """Validate ``cfg`` and decide its automatic settings for ``world_size`` processes; ConfigError
    (one line) when the config is invalid or cannot run so.

    ``backend`` and ``gpu`` stand for the host: ``kernels.backend='auto'`` becomes ``backend`` (default:
    what this host runs), and an automatic micro-batch is the planner's for ``gpu`` (default: this
    host's GPU), with ``probe`` trying the faster candidates the planner is unsure of (the training
    launch passes one: :mod:`litespark.planner.probe`).  The config is not changed."""
    validate(cfg)
    chosen = cfg.kernels.backend if cfg.kernels.backend != "auto" else (backend or host_backend())
    refusal = backend_refusal(cfg, chosen)
    if refusal:
        raise ConfigError(refusal)
    micro_batch, source = cfg.data.micro_batch_size, "data.micro_batch_size"
    if micro_batch is None:
        micro_batch, source = _automatic_micro_batch(cfg, world_size, chosen, gpu, probe)
    return plan_for(cfg, world_size, chosen, micro_batch, source)


def plan_for(
    cfg: LitesparkConfig, world_size: int, backend: str, micro_batch: int, source: str = "data.micro_batch_size"
) -> RunPlan:
    """The plan of an already validated ``cfg`` at this backend and micro-batch (pure; the planner
    calls it for each candidate).  ConfigError when the layout does not divide or an explicit setting
    cannot hold."""
    tp, gb = cfg.parallel.tensor_parallel, cfg.data.global_batch_size
    if world_size < 1:
        raise ConfigError(f"the world size must be >= 1, got {world_size}")
    if world_size % tp:
        raise ConfigError(f"parallel.tensor_parallel ({tp}) does not divide the world size ({world_size})")
    dp = world_size // tp
    if gb % dp:
        raise ConfigError(f"data.global_batch_size ({gb}) is not a multiple of the data-parallel size ({dp})")
    if gb % (micro_batch * dp):
        raise ConfigError(
            f"data.global_batch_size ({gb}) is not a multiple of "
            f"data.micro_batch_size x data-parallel size ({micro_batch} x {dp})"
        )
    graphs = cuda_graphs(cfg, backend, micro_batch)
    refusal = cuda_graphs_refusal(cfg, backend) if cfg.kernels.cuda_graphs else None
    if refusal:
        raise ConfigError(refusal)
    fp32_grads = fp32_grad_accumulation(cfg, backend, graphs)
    refusal = fp32_grad_accumulation_refusal(cfg, graphs) if cfg.precision.fp32_grad_accumulation else None
    if refusal:
        raise ConfigError(refusal)
    return RunPlan(
        config=copy.deepcopy(cfg),
        world_size=world_size,
        tensor_parallel=tp,
        data_parallel=dp,
        backend=cast(Backend, backend),
        micro_batch_size=micro_batch,
        micro_batch_source=source,
        gradient_accumulation_steps=gb // (micro_batch * dp),
        cuda_graphs=graphs,
        cuda_graph_layers=(cfg.kernels.cuda_graph_layers or cfg.model.num_layers) if graphs else 0,
        fp32_grad_accumulation=fp32_grads,
        fp8_output_layer=fp8_output_layer(cfg),
        norm_kernel=norm_kernel(cfg),
        zero_sub_group_size=zero_sub_group_size(cfg, fp32_grads),
        overlap_copy=overlap_copy(cfg, backend),
    )


def _automatic_micro_batch(
    cfg: LitesparkConfig, world_size: int, backend: str, gpu: Gpu | None, probe: Probe | None
) -> tuple[int, str]:
    """What ``data.micro_batch_size=None`` becomes, and why: the planner's choice for ``gpu`` (this
    host's by default) on the te backend; 1 on the torch backend, which the planner does not model."""
    if backend != "te":
        return 1, "automatic: 1 on the torch backend"
    from litespark.planner import automatic_micro_batch
    from litespark.planner.gpus import gpu_of_this_host

    gpu = gpu or gpu_of_this_host()
    if gpu is None:
        raise ConfigError("data.micro_batch_size=null (automatic) needs a CUDA device to plan for (or --gpu)")
    return automatic_micro_batch(cfg, world_size, gpu, probe)
