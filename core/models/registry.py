"""The architecture registry: name -> factory, and the two functions every caller uses."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from .ensemble import Ensemble

MODELS: dict[str, Callable[..., nn.Module]] = {}
"""Architecture name -> factory called as ``factory(width=..., in_channels=...)``."""

_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])


def register(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator adding a model class/factory to MODELS under `name` (names must be unique)."""
    def decorator(factory: _Factory) -> _Factory:
        if name in MODELS:
            raise ValueError(f"architecture {name!r} is already registered")
        MODELS[name] = factory
        return factory
    return decorator


def available_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(MODELS)


def build_model(name: str, width: float = 1.0, in_channels: int = 3, members: int = 1) -> nn.Module:
    """Build architecture `name`; `width` scales every channel count (see `scaled_channels`);
    `members` > 1 builds an `Ensemble` of that many independently initialised copies."""
    if name not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; choose from: {', '.join(available_models())}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if members > 1:
        return Ensemble([MODELS[name](width=width, in_channels=in_channels) for _ in range(members)])
    return MODELS[name](width=width, in_channels=in_channels)


def count_flops(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Forward FLOPs (2 x multiply-accumulates) of one image_size x image_size image.

    Counts Conv2d, ConvTranspose2d and Linear layers exactly from the shapes each one sees
    (bias, norm, activation and pooling costs are ignored: they are a few percent at most).
    Internal padding to a multiple of 16/32 is counted, since it is compute really done.
    Runs the model on meta tensors: nothing is computed or allocated, whatever the size.
    Training costs about 3x this (forward + two backward matmuls per layer).
    """
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.ConvTranspose2d):
            # every input element meets every kernel tap of its group's output channels
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += inputs[0].numel() * (module.out_channels // module.groups) * k
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * (module.in_channels // module.groups) * k
        else:  # nn.Linear
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    state = {name: torch.empty_like(t, device="meta")
             for name, t in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty(1, in_channels, image_size, image_size, device="meta")
    was_training = model.training
    model.eval()  # batch-norm statistics of a single 1x1 map would be rejected in train mode
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (x,))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return 2 * macs

