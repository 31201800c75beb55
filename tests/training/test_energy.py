"""NVML energy readings and how they are split between training and the pauses inside it (litespark.training.energy)."""

from __future__ import annotations

import pytest

from litespark.config.presets import get_preset
from litespark.training.energy import NVML_COUNTER_MODULUS, PhaseMeter, energy_delta_joules
from litespark.training.metrics import interval_metrics


def test_energy_arithmetic():
    assert energy_delta_joules(1_000_000, 1_250_500) == pytest.approx(250.5)
    assert energy_delta_joules(None, 5) is None and energy_delta_joules(5, None) is None
    assert energy_delta_joules(2_000, 1_000) is None  # counter went back (driver reload): unknown, not negative
    m = get_preset("llama-3b").model
    out = interval_metrics(
        tokens=40_960,
        seconds=2.0,
        world_size=2,
        m=m,
        peak_tflops=989.4,
        energy_joules_all_gpus=1400.0,
        gpus_reporting=2,
    )
    assert out["tokens_per_s_per_gpu"] == 10_240
    assert out["joules_per_token"] == pytest.approx(1400 / 40_960)
    assert out["power_w_per_gpu"] == pytest.approx(350.0)
    partial = interval_metrics(
        tokens=40_960, seconds=2.0, world_size=2, m=m, peak_tflops=None, energy_joules_all_gpus=700.0, gpus_reporting=1
    )
    assert "energy_j" not in partial and "mfu" not in partial  # a rank without NVML: absent, not understated


def test_energy_delta_handles_wrap_reset_and_missing():
    assert energy_delta_joules(1_000, 351_000) == 350.0
    top = NVML_COUNTER_MODULUS - 2_000
    assert energy_delta_joules(top, 3_000) == 5.0  # wrapped past 2**64: 2 J before, 3 J after
    assert energy_delta_joules(500_000, 100) is None  # went back without being near the top: reset
    assert energy_delta_joules(None, 5) is None and energy_delta_joules(5, None) is None


class RecordedCounter:
    """An EnergyMeter replaying recorded millijoule readings."""

    def __init__(self, readings):
        self.readings, self.available, self._last = list(readings), True, None

    def interval_joules(self):
        now = self.readings.pop(0)
        previous, self._last = self._last, now
        return energy_delta_joules(previous, now)


def test_phase_meter_keeps_pauses_out_of_the_interval(monkeypatch):
    clock = iter([0.0, 10.0, 14.0, 20.0])  # start, pause at 10 s, resume at 14 s, close at 20 s
    # readings: start 0, pause 7,000 J, resume 7,400 J, close 9,800 J  (mJ)
    counter = RecordedCounter([0, 7_000_000, 7_400_000, 9_800_000])
    counter.interval_joules()  # the set-up reading the trainer takes just before
    meter = PhaseMeter(counter, clock=lambda: next(clock))
    meter.pause()
    assert meter.resume() == (4.0, 400.0)
    assert meter.close_interval() == (16.0, 9400.0)
