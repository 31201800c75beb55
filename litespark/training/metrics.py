"""Model arithmetic and throughput metrics, defined once.

Parameter counts and FLOPs per token follow the PaLM / torchtitan convention used in the Litespark
report's MFU figures: FLOPs per token = 6 N + 12 L h s, where N counts the parameters that take part
in matrix multiplies (every linear layer, the LM head included, the input embedding and norms
excluded), L is the layer count, h the hidden size and s the sequence length (the attention score and
value products, forward plus backward).  MFU divides achieved FLOP/s by the device's dense BF16 peak,
also for FP8 runs, so FP8 and BF16 runs are compared on one scale.  Energy readings come from
:mod:`litespark.training.energy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from litespark.config import ModelConfig

# Dense BF16 tensor-core peak in TFLOP/s (no sparsity), keyed by a substring of the device name.
# Order matters: the first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 SXM", 989.4),
    ("H100 80GB HBM3", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
)


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model shape, split the way the FLOP formula needs."""

    embedding: int
    """Input embedding table (vocab x h): a lookup, no FLOPs."""
    transformer_matmul: int
    """Linear weights of all layers (QKV, output projection, FC1, FC2)."""
    norms: int
    """RMSNorm weights (two per layer and the final one)."""
    lm_head: int
    """Output projection to the vocabulary (0 extra parameters when tied, but still matmul FLOPs)."""
    tied: bool

    @property
    def matmul(self) -> int:
        """N in 6N: every parameter used in a matrix multiply, LM head included."""
        return self.transformer_matmul + self.lm_head

    @property
    def without_input_embedding(self) -> int:
        """The headline count: everything but the input embedding (LM head counted once)."""
        return self.transformer_matmul + self.norms + self.lm_head

    @property
    def total(self) -> int:
        """Distinct trainable parameters."""
        return self.embedding + self.transformer_matmul + self.norms + (0 if self.tied else self.lm_head)


def count_parameters(m: ModelConfig, vocab_size: int | None = None) -> ParameterCount:
    """Analytic parameter count of a Litespark Llama (no biases, SwiGLU MLP, RMSNorm).

    ``vocab_size`` overrides ``m.vocab_size`` (e.g. with the padded vocabulary that the model
    actually allocates).
    """
    v = m.vocab_size if vocab_size is None else vocab_size
    h, kv = m.hidden_size, m.num_query_groups * (m.hidden_size // m.num_attention_heads)
    attention = h * h + 2 * h * kv + h * h  # Q, K, V, output projection
    mlp = 3 * h * m.ffn_hidden_size  # gate, up, down
    return ParameterCount(
        embedding=v * h,
        transformer_matmul=m.num_layers * (attention + mlp),
        norms=(2 * m.num_layers + 1) * h,
        lm_head=v * h,
        tied=m.tie_embeddings,
    )


def flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token (forward + backward): 6 N + 12 L h s."""
    n = count_parameters(m).matmul
    return 6.0 * n + 12.0 * m.num_layers * m.hidden_size * m.seq_length


def flops_of_documents(m: ModelConfig, tokens: int, attention_pairs: int) -> float:
    """Training FLOPs of ``tokens`` tokens in documents whose squared lengths sum to
    ``attention_pairs``: 6 N per token plus the attention term 12 L h per pair of tokens that
    attend (a token of a document of length n attends over n; with one document of ``seq_length``
    per row this is :func:`flops_per_token` x ``tokens``)."""
    n = count_parameters(m).matmul
    return 6.0 * n * tokens + 12.0 * m.num_layers * m.hidden_size * attention_pairs


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense BF16 peak of a device by name, or None when it is not in the table."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key in device_name:
            return peak
    return None


def mfu(tokens_per_second_per_device: float, m: ModelConfig, peak_tflops: float) -> float:
    """Model FLOPs utilisation (0..1) of one device against its dense BF16 peak."""
    return tokens_per_second_per_device * flops_per_token(m) / (peak_tflops * 1e12)


def interval_metrics(
    *,
    tokens: int,
    seconds: float,
    world_size: int,
    m: ModelConfig,
    peak_tflops: float | None,
    energy_joules_all_gpus: float | None,
    gpus_reporting: int,
    flops: float | None = None,
) -> dict:
    """Throughput and energy of one logging interval, per device and in all (see module docstring).
    ``flops``: the interval's training FLOPs when its documents are not ``seq_length`` rows (packed
    SFT: :func:`flops_of_documents`); default ``tokens`` x :func:`flops_per_token`."""
    per_device = tokens / seconds / world_size
    flops = tokens * flops_per_token(m) if flops is None else flops
    tflops = flops / seconds / world_size / 1e12
    out = {"tokens_per_s_per_gpu": per_device, "tflops_per_gpu": tflops}
    if peak_tflops:
        out["mfu"] = tflops / peak_tflops
    if energy_joules_all_gpus is not None and gpus_reporting == world_size:
        out["energy_j"] = energy_joules_all_gpus
        out["joules_per_token"] = energy_joules_all_gpus / tokens
        out["power_w_per_gpu"] = energy_joules_all_gpus / seconds / world_size
    return out
