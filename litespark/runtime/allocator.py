"""The CUDA caching allocator's settings that every training process and benchmark worker shares.

ZeRO's large flat buffers fragment the default allocator, leaving reserved memory that no allocation
can use: with expandable segments the reserved peak of the same llama-30b-width run (4 layers) is
59.4 GiB instead of 66.6, and the larger micro-batches the benchmark fits run at all.  A run, its
benchmark and its memory diagnostics must use the same allocator for their numbers to agree.
"""

from __future__ import annotations

import os

ALLOC_CONF = "expandable_segments:True"


def use_expandable_segments() -> None:
    """Ask for expandable segments unless the user set ``PYTORCH_CUDA_ALLOC_CONF``; call it before
    CUDA initialises (the allocator reads the variable once)."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)
