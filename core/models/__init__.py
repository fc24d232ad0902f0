"""Segmentation models, built by name from a registry.

Every model maps an image batch (N, C, H, W) to pet-vs-background LOGITS (N, 1, H, W) for any
H, W. Adding an architecture is one decorated class or factory::

    @register("my_net")
    class MyNet(nn.Module):
        def __init__(self, width: float = 1.0, in_channels: int = 3): ...

    model = build_model("my_net", width=0.5)
"""
from __future__ import annotations

from . import efficientnet_lite0_unet, resnet34_unet, unet  # noqa: E402,F401  (registers the built-in architectures)
from .registry import MODELS, available_models, build_model, count_flops, register

__all__ = ["MODELS", "available_models", "build_model", "count_flops", "register"]
