"""GPU energy from NVML's total-energy counter, split between training and the pauses inside it.

:class:`EnergyMeter` reads this process's GPU counter (millijoules since the driver loaded);
:class:`PhaseMeter` splits wall time and energy between training intervals and the evaluations and
checkpoint saves inside them, so that joules per token count training alone.  Without NVML or a GPU
the energy fields are absent, never zero.
"""

from __future__ import annotations

import os


class EnergyMeter:
    """Reads this process's GPU energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ).

    ``available`` is False without NVML or a GPU: the energy fields are then absent, never zero.
    """

    def __init__(self, device_index: int | None = None):
        self.available, self._handle = False, None
        self._last: int | None = None
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
        except Exception:
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
        if self._paused_at is None:
            raise RuntimeError("PhaseMeter.resume() without a pause()")
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
    bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"  # type: ignore[attr-defined]
    try:
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    except Exception:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = int(visible.split(",")[torch_index]) if visible and visible.split(",")[0].isdigit() else torch_index
        return pynvml.nvmlDeviceGetHandleByIndex(physical)
