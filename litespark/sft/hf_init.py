"""Starting a run from a Hugging Face Llama directory (``sft.hf_model``): its weights converted once.

The conversion is ``python -m litespark.convert from-hf``'s, written to ``RUN_DIR/hf_init`` at the
run's tensor-parallel size by rank 0 (the others wait), as a step-0 checkpoint that the trainer then
loads as it loads ``checkpoint.load``'s.  Only the first start converts: a resume loads the run's own
checkpoints, and a restart before the first save finds the conversion done (written under a
temporary name and renamed when complete).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from litespark.config import ConfigError, LitesparkConfig
from litespark.log import get_logger

log = get_logger(__name__)
HF_INIT = "hf_init"


def hf_init_run_dir(cfg: LitesparkConfig) -> Path:
    """``RUN_DIR/hf_init``, holding ``sft.hf_model``'s weights as a Litespark checkpoint (collective)."""
    import time

    import torch.distributed as dist

    from litespark.convert.__main__ import from_hf
    from litespark.convert.__main__ import log as convert_log
    from litespark.runtime.distributed import broadcast_from_rank0
    from litespark.training.checkpoint_files import checkpoint_dir, tag_for

    assert cfg.sft.hf_model is not None
    out = Path(cfg.run.run_dir) / HF_INIT
    error = None
    if dist.get_rank() == 0 and not (checkpoint_dir(out) / tag_for(0)).is_dir():
        start = time.perf_counter()
        args = argparse.Namespace(
            hf=cfg.sft.hf_model,
            out=str(out),
            tp=cfg.parallel.tensor_parallel,
            dtype=None,
            seq_length=cfg.model.seq_length,
        )
        level = convert_log.level
        convert_log.setLevel(logging.WARNING)  # its how-to-train-from-it line is for the command line
        try:
            from_hf(args)
            log.info("converted %s into %s in %.1f s", cfg.sft.hf_model, out, time.perf_counter() - start)
        except ConfigError as exc:
            error = str(exc).replace("--hf ", "sft.hf_model: ", 1)
        finally:
            convert_log.setLevel(level)
    error = broadcast_from_rank0(error)
    if error is not None:
        raise ConfigError(error)
    return out
