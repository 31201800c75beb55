"""Named starting points for a run, as functions so each call returns a fresh config.

``tiny`` is small enough for CPU tests and the demo; ``llama-3b`` is the Llama-3.2-3B shape with the
Llama-2 SentencePiece vocabulary (32,000), ``llama-30b`` the LLaMA-30B shape.  Everything in a preset
can be overridden with ``--set``.
"""

from __future__ import annotations

from collections.abc import Callable

from litespark.config import ConfigError, LitesparkConfig


def tiny() -> LitesparkConfig:
    """Two small layers with GQA; runs a step in well under a second on one CPU core."""
    cfg = LitesparkConfig(preset="tiny")
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups = 2, 64, 4, 2
    m.ffn_hidden_size, m.vocab_size, m.seq_length = 176, 512, 64
    cfg.precision.bf16 = False  # CPU: fp32 keeps tests exact and fast
    cfg.kernels.backend = "torch"
    cfg.data.micro_batch_size, cfg.data.global_batch_size = 4, 8
    cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_iters = 3e-3, 3e-4, 10
    cfg.run.train_iters, cfg.run.log_interval = 200, 10
    cfg.run.run_dir = "runs/tiny"
    return cfg


def llama_3b() -> LitesparkConfig:
    """Llama-3.2-3B shape (28 x 3072, 24 heads, 8 KV groups, FFN 8192), vocab 32000, seq 4096."""
    cfg = LitesparkConfig(preset="llama-3b")
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups = 28, 3072, 24, 8
    m.ffn_hidden_size, m.vocab_size, m.seq_length = 8192, 32000, 4096
    m.rotary_base, m.norm_epsilon = 500000.0, 1e-5
    cfg.precision.fp8 = True
    cfg.data.micro_batch_size, cfg.data.global_batch_size = None, 8  # automatic: the planner's choice
    cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_iters = 3e-4, 3e-5, 100
    cfg.run.train_iters, cfg.run.log_interval = 1000, 10
    cfg.run.run_dir = "runs/llama-3b"
    return cfg


def llama_30b() -> LitesparkConfig:
    """LLaMA-30B shape (60 x 6656, 52 heads without GQA, FFN 17920), vocab 32000, seq 4096."""
    cfg = LitesparkConfig(preset="llama-30b")
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups = 60, 6656, 52, 52
    m.ffn_hidden_size, m.vocab_size, m.seq_length = 17920, 32000, 4096
    m.rotary_base, m.norm_epsilon = 10000.0, 1e-6
    cfg.precision.fp8 = True
    cfg.parallel.tensor_parallel, cfg.parallel.zero_stage = 4, 1  # sequence parallel: not yet in the trainer
    cfg.data.micro_batch_size, cfg.data.global_batch_size = None, 256  # automatic: the planner's choice
    cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_iters = 1.5e-4, 1.5e-5, 2000
    cfg.run.train_iters, cfg.run.log_interval = 100000, 10
    cfg.run.run_dir = "runs/llama-30b"
    return cfg


PRESETS: dict[str, Callable[[], LitesparkConfig]] = {
    "tiny": tiny,
    "llama-3b": llama_3b,
    "llama-30b": llama_30b,
}


def get_preset(name: str) -> LitesparkConfig:
    """A fresh config for preset ``name``."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})") from None
