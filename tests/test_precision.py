"""On a CPU with native bf16 the trainer autocasts to bf16 only where a bf16 step measures clearly
faster than an fp32 one, once per step shape (core.training.loop.choose_amp)."""
from __future__ import annotations

import pytest
import torch

from core.training import loop
from core.training.loop import TrainConfig, choose_amp

CPU = torch.device("cpu")


def _timed(monkeypatch: pytest.MonkeyPatch, bf16_s: float, fp32_s: float, native: bool = True) -> list[str]:
    """Make step_seconds report these times on a CPU with (or without) native bf16; returns the precisions timed."""
    asked: list[str] = []

    def fake_step_seconds(cfg: TrainConfig, steps: int = 3) -> float:
        asked.append(cfg.amp)
        return bf16_s if cfg.amp == "bf16" else fp32_s

    monkeypatch.setattr(loop, "step_seconds", fake_step_seconds)
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: native)
    monkeypatch.setattr(loop, "_MEASURED_AMP", {})
    return asked


def test_bf16_is_chosen_where_it_measures_clearly_faster(monkeypatch):
    asked = _timed(monkeypatch, bf16_s=0.10, fp32_s=0.15)
    assert choose_amp(TrainConfig(arch="unet"), CPU) == torch.bfloat16
    assert asked == ["bf16", "off"]


def test_fp32_is_chosen_where_native_bf16_is_slower(monkeypatch):
    # as measured on a 2-core Intel Xeon with AVX512-BF16, no AMX: quarter-width unet, 64 px, batch 8
    _timed(monkeypatch, bf16_s=8 / 80, fp32_s=8 / 95)
    assert choose_amp(TrainConfig(arch="unet", width=0.25), CPU) is None


def test_fp32_stays_where_bf16_wins_by_less_than_the_margin(monkeypatch):
    _timed(monkeypatch, bf16_s=0.143, fp32_s=0.15)  # 5%: timing noise on a shared CPU
    assert choose_amp(TrainConfig(arch="unet"), CPU) is None


def test_the_precision_is_measured_once_per_step_shape(monkeypatch):
    asked = _timed(monkeypatch, bf16_s=0.10, fp32_s=0.15)
    for _ in range(3):
        choose_amp(TrainConfig(arch="unet", width=0.5), CPU)
    assert len(asked) == 2
    choose_amp(TrainConfig(arch="unet", width=0.5, batch_size=16), CPU)  # another shape
    assert len(asked) == 4


def test_an_explicit_precision_a_cpu_without_native_bf16_or_cuda_measures_nothing(monkeypatch):
    asked = _timed(monkeypatch, bf16_s=0.10, fp32_s=0.15)
    assert choose_amp(TrainConfig(amp="off"), CPU) is None
    assert choose_amp(TrainConfig(amp="bf16"), CPU) == torch.bfloat16
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)
    assert choose_amp(TrainConfig(), CPU) is None
    assert asked == []


def test_the_real_measurement_picks_a_precision_that_trains(monkeypatch):
    monkeypatch.setattr(loop, "_MEASURED_AMP", {})
    cfg = TrainConfig(arch="unet", width=0.125, image_size=32, batch_size=2, channels_last=False)
    assert choose_amp(cfg, CPU) in (None, torch.bfloat16)
    assert len(loop._MEASURED_AMP) == (1 if loop.cpu_has_fast_bf16() else 0)
    assert loop.step_seconds(cfg, steps=1) > 0


def test_the_layout_under_auto_precision_reuses_the_timings_of_the_precision_chosen(monkeypatch):
    asked: list[tuple[str, bool | None]] = []

    def fake_step_seconds(cfg: TrainConfig, steps: int = 3) -> float:
        asked.append((cfg.amp, cfg.channels_last))
        return 0.1 if cfg.amp == "off" else 0.2  # fp32 wins; neither layout does
    monkeypatch.setattr(loop, "step_seconds", fake_step_seconds)
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(loop, "_MEASURED_AMP", {})
    monkeypatch.setattr(loop, "_MEASURED_LAYOUT", {})
    cfg = TrainConfig(arch="unet")
    assert choose_amp(cfg, CPU) is None
    loop._MEASURED_LAYOUT[("unet", 1.0, 1, 64, 8, "off", False, torch.get_num_threads())] = True
    loop._MEASURED_LAYOUT[("unet", 1.0, 1, 64, 8, "bf16", False, torch.get_num_threads())] = False
    asked.clear()
    assert loop.use_channels_last(cfg, CPU) is True  # fp32's layout, no new timing
    assert asked == []
