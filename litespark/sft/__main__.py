"""``python -m litespark.sft``: supervised fine-tuning on the Litespark engine.

    python -m litespark.sft --hf meta-llama/Llama-3.2-3B-dir --data chat.jsonl --train-iters 500 \\
        --run-dir runs/sft --export-hf out/llama-3.2-3b-chat
    torchrun --nproc-per-node 8 -m litespark.sft --hf HF_DIR --data HF_DATASET_DIR --set sft.split=train

``--hf`` names a Hugging Face Llama directory: its ``config.json`` gives the model's settings, its
weights the starting point (converted once into ``RUN_DIR/hf_init``) and its tokenizer (with its chat
template) the examples' tokens.  Without ``--hf``, the preset or ``--config`` gives the model, and
``--set checkpoint.load=RUN_DIR`` a converted checkpoint.  Training is ``python -m litespark.train``'s
(the same run directory, metrics, checkpoints, resume, report and exit codes) on examples packed into
rows with document masks (docs/post_training.md).  ``--export-hf OUT`` writes the trained model and
its tokenizer as a Hugging Face directory when training ends.

Settings apply in this order: the preset (default ``llama-3b``'s run settings on a CUDA host, ``tiny``'s
elsewhere), the fine-tuning defaults (:data:`SFT_DEFAULTS`), the model of ``--hf``, ``--config``,
then ``--set``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from litespark.config import ConfigError, LitesparkConfig
from litespark.config.cli import add_config_args, quiet_optional_dependency_warnings, user_errors_exit_2
from litespark.log import get_logger
from litespark.runtime.allocator import use_expandable_segments

log = get_logger(__name__)

SFT_DEFAULTS = [
    "optim.lr=2e-5",
    "optim.min_lr=0",
    "optim.warmup_iters=0",
    "optim.weight_decay=0",
    "optim.beta2=0.999",
    "run.run_dir=runs/sft",
]
"""Fine-tuning's usual optimiser settings (TRL's defaults: learning rate 2e-5 decayed to 0, no
warm-up, no weight decay, Adam's beta2 0.999), applied over the preset's pretraining ones."""


def build_sft_config(
    args: argparse.Namespace, source: str = "sft", defaults: list[str] = SFT_DEFAULTS
) -> LitesparkConfig:
    """The run's config from the command line (see the module docstring for the order); ``source``
    and ``defaults``: DPO's (:mod:`litespark.dpo.__main__`) instead of SFT's."""
    from litespark.config.overrides import apply_overrides, load_yaml
    from litespark.config.presets import get_preset

    preset = args.preset or _default_preset()
    cfg = get_preset(preset)
    apply_overrides(cfg, defaults)
    settings = [f"data.source={source}", f"sft.data={args.data}"]
    if args.hf:
        from litespark.convert.hf_files import model_config_from_hf

        hf = Path(args.hf)
        if not hf.is_dir():
            raise ConfigError(f"--hf {hf}: not a directory")
        cfg.model = model_config_from_hf(hf, None)
        settings += [f"sft.hf_model={hf}", f"sft.tokenizer={args.tokenizer or hf}"]
    elif args.tokenizer:
        settings.append(f"sft.tokenizer={args.tokenizer}")
    if args.train_iters is not None:
        settings.append(f"run.train_iters={args.train_iters}")
    if args.run_dir:
        settings.append(f"run.run_dir={args.run_dir}")
    apply_overrides(cfg, settings)
    if args.config:
        load_yaml(cfg, args.config)
    apply_overrides(cfg, args.overrides)
    return cfg


def _default_preset() -> str:
    import torch

    return "llama-3b" if torch.cuda.is_available() else "tiny"


def preflight(cfg: LitesparkConfig, world_size: int, gpu: str | None) -> str:
    """``python -m litespark.train --preflight``'s checks plus the SFT inputs: the data and the
    tokenizer exist (a Hugging Face dataset name is left to the run: it may need the network)."""
    from litespark import train

    s = cfg.sft
    if s.data and not Path(s.data).exists() and s.data.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        raise ConfigError(f"sft.data: {s.data} does not exist")
    if s.tokenizer and not Path(s.tokenizer).is_dir():
        raise ConfigError(f"sft.tokenizer: {s.tokenizer} is not a directory")
    line = train.preflight(cfg, world_size, gpu)
    source = cfg.data.source
    return line.replace(
        f"data {source}", f"{source.upper()} data {s.data}" + (f", from {s.hf_model}" if s.hf_model else "")
    )


def export_hf(cfg: LitesparkConfig, out: str) -> None:
    """The run's newest checkpoint as a Hugging Face Llama directory with the run's tokenizer."""
    from litespark.convert.__main__ import to_hf

    to_hf(
        argparse.Namespace(checkpoint=cfg.run.run_dir, out=out, tokenizer=None, dtype=None, max_shard_bytes=5 * 10**9)
    )


@user_errors_exit_2("litespark.sft")
def main(argv: list[str] | None = None) -> int:
    return run_finetuning(argv, "sft", SFT_DEFAULTS, __doc__)


def run_finetuning(argv: list[str] | None, source: str, defaults: list[str], doc: str | None) -> int:
    """The command line of ``python -m litespark.sft`` (``source`` sft) and ``litespark.dpo`` (dpo)."""
    quiet_optional_dependency_warnings()
    parser = argparse.ArgumentParser(prog=f"python -m litespark.{source}", description=(doc or "").splitlines()[0])
    add_config_args(parser)
    parser.set_defaults(preset=None)
    parser.add_argument("--hf", metavar="HF_DIR", help="Hugging Face Llama directory: model, weights and tokenizer")
    parser.add_argument(
        "--data",
        required=True,
        metavar="FILE|DATASET",
        help=f"JSONL {'preference pairs' if source == 'dpo' else 'examples'} (.jsonl, .jsonl.gz, .jsonl.zst) or a "
        "Hugging Face dataset (name or directory)",
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer directory (default: --hf's)")
    parser.add_argument("--train-iters", type=int, help="shortcut for --set run.train_iters=N")
    parser.add_argument("--run-dir", help="shortcut for --set run.run_dir=DIR")
    parser.add_argument("--export-hf", metavar="OUT", help="after training, write the model and tokenizer here")
    parser.add_argument("--print-config", action="store_true", help="print the config and its plan, then exit")
    parser.add_argument(
        "--preflight",
        type=int,
        metavar="WORLD_SIZE",
        help="check without a GPU that the config is valid for WORLD_SIZE processes, the data, tokenizer and "
        "checkpoint exist and the run directory is writable; print one line and exit (Slurm runs this first)",
    )
    parser.add_argument("--gpu", default=None, help="with --preflight / --print-config: the GPU to plan for")
    args = parser.parse_args(argv)
    cfg = build_sft_config(args, source, defaults)
    if args.export_hf and Path(args.export_hf).exists() and any(Path(args.export_hf).iterdir()):
        raise ConfigError(f"--export-hf {args.export_hf} exists and is not empty; choose a new directory")
    if args.export_hf and not cfg.checkpoint.enabled:
        raise ConfigError("--export-hf exports the run's last checkpoint: it needs checkpoint.enabled=true")
    if args.preflight is not None:
        print(preflight(cfg, args.preflight, args.gpu))
        return 0
    use_expandable_segments()
    from litespark.config import resolve
    from litespark.runtime.distributed import launched_world_size

    world_size = launched_world_size()
    if args.print_config:
        from litespark.train import print_config

        print(print_config(cfg, world_size, args.gpu))
        return 0
    from litespark.training.loop import run

    code = run(resolve(cfg, world_size))
    from litespark.log import global_rank, setup_logging

    if code == 0 and args.export_hf and global_rank() == 0:
        setup_logging()
        export_hf(cfg, args.export_hf)
        log.info("exported the %s model to %s", source.upper(), args.export_hf)
    return code


if __name__ == "__main__":
    sys.exit(main())
