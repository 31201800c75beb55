"""Rank-0 logging: one logger for the package, quiet on other ranks unless asked."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s litespark %(levelname)s %(message)s"


def get_logger(name: str = "litespark") -> logging.Logger:
    """A child of the ``litespark`` logger (configure it once with :func:`setup_logging`)."""
    return logging.getLogger(name if name.startswith("litespark") else f"litespark.{name}")


def global_rank() -> int:
    """This process's rank from torch.distributed, else the launcher's RANK, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup_logging(level: int = logging.INFO, all_ranks: bool = False) -> logging.Logger:
    """Send ``litespark`` logs to stderr on rank 0 (warnings only elsewhere), once per process."""
    logger = logging.getLogger("litespark")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level if all_ranks or global_rank() == 0 else logging.WARNING)
    return logger
