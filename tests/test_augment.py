"""core.data.augment: image, foreground mask and ignore band augmented together from plain parameters."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.augment import AugmentConfig, build_augment


def _square(size: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """White square (foreground) on black, off-centre, with a 2-px ignore band along its outline."""
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), bool)
    image[8:24, 12:32] = 255
    mask[8:24, 12:32] = True
    inner = np.zeros_like(mask)
    inner[10:22, 14:30] = True
    return image, mask, mask & ~inner


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


def test_certain_flips_flip_image_mask_and_band_exactly() -> None:
    image, mask, band = _square()
    out_image, out_mask, out_band = build_augment(AugmentConfig(hflip=1.0), seed=0)(image, mask, band)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    np.testing.assert_array_equal(out_band, band[:, ::-1])
    out_image, out_mask, out_band = build_augment(AugmentConfig(hflip=0.0, vflip=1.0), seed=0)(image, mask, band)
    np.testing.assert_array_equal(out_image, image[::-1])
    np.testing.assert_array_equal(out_mask, mask[::-1])
    np.testing.assert_array_equal(out_band, band[::-1])
    assert out_image.flags.c_contiguous and out_mask.flags.c_contiguous and out_band.flags.c_contiguous
    assert out_mask.dtype == bool and out_band.dtype == bool


def test_no_band_in_no_band_out() -> None:
    image, mask, _ = _square()
    out = build_augment(AugmentConfig(hflip=1.0, rotate=10.0), seed=0)(image, mask)
    assert out[2] is None and out[1].dtype == bool and out[1].shape == mask.shape


def test_rotation_fills_outside_with_background_not_ignored() -> None:
    image = np.full((40, 40, 3), 255, np.uint8)
    mask = np.ones((40, 40), bool)
    band = np.zeros((40, 40), bool)
    band[:, :3] = True
    augment = build_augment(AugmentConfig(hflip=0.0, rotate=45.0), seed=1)
    filled = 0
    for _ in range(10):
        out_image, out_mask, out_band = augment(image, mask, band)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_band.shape == band.shape
        outside = ~out_mask
        assert not (out_band & outside).any()  # out-of-frame pixels are background and not ignored
        assert out_band.any()
        filled += outside.sum()
        # where the mask says "came from outside", the image is the black fill (edges blend)
        assert np.mean(out_image[outside].max(axis=-1) < 128) > 0.9
    assert filled > 0


def test_geometry_moves_image_mask_and_band_together() -> None:
    image, mask, band = _square()
    augment = build_augment(AugmentConfig(hflip=0.5, vflip=0.5, rotate=30.0, scale_shift=0.2), seed=2)
    for _ in range(10):
        out_image, out_mask, out_band = augment(image, mask, band)
        in_image = out_image[..., 0] > 127
        iou = (in_image & out_mask).sum() / max(1, (in_image | out_mask).sum())
        assert iou > 0.85
        assert out_band.any() and not (out_band & ~out_mask).any()  # the band stays on the object's outline


def test_the_band_changes_no_draw() -> None:
    """The same seed moves a mask alike with or without a band: the band rides along, it draws nothing."""
    image, mask, band = _square()
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate=30.0, scale_shift=0.2, brightness=0.2)
    with_band, without = build_augment(cfg, seed=4), build_augment(cfg, seed=4)
    for _ in range(5):
        a, b = with_band(image, mask, band), without(image, mask)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_photometric_ops_change_the_image_but_never_the_masks() -> None:
    image = _gradient()
    rng = np.random.default_rng(1)
    mask, band = rng.random((32, 32)) < 0.5, rng.random((32, 32)) < 0.2
    cfg = AugmentConfig(hflip=0.0, brightness=0.3, contrast=0.3, color_jitter=0.5, gamma=0.3)
    augment = build_augment(cfg, seed=3)
    changed = 0
    for _ in range(5):
        out_image, out_mask, out_band = augment(image, mask, band)
        np.testing.assert_array_equal(out_mask, mask)
        np.testing.assert_array_equal(out_band, band)
        changed += int(not np.array_equal(out_image, image))
    assert changed >= 4


def test_same_seed_same_augmentations_other_seed_different() -> None:
    image, mask = _gradient(), np.ones((32, 32), bool)
    cfg = AugmentConfig(rotate=20.0, brightness=0.2, scale_shift=0.1)

    def run(seed: int) -> list[np.ndarray]:
        augment = build_augment(cfg, seed=seed)
        return [augment(image, mask)[0] for _ in range(4)]

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_unseeded_augment_follows_numpy_global_seed() -> None:
    image, mask = _gradient(), np.ones((32, 32), bool)
    cfg = AugmentConfig(rotate=20.0)
    np.random.seed(11)
    first = build_augment(cfg)(image, mask)[0]
    np.random.seed(11)
    np.testing.assert_array_equal(build_augment(cfg)(image, mask)[0], first)


def test_reseed_restarts_the_sequence() -> None:
    image, mask = _gradient(), np.ones((32, 32), bool)
    augment = build_augment(AugmentConfig(rotate=20.0), seed=1)
    first = augment(image, mask)[0]
    augment(image, mask)
    augment.reseed(1)
    np.testing.assert_array_equal(augment(image, mask)[0], first)


def test_negative_strength_is_rejected() -> None:
    with pytest.raises(ValueError, match="rotate"):
        build_augment(AugmentConfig(rotate=-5.0))


def test_mask_and_band_move_exactly_as_the_trimap_they_came_from(monkeypatch) -> None:
    """Same seed, same draws: the (mask, band) pair equals what augmenting the trimap itself (out-of-frame =
    background, the old pipeline) and reading it afterwards gives."""
    import albumentations as A

    from core.data import augment as aug
    from core.data.layout import TRIMAP_BACKGROUND, trimap_truth

    rng = np.random.default_rng(7)
    image = _gradient(48)
    trimap = rng.choice(np.array([1, 2, 3], np.uint8), (48, 48))
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate=30.0, scale_shift=0.2, brightness=0.2, contrast=0.2)
    new = build_augment(cfg, seed=9)
    monkeypatch.setattr(aug, "_OUTSIDE", TRIMAP_BACKGROUND)
    old = A.Compose(aug._transforms(cfg), seed=9)
    for _ in range(6):
        out_image, out_mask, out_band = new(image, *trimap_truth(trimap))
        was = old(image=image, mask=trimap)
        np.testing.assert_array_equal(out_image, was["image"])
        foreground, band = trimap_truth(was["mask"])
        np.testing.assert_array_equal(out_mask, foreground)
        np.testing.assert_array_equal(out_band, band)
