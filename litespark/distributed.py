"""Process-group and tensor-parallel setup for one process of a run.

torch.distributed comes up on NCCL when a GPU is present and on gloo otherwise; Megatron's
``parallel_state`` then splits the world into TP x DP groups.  Seeding follows Megatron: the same
seed on every rank for weights (drawn on the CPU, then split), so TP=N reproduces TP=1.
"""

from __future__ import annotations

import datetime
import os
import random

import numpy as np
import torch
from megatron.core import parallel_state


def init_distributed(tensor_parallel: int, seed: int, timeout_minutes: int = 30) -> None:
    """Initialise torch.distributed from the launcher's environment and Megatron's TP groups.

    Reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (torchrun); a single process
    without them runs as world size 1 on a free local port.
    """
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
    seed_everything(seed)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; on CUDA also Megatron's model-parallel RNG tracker."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the process group (tests, clean exits)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
