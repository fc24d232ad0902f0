"""The trainer's memory layout on a CPU is chosen by measuring both, once per step shape."""
from __future__ import annotations

import torch

from core.training import loop
from core.training.loop import TrainConfig, use_channels_last


def _timed(monkeypatch, nchw_s: float, channels_last_s: float) -> list[bool]:
    """Make step_seconds report these times; returns the layouts it was asked to time."""
    asked: list[bool] = []

    def fake_step_seconds(cfg: TrainConfig, steps: int = 3) -> float:
        asked.append(cfg.channels_last)
        return channels_last_s if cfg.channels_last else nchw_s

    monkeypatch.setattr(loop, "step_seconds", fake_step_seconds)
    monkeypatch.setattr(loop, "_MEASURED_LAYOUT", {})
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)  # fp32 without timing: the layout alone (test_precision)
    return asked


def test_channels_last_is_chosen_on_a_cpu_where_it_measures_clearly_faster(monkeypatch):
    asked = _timed(monkeypatch, nchw_s=0.30, channels_last_s=0.20)  # 1.5x, as on an Intel Xeon with AMX
    assert use_channels_last(TrainConfig(arch="unet"), torch.device("cpu")) is True
    assert asked == [False, True]


def test_nchw_stays_where_channels_last_wins_by_less_than_the_margin(monkeypatch):
    _timed(monkeypatch, nchw_s=0.30, channels_last_s=0.28)  # 7%: timing noise on a shared CPU
    assert use_channels_last(TrainConfig(arch="unet"), torch.device("cpu")) is False


def test_the_layout_is_measured_once_per_step_shape(monkeypatch):
    asked = _timed(monkeypatch, nchw_s=0.30, channels_last_s=0.20)
    cfg = TrainConfig(arch="unet", width=0.5)
    for _ in range(3):
        use_channels_last(cfg, torch.device("cpu"))
    assert len(asked) == 2
    use_channels_last(TrainConfig(arch="unet", width=0.5, batch_size=16), torch.device("cpu"))  # another shape
    assert len(asked) == 4


def test_an_explicit_layout_or_a_cuda_device_measures_nothing(monkeypatch):
    asked = _timed(monkeypatch, nchw_s=0.30, channels_last_s=0.20)
    assert use_channels_last(TrainConfig(channels_last=False), torch.device("cpu")) is False
    assert use_channels_last(TrainConfig(channels_last=True), torch.device("cpu")) is True
    assert use_channels_last(TrainConfig(), torch.device("cuda")) is True
    assert use_channels_last(TrainConfig(), torch.device("mps")) is False
    assert asked == []


def test_the_real_measurement_returns_a_layout_that_trains(monkeypatch):
    monkeypatch.setattr(loop, "_MEASURED_LAYOUT", {})
    cfg = TrainConfig(arch="unet", width=0.125, image_size=32, batch_size=2, amp="off")  # the precision: test_precision
    assert isinstance(use_channels_last(cfg, torch.device("cpu")), bool)
    assert len(loop._MEASURED_LAYOUT) == 1
