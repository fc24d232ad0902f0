"""core.data.augment: image and trimap augmented together from plain parameters."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.augment import AugmentConfig, build_augment


def _square(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """White square (pet, trimap 1) on black (background, trimap 2), off-centre."""
    image = np.zeros((size, size, 3), np.uint8)
    trimap = np.full((size, size), 2, np.uint8)
    image[8:24, 12:32] = 255
    trimap[8:24, 12:32] = 1
    return image, trimap


def _gradient(size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_all_zero_config_builds_nothing() -> None:
    assert build_augment(AugmentConfig.none()) is None
    assert set(AugmentConfig.none().as_dict().values()) == {0.0}


def test_presets_and_as_dict() -> None:
    assert AugmentConfig.reports().as_dict() == {
        "hflip": 0.5, "vflip": 0.0, "rotate": 15.0, "brightness": 0.2, "contrast": 0.2,
        "color_jitter": 0.0, "scale_shift": 0.0, "gamma": 0.0,
    }
    assert AugmentConfig().hflip == 0.5 and build_augment(AugmentConfig()) is not None


def test_certain_flips_flip_image_and_trimap_exactly() -> None:
    image, trimap = _square()
    out_image, out_trimap = build_augment(AugmentConfig(hflip=1.0), seed=0)(image, trimap)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_trimap, trimap[:, ::-1])
    out_image, out_trimap = build_augment(AugmentConfig(hflip=0.0, vflip=1.0), seed=0)(image, trimap)
    np.testing.assert_array_equal(out_image, image[::-1])
    np.testing.assert_array_equal(out_trimap, trimap[::-1])
    assert out_image.flags.c_contiguous and out_trimap.flags.c_contiguous


def test_rotation_keeps_trimap_values_and_fills_outside_with_background() -> None:
    image = np.full((40, 40, 3), 255, np.uint8)
    trimap = np.ones((40, 40), np.uint8)
    trimap[:, :3] = 3
    augment = build_augment(AugmentConfig(hflip=0.0, rotate=45.0), seed=1)
    filled = 0
    for _ in range(10):
        out_image, out_trimap = augment(image, trimap)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_trimap.shape == trimap.shape and out_trimap.dtype == np.uint8
        assert set(np.unique(out_trimap)) <= {1, 2, 3}
        outside = out_trimap == 2
        filled += outside.sum()
        # where the trimap says "came from outside", the image is the black fill (edges blend)
        assert np.mean(out_image[outside].max(axis=-1) < 128) > 0.9
    assert filled > 0


def test_geometry_moves_image_and_trimap_together() -> None:
    image, trimap = _square()
    augment = build_augment(AugmentConfig(hflip=0.5, vflip=0.5, rotate=30.0, scale_shift=0.2), seed=2)
    for _ in range(10):
        out_image, out_trimap = augment(image, trimap)
        pet_in_image = out_image[..., 0] > 127
        pet_in_trimap = out_trimap == 1
        iou = (pet_in_image & pet_in_trimap).sum() / max(1, (pet_in_image | pet_in_trimap).sum())
        assert iou > 0.85


def test_photometric_ops_change_the_image_but_never_the_trimap() -> None:
    image = _gradient()
    trimap = np.random.default_rng(1).integers(1, 4, (32, 32), dtype=np.uint8)
    cfg = AugmentConfig(hflip=0.0, brightness=0.3, contrast=0.3, color_jitter=0.5, gamma=0.3)
    augment = build_augment(cfg, seed=3)
    changed = 0
    for _ in range(5):
        out_image, out_trimap = augment(image, trimap)
        np.testing.assert_array_equal(out_trimap, trimap)
        changed += int(not np.array_equal(out_image, image))
    assert changed >= 4


def test_same_seed_same_augmentations_other_seed_different() -> None:
    image, trimap = _gradient(), np.ones((32, 32), np.uint8)
    cfg = AugmentConfig(rotate=20.0, brightness=0.2, scale_shift=0.1)

    def run(seed: int) -> list[np.ndarray]:
        augment = build_augment(cfg, seed=seed)
        return [augment(image, trimap)[0] for _ in range(4)]

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_unseeded_augment_follows_numpy_global_seed() -> None:
    image, trimap = _gradient(), np.ones((32, 32), np.uint8)
    cfg = AugmentConfig(rotate=20.0)
    np.random.seed(11)
    first = build_augment(cfg)(image, trimap)[0]
    np.random.seed(11)
    np.testing.assert_array_equal(build_augment(cfg)(image, trimap)[0], first)


def test_reseed_restarts_the_sequence() -> None:
    image, trimap = _gradient(), np.ones((32, 32), np.uint8)
    augment = build_augment(AugmentConfig(rotate=20.0), seed=1)
    first = augment(image, trimap)[0]
    augment(image, trimap)
    augment.reseed(1)
    np.testing.assert_array_equal(augment(image, trimap)[0], first)


def test_negative_strength_is_rejected() -> None:
    with pytest.raises(ValueError, match="rotate"):
        build_augment(AugmentConfig(rotate=-5.0))
