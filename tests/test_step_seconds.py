"""core.training.loop.step_seconds: measurable from anywhere, inference mode included (predict
chooses its memory layout by timing training steps when nothing has trained in the process yet)."""
from __future__ import annotations

import pytest
import torch

from core.training import loop
from core.training.loop import TrainConfig, step_seconds, use_channels_last


def test_a_training_step_is_timed_even_from_inside_inference_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "_MEASURED_LAYOUT", {})  # a fresh process: predict is the first to ask
    cfg = TrainConfig(arch="unet", width=0.125, image_size=32, batch_size=2, device="cpu", amp="off")
    with torch.inference_mode():
        assert step_seconds(cfg, steps=1) > 0
        assert use_channels_last(cfg, torch.device("cpu")) in (True, False)
    assert len(loop._MEASURED_LAYOUT) == 1
