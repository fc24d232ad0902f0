"""The per-image diagnostics of core.metrics, each against an independent computation: brute force on
small masks, Cheng et al.'s reference Boundary IoU code, scipy.ndimage for distances and components."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from core.metrics import (
    OBJECT_FOUND_RECALL,
    band_width,
    binary_entropy,
    image_diagnostics,
    mask_diagnostics,
)


# -- independent references --------------------------------------------------------------------

def boundary_iou_reference(gt: np.ndarray, dt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Cheng et al.'s reference code (bowenc0221/boundary-iou-api, mask_to_boundary), with both-empty = 1."""
    def mask_to_boundary(mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        dilation = max(1, int(round(dilation_ratio * np.sqrt(h ** 2 + w ** 2))))
        padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1:h + 1, 1:w + 1]
        return (mask.astype(np.uint8) - eroded).astype(bool)

    g, d = mask_to_boundary(gt), mask_to_boundary(dt)
    union = (g | d).sum()
    return 1.0 if union == 0 else float((g & d).sum() / union)


def band_brute_force(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask pixels within chessboard distance d of a background pixel (outside the image counts)."""
    h, w = mask.shape
    padded = np.zeros((h + 2 * d + 2, w + 2 * d + 2), bool)
    padded[d + 1:d + 1 + h, d + 1:d + 1 + w] = mask
    band = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask)):
        window = padded[y + 1:y + 2 * d + 2, x + 1:x + 2 * d + 2]
        band[y, x] = not window.all()
    return band


def hd95_reference(pred: np.ndarray, truth: np.ndarray) -> float:
    """medpy/MONAI-style HD95 from scipy.ndimage: surfaces by 4-connected erosion, exact EDT, max of the
    two directed 95th percentiles."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.hypot(*pred.shape)
    ps = pred & ~ndimage.binary_erosion(pred, border_value=0)
    ts = truth & ~ndimage.binary_erosion(truth, border_value=0)
    to_t = ndimage.distance_transform_edt(~ts)
    to_p = ndimage.distance_transform_edt(~ps)
    return max(np.percentile(to_t[ps], 95), np.percentile(to_p[ts], 95))


def structure_reference(pred: np.ndarray, truth: np.ndarray) -> tuple[int, bool]:
    eight = np.ones((3, 3), int)
    labels, n = ndimage.label(pred, structure=eight)
    blobs = sum(1 for k in range(1, n + 1) if not (truth & (labels == k)).any())
    t_labels, m = ndimage.label(truth, structure=eight)
    if m == 0:
        return blobs, False
    sizes = ndimage.sum_labels(truth, t_labels, range(1, m + 1))
    largest = t_labels == 1 + int(np.argmax(sizes))
    return blobs, bool((pred & largest).sum() < OBJECT_FOUND_RECALL * largest.sum())


def random_blobs(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """A pet-like mask: a few random discs, some touching the image edge."""
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, size / 3)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    return mask


def mask_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Random pet shapes at several sizes plus the corner cases: empty, full, both empty, a single pixel."""
    rng = np.random.default_rng(7)
    pairs = []
    for size in (9, 16, 33, 64):
        for _ in range(6):
            pairs.append((random_blobs(rng, size, int(rng.integers(1, 5))), random_blobs(rng, size, int(rng.integers(1, 4)))))
    empty, full = np.zeros((16, 16), bool), np.ones((16, 16), bool)
    dot = empty.copy()
    dot[5, 7] = True
    half = empty.copy()
    half[:, :8] = True
    pairs += [(empty, empty), (full, full), (empty, half), (half, empty), (full, half), (half, full), (dot, half),
              (half, dot), (dot, dot), (full, empty), (empty, full)]
    return pairs


PAIRS = mask_pairs()


# -- the cross-checks ----------------------------------------------------------------------------

def test_areas_precision_and_recall_match_counting_pixels() -> None:
    for pred, truth in PAIRS:
        got = mask_diagnostics(pred[None], truth[None])
        tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
        assert got.fp_area[0] == fp / pred.size and got.fn_area[0] == fn / pred.size
        assert got.precision[0] == pytest.approx(tp / pred.sum() if pred.any() else 1.0, abs=1e-12)
        assert got.recall[0] == pytest.approx(tp / truth.sum() if truth.any() else 1.0, abs=1e-12)


def test_boundary_iou_matches_the_papers_reference_code_and_a_brute_force_band() -> None:
    for pred, truth in PAIRS:
        got = mask_diagnostics(pred[None], truth[None]).boundary_iou[0]
        assert got == pytest.approx(boundary_iou_reference(truth, pred), abs=1e-12)
        d = band_width(*pred.shape)
        pb, tb = band_brute_force(pred, d), band_brute_force(truth, d)
        union = (pb | tb).sum()
        assert got == pytest.approx(1.0 if union == 0 else (pb & tb).sum() / union, abs=1e-12)


def test_boundary_band_is_two_percent_of_the_diagonal() -> None:
    assert band_width(64, 64) == 2 and band_width(256, 256) == 7 and band_width(9, 9) == 1


def test_hd95_matches_scipy_distance_transforms() -> None:
    for pred, truth in PAIRS:
        got = mask_diagnostics(pred[None], truth[None]).hd95[0]
        assert got == pytest.approx(hd95_reference(pred, truth), abs=1e-4)


def test_hd95_of_an_empty_side_is_the_diagonal_and_of_both_empty_zero() -> None:
    empty, half = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    half[:, :20] = True
    got = mask_diagnostics(np.stack([empty, half, empty]), np.stack([half, empty, empty])).hd95
    assert got.tolist() == [50.0, 50.0, 0.0]
    assert np.isfinite(got).all()


def test_hd95_of_a_shifted_square_is_the_shift() -> None:
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    pred = np.roll(truth, 3, axis=1)
    assert mask_diagnostics(pred[None], truth[None]).hd95[0] == pytest.approx(3.0)


def test_false_positive_blobs_and_missed_pet_match_scipy_labels() -> None:
    for pred, truth in PAIRS:
        got = mask_diagnostics(pred[None], truth[None])
        blobs, missed = structure_reference(pred, truth)
        assert (int(got.fp_blobs[0]), bool(got.object_missed[0])) == (blobs, missed)


def test_components_connect_diagonally_and_a_blob_touching_the_pet_is_not_false() -> None:
    truth = np.zeros((12, 12), bool)
    truth[2:6, 2:6] = True
    pred = truth.copy()
    pred[8, 8] = pred[9, 9] = True      # one diagonal blob, far from the pet
    pred[0, 11] = True                  # a second one
    pred[6, 2] = True                   # touching the pet's edge from outside: part of the pet's component
    got = mask_diagnostics(pred[None], truth[None])
    assert got.fp_blobs.tolist() == [2] and got.object_missed.tolist() == [False]


def test_largest_object_missed_ignores_a_found_smaller_one() -> None:
    truth = np.zeros((20, 20), bool)
    truth[1:11, 1:11] = True            # the pet, 100 px
    truth[15:18, 15:18] = True          # a small second part, 9 px
    pred = np.zeros_like(truth)
    pred[15:18, 15:18] = True
    pred[1:11, 1:5] = True              # 40% of the pet: missed
    assert mask_diagnostics(pred[None], truth[None]).object_missed.tolist() == [True]
    pred[1:11, 1:6] = True              # 50%: found
    assert mask_diagnostics(pred[None], truth[None]).object_missed.tolist() == [False]


def test_entropy_is_the_mean_binary_entropy_in_bits() -> None:
    logits = torch.tensor([[0.0, 0.0], [3.0, -40.0], [200.0, -200.0]]).view(3, 1, 1, 2)
    p = torch.sigmoid(logits.double()).numpy().reshape(3, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    expected = np.nan_to_num(h, nan=0.0).mean(1)
    got = binary_entropy(logits).double().numpy()
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[0] == pytest.approx(1.0) and np.isfinite(got).all()


def test_image_diagnostics_thresholds_logits_at_zero_and_adds_entropy() -> None:
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(0, 3, (4, 1, 20, 20)).astype(np.float32))
    target = torch.from_numpy((rng.random((4, 1, 20, 20)) > 0.5).astype(np.float32))
    got = image_diagnostics(logits, target)
    ref = mask_diagnostics(logits[:, 0].numpy() > 0, target[:, 0].numpy() > 0.5)
    for name in ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95", "fp_blobs", "object_missed"):
        assert np.array_equal(getattr(got, name), getattr(ref, name)), name
    assert ref.entropy is None and got.entropy.shape == (4,)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="must both be"):
        mask_diagnostics(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))


# -- the failure-mode rule on constructed masks --------------------------------------------------

def _mode(pred: np.ndarray, truth: np.ndarray) -> str:
    from core.metrics import failure_modes

    diag = mask_diagnostics(pred[None], truth[None])
    tp, total = (pred & truth).sum(), pred.sum() + truth.sum()
    dice = np.array([1.0 if total == 0 else 2 * tp / total])
    return str(failure_modes(dice, diag.precision, diag.recall, diag.boundary_iou)[0])


def _square(lo: int, hi: int, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo:hi] = True
    return mask


PET = _square(16, 48)  # 32 x 32 pet on a 64 px image


def test_a_right_prediction_and_an_empty_image_left_empty_are_ok() -> None:
    assert _mode(PET, PET) == "ok"
    assert _mode(_square(0, 0), _square(0, 0)) == "ok"
    ragged = PET.copy()
    ragged[16, 20:30] = False  # a few pixels off the outline
    assert _mode(ragged, PET) == "ok"


def test_nothing_or_almost_nothing_predicted_is_an_empty_prediction() -> None:
    assert _mode(_square(0, 0), PET) == "empty prediction"
    assert _mode(_square(20, 27), PET) == "empty prediction"  # 49 px of 1024: under 5%
    assert _mode(_square(20, 28), PET) == "missed object"         # 64 px: 6%, a (badly) found pet


def test_a_pet_half_found_is_a_missed_pet() -> None:
    half = PET.copy()
    half[:, 32:] = False
    assert _mode(half, PET) == "missed object"


def test_a_prediction_beside_the_pet_and_nowhere_on_it_is_a_missed_pet() -> None:
    beside = np.zeros_like(PET)
    beside[:12, :12] = True  # a blob in a corner, the whole pet unfound: precision = recall = 0
    assert not (beside & PET).any() and _mode(beside, PET) == "missed object"


def test_a_prediction_spilling_onto_background_or_a_false_blob_is_a_background_leak() -> None:
    spill = _square(10, 58)                      # the pet and a wide margin
    assert _mode(spill, PET) == "background leak"
    blob = PET | _square(0, 14) | np.rot90(_square(0, 14))
    assert _mode(blob, PET) == "background leak"
    assert _mode(_square(5, 12), _square(0, 0)) == "background leak"  # a pet where there is none


def test_a_right_overlap_with_a_wrong_outline_is_a_boundary_failure() -> None:
    # 1 px off all round: dice 0.94 but Boundary IoU 0.33 (the 2 px bands overlap in one ring)
    assert _mode(_square(15, 49), PET) == "boundary" and _mode(_square(17, 47), PET) == "boundary"
    # 2 px off all round loses a fifth of the pet or adds as much background: then that error is named
    assert _mode(_square(14, 50), PET) == "background leak" and _mode(_square(18, 46), PET) == "missed object"


def test_rows_without_diagnostics_are_not_computed() -> None:
    from core.metrics import failure_modes

    nan = np.array([np.nan])
    assert failure_modes(np.array([0.5]), nan, nan, nan).tolist() == ["not computed"]
