"""The GPUs the planner knows: memory, dense BF16 peak and HBM bandwidth, from the vendors' data sheets.

FP8 peaks are twice the BF16 ones on Hopper.  ``--gpu NAME:GiB:TFLOPS[:TB/s]`` describes any other
device (bandwidth defaults to an H100's).
"""

from __future__ import annotations

from dataclasses import dataclass

from litespark.config import ConfigError


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    """What torch reports as the device's total memory (a little under the marketing figure)."""
    bf16_tflops: float
    """Dense BF16 tensor-core peak."""
    hbm_tb_per_s: float

    @property
    def fp8_tflops(self) -> float:
        return 2.0 * self.bf16_tflops


GPUS: dict[str, Gpu] = {
    "h200": Gpu("H200", 139.8, 989.4, 4.8),
    "h100": Gpu("H100 SXM 80GB", 79.1, 989.4, 3.35),
}


def parse_gpu(spec: str) -> Gpu:
    """``h200``, ``h100`` or ``NAME:GiB:TFLOPS[:TB/s]``; ConfigError naming the problem otherwise."""
    key = spec.lower()
    if key in GPUS:
        return GPUS[key]
    parts = spec.split(":")
    if len(parts) in (3, 4):
        try:
            numbers = [float(p) for p in parts[1:]]
        except ValueError:
            numbers = []
        if numbers and all(n > 0 for n in numbers):
            bandwidth = numbers[2] if len(numbers) == 3 else GPUS["h100"].hbm_tb_per_s
            return Gpu(parts[0], numbers[0], numbers[1], bandwidth)
    raise ConfigError(
        f"--gpu {spec!r}: expected one of {', '.join(GPUS)} or NAME:GiB:TFLOPS[:TB/s] with positive numbers"
    )


def gpu_of_this_host() -> Gpu | None:
    """The planner's description of CUDA device 0, or None without CUDA.  Known names take the
    table's peak and bandwidth; the memory is what the device reports."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    for key, gpu in GPUS.items():
        if key in props.name.lower():
            return Gpu(props.name, memory, gpu.bf16_tflops, gpu.hbm_tb_per_s)
    from litespark.training.metrics import peak_bf16_tflops

    return Gpu(props.name, memory, peak_bf16_tflops(props.name) or 989.4, GPUS["h100"].hbm_tb_per_s)
