"""``python -m litespark.convert``: Litespark checkpoints to Hugging Face Llama and back.

    python -m litespark.convert to-hf --checkpoint RUN_DIR --out HF_DIR [--tokenizer tok.model|TOK_DIR] [--dtype bf16|fp32]
    python -m litespark.convert from-hf --hf HF_DIR --out CKPT_DIR --tp N

``to-hf`` consolidates the TP shards (and, for ZeRO-3 or ``--dtype fp32`` of a BF16 run, DeepSpeed's
ZeRO partitions) into ``LlamaForCausalLM`` safetensors shards of at most 5 GB, ``config.json`` and
tokenizer files.  ``from-hf`` writes a step-0 Litespark checkpoint for any TP size; train from it
with ``--set checkpoint.load=CKPT_DIR``.  Neither needs a GPU or a process group; both stream one
layer at a time.  Mistakes (incompatible shapes, missing shards, a tokenizer that does not match the
embedding) end with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from litespark.config import ConfigError, LitesparkConfig, to_dict, validate
from litespark.config.cli import quiet_optional_dependency_warnings, user_errors_exit_2
from litespark.config.schema import PACKED_SOURCES
from litespark.files import atomic_write_text
from litespark.log import get_logger, setup_logging

log = get_logger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _padded(cfg: LitesparkConfig) -> int:
    from litespark.model.build import padded_vocab_size

    return padded_vocab_size(cfg)


def to_hf(args: argparse.Namespace) -> int:
    from litespark.convert.hf_files import write_hf_dir
    from litespark.convert.hf_llama import layer_to_hf, outer_to_hf, to_hf_config_kwargs
    from litespark.convert.litespark_checkpoint import (
        check_shapes,
        expected_shapes,
        fp32_master_weights,
        read_checkpoint,
        resolve_checkpoint,
    )
    from litespark.convert.tp_shards import merge_state_dicts

    step = resolve_checkpoint(args.checkpoint)
    cfg, shards = read_checkpoint(step)
    m, tp = cfg.model, len(shards)
    stored = next(iter(shards[0].values())).dtype
    dtype_name = args.dtype or ("fp32" if stored == torch.float32 else "bf16")
    if dtype_name == "fp32" and stored != torch.float32 and cfg.parallel.zero_stage != 3:
        if tp > 1:
            raise ConfigError(
                "--dtype fp32: the fp32 master weights of a tensor-parallel checkpoint cannot be "
                "consolidated (DeepSpeed's zero_to_fp32 is TP=1 only); use --dtype bf16"
            )
        log.info("reading the fp32 master weights from the ZeRO partitions")
        shards = [fp32_master_weights(step)]
    expected = expected_shapes(m, _padded(cfg))
    # Shapes after the TP merge, computed on meta tensors (no data touched); a tensor absent from a
    # rank is reported by the merge itself.
    merged = merge_state_dicts([{k: v.to("meta") for k, v in sd.items()} for sd in shards])
    shapes = {name: tuple(t.shape) for name, t in merged.items()}
    check_shapes(shapes, expected, f"checkpoint {step}")
    tokenizer = args.tokenizer
    if (
        tokenizer is None
        and cfg.data.source in PACKED_SOURCES
        and cfg.sft.tokenizer
        and Path(cfg.sft.tokenizer).is_dir()
    ):
        tokenizer = cfg.sft.tokenizer  # the fine-tuning's, with its chat template
        log.info("tokenizer from the run's config: %s", tokenizer)
    elif tokenizer is None and cfg.data.tokenizer and Path(cfg.data.tokenizer).is_file():
        tokenizer = cfg.data.tokenizer
        log.info("tokenizer from the run's config: %s", tokenizer)
    elif tokenizer is None:
        log.warning("no tokenizer given and none recorded in the run's config: writing weights and config only")

    def tensors():
        outer = [k for k in expected if not k.startswith("decoder.layers.")]
        for name, t in outer_to_hf(merge_state_dicts(shards, outer), m).items():
            if not (m.tie_embeddings and name == "lm_head.weight"):  # HF re-ties it from the embedding
                yield name, t
        for i in range(m.num_layers):
            names = [k for k in expected if k.startswith(f"decoder.layers.{i}.")]
            yield from layer_to_hf(merge_state_dicts(shards, names), m, i).items()
            if (i + 1) % 8 == 0 or i + 1 == m.num_layers:
                log.info("converted %d/%d layers", i + 1, m.num_layers)

    files = write_hf_dir(
        Path(args.out),
        tensors(),
        to_hf_config_kwargs(m),
        DTYPES[dtype_name],
        tokenizer,
        max_shard_bytes=args.max_shard_bytes,
    )
    log.info(
        "wrote %s (%s, TP %d -> 1, step %s): %s", args.out, dtype_name, tp, step.name, ", ".join(f.name for f in files)
    )
    return 0


def from_hf(args: argparse.Namespace) -> int:
    from litespark.convert.hf_files import HFTensors, model_config_from_hf
    from litespark.convert.hf_llama import layer_from_hf, outer_from_hf, to_hf_state_dict
    from litespark.convert.litespark_checkpoint import check_shapes, expected_shapes, write_checkpoint
    from litespark.convert.tp_shards import split_tensor

    hf_dir = Path(args.hf)
    cfg = LitesparkConfig(preset="custom")
    cfg.model = model_config_from_hf(hf_dir, args.seq_length)
    cfg.parallel.tensor_parallel = args.tp
    tensors = HFTensors(hf_dir)
    stored = tensors["model.embed_tokens.weight"].dtype if "model.embed_tokens.weight" in tensors else torch.bfloat16
    cfg.precision.bf16 = (DTYPES[args.dtype] if args.dtype else stored) != torch.float32
    validate(cfg)
    m = cfg.model
    expected = expected_shapes(m, _padded(cfg))
    hf_names = {k for k in tensors.keys() if not k.endswith("rotary_emb.inv_freq")}  # noqa: SIM118 - HFTensors is not iterable
    # The HF names a Llama of this shape has: the export mapping applied to the expected shapes.
    meta = to_hf_state_dict({k: torch.empty(shape, device="meta") for k, shape in expected.items()}, m)
    needed = set(meta) - ({"lm_head.weight"} if m.tie_embeddings else set())
    missing, extra = sorted(needed - hf_names), sorted(hf_names - needed - {"lm_head.weight"})
    if missing:
        raise ConfigError(f"--hf {hf_dir}: tensor {missing[0]} is missing")
    if extra:
        raise ConfigError(f"--hf {hf_dir}: unexpected tensor {extra[0]} (not a plain Llama checkpoint?)")
    dtype = DTYPES[args.dtype] if args.dtype else None
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(args.tp)]

    def add(part: dict[str, torch.Tensor]) -> None:
        check_shapes({k: tuple(v.shape) for k, v in part.items()}, {k: expected[k] for k in part}, f"--hf {hf_dir}")
        for name, full in part.items():
            full = full if dtype is None else full.to(dtype)
            for r, shard in enumerate(split_tensor(name, full, args.tp)):
                shards[r][name] = shard

    add(outer_from_hf(tensors, m, _padded(cfg)))
    for i in range(m.num_layers):
        add(layer_from_hf(tensors, m, i))
    if (hf_dir / "tokenizer.model").is_file():
        out_tok = Path(args.out) / "tokenizer.model"
        out_tok.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(hf_dir / "tokenizer.model", out_tok)
        cfg.data.tokenizer = str(out_tok)
    path = write_checkpoint(Path(args.out), cfg, shards, source=str(hf_dir))
    settings = Path(args.out) / "config.yaml"
    atomic_write_text(settings, imported_settings_yaml(cfg))
    log.info(
        "wrote %s: %d layers x %d, TP %d; train from it with: python -m litespark.train --preset llama-3b "
        "--config %s --set checkpoint.load=%s  (the config file holds the imported model's settings, "
        "without which the weights are refused)",
        path,
        m.num_layers,
        m.hidden_size,
        args.tp,
        settings,
        args.out,
    )
    return 0


def imported_settings_yaml(cfg: LitesparkConfig) -> str:
    """A ``--config`` file for runs on imported weights: the model's settings (all of them: a preset's
    differing values would be refused), its tensor-parallel size and tokenizer."""
    import yaml

    data = {
        "model": to_dict(cfg)["model"],
        "parallel": {"tensor_parallel": cfg.parallel.tensor_parallel},
    }
    if cfg.data.tokenizer:
        data["data"] = {"tokenizer": cfg.data.tokenizer}
    header = "# Written by python -m litespark.convert from-hf: the imported model's settings.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


@user_errors_exit_2("litespark.convert")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m litespark.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-hf", help="Litespark checkpoint -> Hugging Face LlamaForCausalLM directory")
    a.add_argument(
        "--checkpoint", required=True, help="run directory, its checkpoints/ directory, or one step_N directory"
    )
    a.add_argument("--out", required=True, help="new directory for the HF checkpoint")
    a.add_argument(
        "--tokenizer",
        help="SentencePiece model or Hugging Face tokenizer directory (default: the run's data.tokenizer "
        "or sft.tokenizer, if it exists)",
    )
    a.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: the dtype the weights are stored in (bf16 for BF16/FP8 runs)"
    )
    a.add_argument("--max-shard-bytes", type=int, default=5 * 10**9, help="safetensors shard size limit (default 5 GB)")
    b = sub.add_parser("from-hf", help="Hugging Face Llama directory -> Litespark checkpoint for any TP size")
    b.add_argument("--hf", required=True, help="HF directory (config.json + safetensors)")
    b.add_argument("--out", required=True, help="new Litespark run directory (checkpoint under OUT/checkpoints)")
    b.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the runs that will load it")
    b.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep the HF dtype)")
    b.add_argument(
        "--seq-length", type=int, help="training sequence length to record (default min(max_position_embeddings, 4096))"
    )
    args = p.parse_args(argv)
    quiet_optional_dependency_warnings()
    setup_logging()
    return to_hf(args) if args.command == "to-hf" else from_hf(args)


if __name__ == "__main__":
    sys.exit(main())
