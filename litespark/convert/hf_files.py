"""Hugging Face Llama checkpoint directories: read them lazily, write them shard by shard.

A directory is ``config.json`` (``LlamaConfig``), ``model.safetensors`` or
``model-0000k-of-0000N.safetensors`` + ``model.safetensors.index.json``, and optionally tokenizer
files.  Reading goes through ``safetensors.safe_open`` one tensor at a time; writing fills one shard
(at most ``max_shard_bytes``) at a time, so neither direction holds more than about one shard beyond
the tensors being converted.  Output is assembled in a hidden temporary directory and renamed into
place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from litespark.config import ConfigError, ModelConfig

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # HF's "5GB"


def model_config_from_hf(hf_dir: Path, seq_length: int | None) -> ModelConfig:
    """The Litespark model shape of an HF Llama ``config.json``; one-line error for what Litespark's
    Llama does not implement (RoPE scaling other than Llama 3's, biases, other activations, a
    decoupled head_dim)."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"--hf {hf_dir}: no config.json")
    c = json.loads(path.read_text())
    if c.get("model_type") != "llama":
        raise ConfigError(f"--hf {hf_dir}: model_type is {c.get('model_type')!r}, only 'llama' is supported")
    # transformers 5 writes rope_parameters, transformers 4 rope_theta and rope_scaling; given both,
    # transformers 5 takes rope_scaling (``rope_scaling or rope_parameters``), and so does this.
    rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
    factor = _llama3_rope_factor(hf_dir, rope, c.get("max_position_embeddings"))
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            raise ConfigError(f"--hf {hf_dir}: {key}=true is not supported (Litespark's Llama has no biases)")
    if c.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"--hf {hf_dir}: hidden_act {c['hidden_act']!r} is not supported (SwiGLU with SiLU only)")
    heads = c["num_attention_heads"]
    if c.get("head_dim") not in (None, c["hidden_size"] // heads):
        raise ConfigError(f"--hf {hf_dir}: head_dim {c['head_dim']} != hidden_size / heads is not supported")
    theta = (
        rope.get("rope_theta") or c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    )
    max_pos = c.get("max_position_embeddings", 4096)
    return ModelConfig(
        num_layers=c["num_hidden_layers"],
        hidden_size=c["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=c.get("num_key_value_heads") or heads,
        ffn_hidden_size=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        seq_length=seq_length or min(max_pos, 4096),
        rotary_base=float(theta),
        rope_scaling_factor=factor,
        norm_epsilon=c.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        init_method_std=c.get("initializer_range", 0.02),
    )


def _llama3_rope_factor(hf_dir: Path, scaling: dict, max_positions: int | None) -> float | None:
    """The Llama 3 RoPE scaling factor of ``scaling`` (``rope_scaling``, or transformers 5's
    ``rope_parameters``), None for plain RoPE; one-line error for another kind of scaling or Llama 3
    parameters Megatron-Core cannot represent.  A missing ``original_max_position_embeddings`` is
    ``max_positions``, as transformers takes it."""
    from litespark.convert.hf_llama import LLAMA3_ROPE_FIXED

    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ConfigError(f"--hf {hf_dir}: RoPE scaling of type {kind!r} is not supported (only 'llama3')")
    defaults = {**LLAMA3_ROPE_FIXED, "original_max_position_embeddings": max_positions}
    for key, fixed in LLAMA3_ROPE_FIXED.items():
        value = scaling.get(key, defaults[key])
        if not isinstance(value, int | float) or float(value) != fixed:
            raise ConfigError(
                f"--hf {hf_dir}: llama3 RoPE scaling with {key}={value} is not supported "
                f"(Megatron-Core's RotaryEmbedding fixes it at {fixed:g})"
            )
    factor = scaling.get("factor")
    if not isinstance(factor, int | float) or not factor > 0:
        raise ConfigError(f"--hf {hf_dir}: llama3 RoPE scaling needs a positive 'factor', got {factor!r}")
    return float(factor)


class HFTensors:
    """Read-only, lazy mapping from HF tensor names to tensors of an HF checkpoint directory."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        index = hf_dir / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (hf_dir / SINGLE).is_file():
            with safe_open(hf_dir / SINGLE, framework="pt") as f:
                weight_map = dict.fromkeys(f.keys(), SINGLE)
        else:
            raise ConfigError(f"--hf {hf_dir}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
        for name in sorted(set(weight_map.values())):
            if not (hf_dir / name).is_file():
                raise ConfigError(f"--hf {hf_dir}: shard {name} listed in {INDEX} is missing")
        self._map, self._dir = weight_map, hf_dir
        self._open: dict[str, Any] = {}

    def keys(self):
        return self._map.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file(name).get_slice(name).get_shape())

    def _file(self, name: str):
        from safetensors import safe_open

        file = self._map[name]
        if file not in self._open:
            self._open[file] = safe_open(self._dir / file, framework="pt")
        return self._open[file]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._map:
            raise ConfigError(f"--hf {self._dir}: tensor {name} is missing")
        return self._file(name).get_tensor(name)

    def __contains__(self, name: str) -> bool:
        return name in self._map


def write_hf_dir(
    out: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    config_kwargs: dict,
    dtype: torch.dtype,
    tokenizer: str | None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[Path]:
    """Write an HF Llama directory at ``out`` (which must not exist or be empty); returns its files."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from litespark.convert.hf_llama import to_llama_config_kwargs, to_transformers4_rope

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    try:
        parts: list[tuple[str, list[str]]] = []
        weight_map: dict[str, str] = {}
        total = 0
        shard: dict[str, torch.Tensor] = {}
        shard_bytes = 0

        def flush() -> None:
            nonlocal shard, shard_bytes
            if shard:
                name = f"part-{len(parts):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                parts.append((name, list(shard)))
                shard, shard_bytes = {}, 0

        for name, tensor in tensors:
            t = tensor.to(dtype).contiguous()
            size = t.numel() * t.element_size()
            if shard and shard_bytes + size > max_shard_bytes:
                flush()
            shard[name] = t
            shard_bytes += size
            total += size
        flush()
        if len(parts) == 1:
            os.replace(tmp / parts[0][0], tmp / SINGLE)
        else:
            for k, (name, names) in enumerate(parts):
                final = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
                os.replace(tmp / name, tmp / final)
                weight_map.update(dict.fromkeys(names, final))
            (tmp / INDEX).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        rope = config_kwargs["rope_parameters"]
        conf = LlamaConfig(**to_llama_config_kwargs(config_kwargs))
        conf.architectures = ["LlamaForCausalLM"]
        setattr(conf, "dtype" if hasattr(conf, "dtype") else "torch_dtype", dtype)  # transformers 5 / 4
        conf.save_pretrained(tmp)
        _add_legacy_rope_keys(tmp / "config.json", rope, to_transformers4_rope(rope))
        if tokenizer and Path(tokenizer).is_dir():
            export_hf_tokenizer(Path(tokenizer), tmp, config_kwargs["vocab_size"])
        elif tokenizer:
            export_tokenizer(Path(tokenizer), tmp, config_kwargs["vocab_size"])
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out.iterdir())


def export_hf_tokenizer(directory: Path, out: Path, vocab_size: int) -> None:
    """A Hugging Face tokenizer directory's tokenizer (chat template included) saved into ``out``,
    with the directory's ``generation_config.json`` (the end-of-turn ids ``generate`` stops at) when
    it has one; the tokenizer must fit the model's embedding."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:
        raise ConfigError(f"--tokenizer {directory}: cannot be loaded ({type(exc).__name__})") from None
    if len(tok) > vocab_size:
        raise ConfigError(
            f"--tokenizer {directory}: {len(tok)} tokens do not fit the model's embedding ({vocab_size} rows)"
        )
    tok.save_pretrained(str(out))
    if (directory / "generation_config.json").is_file():
        shutil.copy(directory / "generation_config.json", out / "generation_config.json")


def export_tokenizer(model_file: Path, out: Path, vocab_size: int) -> None:
    """HF tokenizer files (``tokenizer.json`` + config, and the SentencePiece model itself) from a
    Llama-style SentencePiece model, converted by ``transformers``; its vocabulary must equal the
    model's."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    if not model_file.is_file():
        raise ConfigError(f"--tokenizer {model_file} does not exist")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
    except Exception:
        raise ConfigError(f"--tokenizer {model_file}: not a SentencePiece model") from None
    if sp.get_piece_size() != vocab_size:
        raise ConfigError(
            f"--tokenizer {model_file}: vocabulary of {sp.get_piece_size()} does not match the "
            f"model's embedding ({vocab_size} rows)"
        )
    with tempfile.TemporaryDirectory() as stage:
        shutil.copy(model_file, Path(stage) / "tokenizer.model")
        (Path(stage) / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "LlamaTokenizer",
                    "bos_token": sp.id_to_piece(sp.bos_id()),
                    "eos_token": sp.id_to_piece(sp.eos_id()),
                    "unk_token": sp.id_to_piece(sp.unk_id()),
                    "add_bos_token": True,
                    "add_eos_token": False,
                }
            )
        )
        tok = AutoTokenizer.from_pretrained(stage)
        tok.save_pretrained(str(out))
    shutil.copy(model_file, out / "tokenizer.model")


def _add_legacy_rope_keys(config_json: Path, rope_parameters: dict, legacy: dict) -> None:
    """Also write RoPE as transformers 4 reads it (``legacy``: ``rope_theta``, ``rope_scaling``): transformers 5
    writes only ``rope_parameters``, which transformers 4 ignores, silently using theta 10000 and no
    scaling.  Under transformers 4, ``LlamaConfig`` wrote theta and scaling from its own arguments
    (:func:`~litespark.convert.hf_llama.to_hf_config_kwargs`); all three keys are rewritten here to
    say the same thing whichever version wrote the file."""
    config = json.loads(config_json.read_text())
    config.update(legacy, rope_parameters=rope_parameters)
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
