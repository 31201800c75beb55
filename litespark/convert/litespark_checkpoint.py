"""Read and write Litespark checkpoints for conversion, without a process group or a GPU.

A Litespark checkpoint is a DeepSpeed checkpoint directory (see :mod:`litespark.training.checkpoint`): with
ZeRO-1/2, ``mp_rank_<TP rank>_model_states.pt`` holds that TP rank's full module weights (the values
the model trains with) and the run's config in the client state; with ZeRO-3 (TP=1 only) the weights
live only in the optimizer partitions and DeepSpeed's own ``zero_to_fp32`` consolidates them.
Files are memory-mapped, so reading costs little more than the tensors actually touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from litespark.config import ConfigError, LitesparkConfig, ModelConfig, from_dict, to_dict
from litespark.convert.tp_shards import is_weight
from litespark.files import atomic_write_text
from litespark.training.checkpoint_files import (
    LATEST,
    MANIFEST,
    check_complete,
    check_digests,
    checkpoint_dir,
    file_records,
    read_manifest,
    save_hashed,
    shape_mismatch,
    tag_for,
    write_manifest_text,
)

MODEL_STATES = "mp_rank_{:02d}_model_states.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """The step directory meant by ``path``: a step directory, a ``checkpoints`` directory or a run
    directory (the last two through their ``latest`` pointer)."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        step = p
    elif (p / LATEST).is_file():
        step = p / (p / LATEST).read_text().strip()
    elif (checkpoint_dir(p) / LATEST).is_file():
        step = checkpoint_dir(p) / (checkpoint_dir(p) / LATEST).read_text().strip()
    elif p.name == LATEST and p.parent.is_dir() and (p.parent / LATEST).is_file():
        step = p.parent / (p.parent / LATEST).read_text().strip()
    else:
        raise ConfigError(f"--checkpoint {path}: not a Litespark checkpoint (no {MANIFEST}, no {LATEST} pointer)")
    reason = check_complete(step)
    manifest = read_manifest(step)
    if reason is None and manifest is not None:
        reason = check_digests(step, sorted(file_records(manifest)))
    if reason:
        raise ConfigError(f"--checkpoint {step}: incomplete or damaged checkpoint: {reason}")
    return step


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as exc:
        raise ConfigError(
            f"checkpoint: cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        ) from None


def read_checkpoint(step: Path) -> tuple[LitesparkConfig, list[dict[str, torch.Tensor]]]:
    """The run's config and one state dict per TP rank (weights only, memory-mapped)."""
    first = step / MODEL_STATES.format(0)
    if not first.is_file():
        zero3 = sorted(step.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))
        if not zero3:
            raise ConfigError(f"checkpoint {step}: {first.name} is missing")
        first = zero3[0]
    head = _load(first)
    if "config" not in head:
        raise ConfigError(f"checkpoint {step}: no Litespark config in {first.name} (not written by Litespark?)")
    cfg = from_dict(head["config"])
    tp = cfg.parallel.tensor_parallel
    if cfg.parallel.zero_stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(step.parent), tag=step.name)
        return cfg, [{k: v for k, v in sd.items() if is_weight(k)}]
    shards = [{k: v for k, v in head["module"].items() if is_weight(k)}]
    for r in range(1, tp):
        f = step / MODEL_STATES.format(r)
        if not f.is_file():
            raise ConfigError(
                f"checkpoint {step}: {f.name} is missing (tensor parallel {tp} needs {tp} model-state files)"
            )
        shards.append({k: v for k, v in _load(f)["module"].items() if is_weight(k)})
    return cfg, shards


def fp32_master_weights(step: Path) -> dict[str, torch.Tensor]:
    """The optimizer's fp32 master weights (TP=1 checkpoints only): consolidated by DeepSpeed's
    ``zero_to_fp32``, or, for DeepSpeed's BF16_Optimizer (``precision.fp32_grad_accumulation``), whose
    files ``zero_to_fp32`` does not read, by :func:`_bf16_optimizer_masters`."""
    bf16_files = list(step.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    if bf16_files:
        return _bf16_optimizer_masters(step, bf16_files)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return {
        k: v
        for k, v in get_fp32_state_dict_from_zero_checkpoint(str(step.parent), tag=step.name).items()
        if is_weight(k)
    }


def _bf16_optimizer_masters(step: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """BF16_Optimizer's layout: per parameter group, the data-parallel ranks' fp32 partitions
    concatenate to the group's parameters flattened in order (padding only at the end); the names and
    shapes of that order are the ``param_shapes`` the model-state file records."""
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, SINGLE_PARTITION_OF_FP32_GROUPS

    def rank_of(f: Path) -> int:
        return int(f.name.split("_pp_rank_")[1].split("_")[0])

    files = sorted(files, key=rank_of)
    if [rank_of(f) for f in files] != list(range(len(files))):
        raise ConfigError(
            f"checkpoint {step}: BF16 optimizer files of data-parallel ranks {[rank_of(f) for f in files]}, "
            f"expected 0..{len(files) - 1}"
        )
    group_shapes = _load(step / MODEL_STATES.format(0))["param_shapes"]
    partitions = [_load(f)[OPTIMIZER_STATE_DICT][SINGLE_PARTITION_OF_FP32_GROUPS] for f in files]
    out = {}
    for g, shapes in enumerate(group_shapes):
        flat = torch.cat([p[g].reshape(-1) for p in partitions])
        offset = 0
        for name, shape in shapes.items():
            n = torch.Size(shape).numel()
            if offset + n > flat.numel():
                raise ConfigError(
                    f"checkpoint {step}: optimizer group {g} holds {flat.numel()} values, "
                    f"fewer than its parameters need ({name} ends at {offset + n})"
                )
            out[name] = flat[offset : offset + n].view(shape).detach().clone()
            offset += n
    return {k: v for k, v in out.items() if is_weight(k)}


def expected_shapes(m: ModelConfig, padded_vocab: int) -> dict[str, tuple[int, ...]]:
    """TP=1 tensor shapes of a Litespark Llama with shape ``m``."""
    h, d = m.hidden_size, m.hidden_size // m.num_attention_heads
    qkv = (m.num_attention_heads + 2 * m.num_query_groups) * d
    out = {"embedding.word_embeddings.weight": (padded_vocab, h), "decoder.final_layernorm.weight": (h,)}
    if not m.tie_embeddings:
        out["output_layer.weight"] = (padded_vocab, h)
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        out.update(
            {
                p + "self_attention.linear_qkv.layer_norm_weight": (h,),
                p + "self_attention.linear_qkv.weight": (qkv, h),
                p + "self_attention.linear_proj.weight": (h, m.num_attention_heads * d),
                p + "mlp.linear_fc1.layer_norm_weight": (h,),
                p + "mlp.linear_fc1.weight": (2 * m.ffn_hidden_size, h),
                p + "mlp.linear_fc2.weight": (h, m.ffn_hidden_size),
            }
        )
    return out


def check_shapes(names_shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """One-line error for a missing, unexpected or wrongly shaped tensor."""
    reason = shape_mismatch(names_shapes, expected)
    if reason:
        raise ConfigError(f"{where}: {reason} (checkpoint from an incompatible model?)")


def write_checkpoint(out: Path, cfg: LitesparkConfig, shards: list[dict[str, torch.Tensor]], source: str) -> Path:
    """A step-0 Litespark checkpoint under ``out/checkpoints`` that ``checkpoint.load=out`` starts from.

    Written under a temporary name and renamed when complete, like the trainer's checkpoints.
    """
    import deepspeed

    root = checkpoint_dir(out)
    tag = tag_for(0)
    if (root / tag).exists():
        raise ConfigError(f"--out {out}: {root / tag} already exists; choose an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".incomplete-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    records = {}
    for r, sd in enumerate(shards):
        state = {
            "module": sd,
            "config": to_dict(cfg),
            "step": 0,
            "consumed_samples": 0,
            "imported_from": source,
            "dp_world_size": 1,
            "mp_world_size": len(shards),
            "ds_version": deepspeed.__version__,
            "optimizer": None,
            "lr_scheduler": None,
            "global_steps": 0,
            "global_samples": 0,
            "skipped_steps": 0,
        }
        name = MODEL_STATES.format(r)
        records[name] = save_hashed(state, tmp / name)
    manifest = {
        "step": 0,
        "world_size": len(shards),
        "tensor_parallel": len(shards),
        "data_parallel": 1,
        "consumed_samples": 0,
        "imported_from": source,
        "config": to_dict(cfg),
        "files": records,
    }
    atomic_write_text(tmp / MANIFEST, write_manifest_text(manifest))
    os.replace(tmp, root / tag)
    atomic_write_text(root / LATEST, tag + "\n")
    return root / tag
