"""Training-time augmentation built from a handful of plain, sweepable numbers.

Image, foreground mask and ignore band are transformed together by one albumentations pipeline:
geometric ops move all three (the masks with nearest-neighbour, so they stay binary and aligned);
pixels that come from outside the original frame are black in the image, background in the mask
and not ignored.
Flips use their probability; every other op is always applied with a strength drawn
uniformly from +-its limit, a range that includes the identity.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Callable

# albumentations otherwise queries PyPI for a newer version on import (a network call, up to 2 s)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

Masks = tuple[np.ndarray, np.ndarray, np.ndarray | None]
_OUTSIDE = 0  # the masks' code for out-of-frame pixels: background, not ignored


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; all zero means no augmentation at all."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip
    rotate: float = 0.0  # max rotation, degrees (+-)
    brightness: float = 0.0  # max brightness change (fraction of full range, +-)
    contrast: float = 0.0  # max contrast change (+-)
    color_jitter: float = 0.0  # saturation x[1-c, 1+c] and hue shift +-0.1*c of the colour circle
    scale_shift: float = 0.0  # max relative zoom and shift (+-)
    gamma: float = 0.0  # max relative gamma change: 0.2 -> gamma in [0.8, 1.2]

    @classmethod
    def reports(cls) -> "AugmentConfig":
        """The lab reports' baseline: horizontal flips, +-15 degrees, +-0.2 brightness/contrast."""
        return cls(hflip=0.5, vflip=0.0, rotate=15.0, brightness=0.2, contrast=0.2)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    def as_dict(self) -> dict[str, float]:
        """Plain {name: value} for logging and the results store."""
        return {k: float(v) for k, v in asdict(self).items()}


class Augmenter:
    """Callable (image HxWx3 uint8, mask HxW bool, ignore band HxW bool or None) -> augmented
    (image, mask, ignore band), same shapes and dtypes (the band stays None where none was given).

    Reproducible: seed None draws the seed from numpy's global RNG (so np.random.seed() governs
    it). In a DataLoader worker the first call reseeds from the worker's torch seed, otherwise
    all forked workers would share the parent's random state and repeat each other's draws.
    """

    def __init__(self, cfg: AugmentConfig, seed: int | None = None):
        self.cfg = cfg
        self.seed = int(np.random.randint(0, 2**31 - 1)) if seed is None else int(seed)
        self.compose = A.Compose(_transforms(cfg), seed=self.seed)
        self._pid = os.getpid()

    def reseed(self, seed: int) -> None:
        """Restart the random sequence from seed."""
        self.seed = int(seed)
        self.compose.set_random_seed(self.seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None) -> Masks:
        if os.getpid() != self._pid:  # first call in a new worker process
            self._pid = os.getpid()
            self.reseed(_worker_seed(self.seed))
        # mask and band travel as one uint8 code (bit 0 foreground, bit 1 ignored) through one nearest
        # warp: they cannot drift apart, and the random draws are those of a single mask
        code = np.asarray(mask, dtype=np.uint8)
        if ignore is not None:
            code = code | (np.asarray(ignore, dtype=np.uint8) << 1)
        out = self.compose(image=image, mask=code)
        # flips return negative-stride views, which torch.from_numpy rejects
        moved = np.ascontiguousarray(out["mask"])
        return (np.ascontiguousarray(out["image"]), (moved & 1).astype(bool),
                None if ignore is None else (moved & 2).astype(bool))


def _worker_seed(base: int) -> int:
    """The torch DataLoader worker's seed (reproducible from the loader's generator), else base+pid."""
    try:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
    except ImportError:
        info = None
    if info is not None:
        return int(info.seed % 2**32)
    return int(np.random.SeedSequence([base, os.getpid()]).generate_state(1)[0])


def _transforms(cfg: AugmentConfig) -> list:
    ts: list = []
    if cfg.hflip > 0:
        ts.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        ts.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.rotate > 0 or cfg.scale_shift > 0:
        s = cfg.scale_shift
        ts.append(
            A.Affine(
                scale=(1 - s, 1 + s),
                translate_percent=(-s, s),
                rotate=(-cfg.rotate, cfg.rotate),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=_OUTSIDE,
                p=1.0,
            )
        )
    if cfg.brightness > 0 or cfg.contrast > 0:
        ts.append(A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=1.0))
    if cfg.color_jitter > 0:
        c = cfg.color_jitter
        ts.append(A.ColorJitter(brightness=0, contrast=0, saturation=(max(0.0, 1 - c), 1 + c), hue=min(0.1 * c, 0.5), p=1.0))
    if cfg.gamma > 0:
        g = cfg.gamma
        ts.append(A.RandomGamma(gamma_limit=(100 * max(0.01, 1 - g), 100 * (1 + g)), p=1.0))
    return ts


def build_augment(cfg: AugmentConfig, seed: int | None = None) -> Callable[..., Masks] | None:
    """The augmentation function for cfg, or None when cfg does nothing (so callers skip it).

    `seed` makes the sequence of random draws reproducible.
    """
    if all(v == 0 for v in cfg.as_dict().values()):
        return None
    for name, value in cfg.as_dict().items():
        if value < 0:
            raise ValueError(f"augmentation {name} must be >= 0, got {value}")
    return Augmenter(cfg, seed=seed)
