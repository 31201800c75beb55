"""Starting a run from a Hugging Face Llama directory (``sft.hf_model``): its weights converted once.

The conversion is ``python -m litespark.convert from-hf``'s, written to ``RUN_DIR/hf_init`` at the
run's tensor-parallel size by rank 0 (the others wait), as a step-0 checkpoint that the trainer then
loads as it loads ``checkpoint.load``'s.  ``hf_init/source.json``, written last, records what was
converted (the directory, its files' names, sizes and times, the TP size): a restart before the
first save reuses the conversion only when it is of the same model at the same TP size, and refuses
in one line otherwise (a run keeps its starting point); a conversion killed half-way is redone.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from litespark.config import ConfigError, LitesparkConfig
from litespark.files import atomic_write_text
from litespark.log import get_logger

log = get_logger(__name__)
HF_INIT = "hf_init"
SOURCE = "source.json"


def hf_source(hf_dir: Path, tensor_parallel: int) -> dict:
    """What identifies a conversion: the directory, its config and weight files, the TP size."""
    files = sorted(p for p in hf_dir.iterdir() if p.suffix in (".json", ".safetensors") and p.is_file())
    return {
        "hf_model": str(hf_dir.resolve()),
        "files": {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files},
        "tensor_parallel": tensor_parallel,
    }


def hf_init_run_dir(cfg: LitesparkConfig) -> Path:
    """``RUN_DIR/hf_init``, holding ``sft.hf_model``'s weights as a Litespark checkpoint (collective)."""
    from litespark.runtime.distributed import run_on_rank0

    assert cfg.sft.hf_model is not None
    out = Path(cfg.run.run_dir) / HF_INIT
    error = run_on_rank0(lambda: _ensure_converted(cfg, out), f"sft.hf_model: converting into {out}")
    if error is not None:
        raise ConfigError(error)
    return out


def _ensure_converted(cfg: LitesparkConfig, out: Path) -> None:
    from litespark.convert.__main__ import from_hf
    from litespark.convert.__main__ import log as convert_log

    assert cfg.sft.hf_model is not None
    hf_dir = Path(cfg.sft.hf_model)
    if not hf_dir.is_dir():
        raise ConfigError(f"sft.hf_model: {hf_dir} is not a directory")
    wanted = hf_source(hf_dir, cfg.parallel.tensor_parallel)
    record = out / SOURCE
    if record.is_file():
        done = json.loads(record.read_text())
        if done != wanted:
            raise ConfigError(
                f"sft.hf_model: {out} holds {done.get('hf_model')} at TP {done.get('tensor_parallel')}, not "
                f"{wanted['hf_model']} at TP {wanted['tensor_parallel']} as converted then; a run keeps its starting "
                f"point: start a new run directory (or remove {out})"
            )
        return
    shutil.rmtree(out, ignore_errors=True)  # a conversion killed before its record: redo it
    start = time.perf_counter()
    level = convert_log.level
    convert_log.setLevel(logging.WARNING)  # its how-to-train-from-it line is for the command line
    try:
        from_hf(
            argparse.Namespace(
                hf=str(hf_dir),
                out=str(out),
                tp=cfg.parallel.tensor_parallel,
                dtype=None,
                seq_length=cfg.model.seq_length,
            )
        )
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--hf ", "sft.hf_model: ", 1)) from None
    finally:
        convert_log.setLevel(level)
    atomic_write_text(record, json.dumps(wanted, indent=1))
    log.info("converted %s into %s in %.1f s", hf_dir, out, time.perf_counter() - start)
