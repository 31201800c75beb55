"""Model arithmetic and throughput metrics, defined once.

Parameter counts and FLOPs per token follow the PaLM / torchtitan convention used in the Litespark
report's MFU figures: FLOPs per token = 6 N + 12 L h s, where N counts the parameters that take part
in matrix multiplies (every linear layer, the LM head included, the input embedding and norms
excluded), L is the layer count, h the hidden size and s the sequence length (the attention score and
value products, forward plus backward).  MFU divides achieved FLOP/s by the device's dense BF16 peak,
also for FP8 runs, so FP8 and BF16 runs are compared on one scale.
"""

from __future__ import annotations

import os
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


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense BF16 peak of a device by name, or None when it is not in the table."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key in device_name:
            return peak
    return None


def mfu(tokens_per_second_per_device: float, m: ModelConfig, peak_tflops: float) -> float:
    """Model FLOPs utilisation (0..1) of one device against its dense BF16 peak."""
    return tokens_per_second_per_device * flops_per_token(m) / (peak_tflops * 1e12)


# ----------------------------------------------------------------------------------------------
# Energy: NVML's total-energy counter


class EnergyMeter:
    """Reads this process's GPU energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ).

    ``available`` is False without NVML or a GPU: the energy fields are then absent, never zero.
    """

    def __init__(self, device_index: int | None = None):
        self.available, self._handle, self._last = False, None, None
        try:
            import pynvml
            import torch

            if not torch.cuda.is_available():
                return
            pynvml.nvmlInit()
            index = torch.cuda.current_device() if device_index is None else device_index
            self._handle = _nvml_handle(pynvml, index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # probe: not every GPU has it
            self._pynvml, self.available = pynvml, True
        except Exception:  # noqa: BLE001 - NVML missing, no permission, unsupported device
            self.available = False

    def read_mj(self) -> int | None:
        """The counter now, in millijoules, or None when unavailable."""
        if not self.available:
            return None
        return int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def interval_joules(self) -> float | None:
        """Joules since the previous call (None on the first call, without NVML, or on a counter reset)."""
        now = self.read_mj()
        previous, self._last = self._last, now
        return energy_delta_joules(previous, now)


NVML_COUNTER_MODULUS = 2**64
"""``nvmlDeviceGetTotalEnergyConsumption`` is an unsigned 64-bit millijoule counter."""
_WRAP_WINDOW = 2**40  # ~35 years of a 1 kW GPU: a reading this close to the top can only have wrapped


def energy_delta_joules(previous_mj: int | None, now_mj: int | None) -> float | None:
    """Energy between two counter readings.

    A counter that wrapped past 2**64 (previous reading within ``_WRAP_WINDOW`` of the top, new one
    near zero) is unwrapped; one that otherwise went back (a driver reload resets it) gives None, as
    does a missing reading, so a bad interval is reported as unknown rather than as a huge or
    negative value.
    """
    if previous_mj is None or now_mj is None:
        return None
    if now_mj >= previous_mj:
        return (now_mj - previous_mj) / 1000.0
    if previous_mj >= NVML_COUNTER_MODULUS - _WRAP_WINDOW and now_mj < _WRAP_WINDOW:
        return (NVML_COUNTER_MODULUS - previous_mj + now_mj) / 1000.0
    return None


class PhaseMeter:
    """Splits wall time and GPU energy between training intervals and the pauses inside them
    (evaluation, checkpoint saves), so that throughput and joules per token count training alone and
    the pauses are reported on their own.

    The first interval starts now and counts energy from ``energy``'s last reading: the caller takes
    that reading (the set-up phase's) just before.
    """

    def __init__(self, energy: EnergyMeter, clock=None):
        import time

        self._clock = clock or time.perf_counter
        self.energy = energy
        self._start = self._clock()
        self._pending: float | None = 0.0 if energy.available else None
        self._paused_at: float | None = None

    def _add(self, joules: float | None) -> None:
        self._pending = None if (self._pending is None or joules is None) else self._pending + joules

    def pause(self) -> None:
        """A side phase begins: bank the interval's energy so far."""
        self._add(self.energy.interval_joules())
        self._paused_at = self._clock()

    def resume(self) -> tuple[float, float | None]:
        """The side phase ends: its (seconds, joules), which the interval will not include."""
        seconds = self._clock() - self._paused_at
        self._start += seconds
        self._paused_at = None
        return seconds, self.energy.interval_joules()

    def close_interval(self) -> tuple[float, float | None]:
        """The training interval ends: its (seconds, joules) without the pauses; the next one starts."""
        now = self._clock()
        seconds = now - self._start
        self._add(self.energy.interval_joules())
        joules, self._pending = self._pending, (0.0 if self.energy.available else None)
        self._start = now
        return seconds, joules


def _nvml_handle(pynvml, torch_index: int):
    """NVML handle of torch's device ``torch_index`` (matched by PCI bus, so CUDA_VISIBLE_DEVICES is honoured)."""
    import torch

    props = torch.cuda.get_device_properties(torch_index)
    bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    try:
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    except Exception:  # noqa: BLE001 - fall back to the visible-devices mapping
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = int(visible.split(",")[torch_index]) if visible and visible.split(",")[0].isdigit() else torch_index
        return pynvml.nvmlDeviceGetHandleByIndex(physical)


def interval_metrics(*, tokens: int, seconds: float, world_size: int, m: ModelConfig, peak_tflops: float | None,
                     energy_joules_all_gpus: float | None, gpus_reporting: int) -> dict:
    """Throughput and energy of one logging interval, per device and in all (see module docstring)."""
    per_device = tokens / seconds / world_size
    out = {"tokens_per_s_per_gpu": per_device,
           "tflops_per_gpu": per_device * flops_per_token(m) / 1e12}
    if peak_tflops:
        out["mfu"] = mfu(per_device, m, peak_tflops)
    if energy_joules_all_gpus is not None and gpus_reporting == world_size:
        out["energy_j"] = energy_joules_all_gpus
        out["joules_per_token"] = energy_joules_all_gpus / tokens
        out["power_w_per_gpu"] = energy_joules_all_gpus / seconds / world_size
    return out
