"""Process-group and tensor-parallel setup for one process of a run.

torch.distributed comes up on NCCL when a GPU is present and on gloo otherwise; Megatron's
``parallel_state`` then splits the world into TP x DP groups.  Seeding follows Megatron: the same
seed on every rank for weights (drawn on the CPU, then split), so TP=N reproduces TP=1.
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Callable

import numpy as np
import torch
from megatron.core import parallel_state


def launcher_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT for this process.

    torchrun's variables win; under ``srun`` they come from SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID, with the first host of the allocation as master and a port derived from the job
    id (so concurrent jobs on one node do not collide); a bare single process gets world size 1.
    """
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        env.setdefault("LOCAL_RANK", "0")
        if "MASTER_PORT" not in env:
            if env["WORLD_SIZE"] != "1":
                raise RuntimeError(
                    "RANK and WORLD_SIZE are set but MASTER_PORT is not: launch with torchrun or srun, "
                    "or set MASTER_ADDR and MASTER_PORT"
                )
            env["MASTER_PORT"] = str(free_port())
    elif "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            nodes = expand_nodelist(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
            env["MASTER_ADDR"] = nodes[0] if nodes else "127.0.0.1"
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 40000))
    else:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k in env}


def launched_world_size(environ: dict[str, str] | None = None) -> int:
    """The number of processes this one was launched among, before any process group exists: the
    WORLD_SIZE :func:`launcher_env` gives (torchrun's, else SLURM_NTASKS under ``srun``), else a
    plain ``WORLD_SIZE`` (what job scripts pass to ``--print-config``), else 1."""
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" in env and not ("RANK" in env and "WORLD_SIZE" in env):
        return int(env.get("SLURM_NTASKS", "1"))
    return int(env.get("WORLD_SIZE", "1"))


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``gpu[01-03,07],login1`` into host names, in order."""
    hosts, i, n = [], 0, len(nodelist)
    while i < n:
        j = i
        while j < n and nodelist[j] not in ",[":
            j += 1
        prefix = nodelist[i:j]
        if j < n and nodelist[j] == "[":
            close = nodelist.index("]", j)
            for part in nodelist[j + 1 : close].split(","):
                lo, _, hi = part.partition("-")
                if hi:
                    hosts += [f"{prefix}{k:0{len(lo)}d}" for k in range(int(lo), int(hi) + 1)]
                else:
                    hosts.append(prefix + lo)
            j = close + 1
        elif prefix:
            hosts.append(prefix)
        i = j + 1 if j < n and nodelist[j] == "," else j
    return hosts


def init_distributed(tensor_parallel: int, seed: int, timeout_minutes: int = 30, graph_safe_rng: bool = False) -> None:
    """Initialise torch.distributed from the launcher's environment and Megatron's TP groups.

    ``graph_safe_rng`` (for ``kernels.cuda_graphs``) keeps the CUDA RNG states as generators that a
    captured graph can advance; it must be chosen before the model is built.
    """
    if not torch.distributed.is_initialized():
        os.environ.update(launcher_env())
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
    seed_everything(seed, graph_safe_rng)


def seed_everything(seed: int, graph_safe_rng: bool = False) -> None:
    """Seed Python, NumPy and torch; on CUDA also Megatron's model-parallel RNG tracker (re-created,
    graph-safe or not as asked)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed, te_rng_tracker=graph_safe_rng, force_reset_rng=True)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the process group (tests, clean exits)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_ranks_agree(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (collective).  The flag lives on the GPU under NCCL, which
    cannot reduce CPU tensors."""
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.distributed.get_backend() == "nccl"
        else torch.device("cpu")
    )
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def min_max_over_ranks(value: int) -> tuple[int, int]:
    """The smallest and largest ``value`` over all ranks (collective, one all-reduce)."""
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.distributed.get_backend() == "nccl"
        else torch.device("cpu")
    )
    both = torch.tensor([value, -value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
    high, neg_low = both.tolist()
    return -neg_low, high


def gather_to_rank0(obj):
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); collective, any picklable object."""
    out = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` on every rank (collective)."""
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


RANK0_WORK_TIMEOUT = datetime.timedelta(hours=12)
"""How long the other ranks wait for :func:`run_on_rank0`'s work (the process group's own collectives
time out after 30 minutes, which preparing a large data set can take)."""
_waiting_group: tuple = (None, None)
"""(the default process group it belongs to, the gloo group): made again for a new process group."""


def run_on_rank0(work: Callable[[], None], what: str) -> str | None:
    """Run ``work`` on rank 0 while the other ranks wait (collective); returns None, or on every rank
    the one-line reason it failed: its ConfigError's text, else ``"{what} failed: "`` and the
    exception's type and first line.
    The wait is on a gloo group with :data:`RANK0_WORK_TIMEOUT`, so an hour of work does not trip the
    NCCL watchdog."""
    global _waiting_group
    world = torch.distributed.group.WORLD
    if _waiting_group[0] is not world:
        _waiting_group = (world, torch.distributed.new_group(backend="gloo", timeout=RANK0_WORK_TIMEOUT))
    error = None
    if torch.distributed.get_rank() == 0:
        from litespark.config import ConfigError

        try:
            work()
        except ConfigError as exc:
            error = str(exc)
        except Exception as exc:  # a full disk, a damaged file: one line on every rank, not a hang
            text = str(exc).strip()
            error = f"{what} failed: {type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
    box = [error]
    torch.distributed.broadcast_object_list(box, src=0, group=_waiting_group[1])
    return box[0]


def first_reason(reason: str | None) -> str | None:
    """The first rank's non-None ``reason`` (by rank order), on every rank; None when no rank has one
    (collective: every rank learns why the slowest or unluckiest rank failed)."""
    reasons = gather_to_rank0(reason)
    first = next((r for r in reasons if r is not None), None) if reasons is not None else None
    return broadcast_from_rank0(first)
