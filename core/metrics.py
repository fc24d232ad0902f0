"""Per-image segmentation scores (Dice, IoU, Dice off the ignore band), vectorized over a batch,
and the diagnostics that say why an image fails (error areas, boundary, components, confidence).

Scores are per image so they can be stored per image, and a split's score is the mean over
its images, never a mean of batch means (those differ whenever batches differ in size, e.g.
the last one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ImageScores:
    """Per-image scores, each (N,) float32 in [0, 1]."""
    dice: Tensor
    iou: Tensor
    dice_no_border: Tensor  # Dice over pixels off the ignore band (e.g. Oxford-IIIT Pet's trimap border); = dice without one


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator as float32, 1.0 where the denominator is 0 (both masks empty)."""
    ratio = numerator.float() / denominator.clamp_min(1).float()
    return torch.where(denominator > 0, ratio, torch.ones_like(ratio))


def _dice(pred: Tensor, target: Tensor) -> Tensor:
    """(N, P) bool, (N, P) bool -> (N,) Dice = 2|P∩T| / (|P| + |T|)."""
    return _ratio(2 * (pred & target).sum(1), pred.sum(1) + target.sum(1))


THRESHOLD = 0.5  # a pixel is predicted foreground when sigmoid(logit) > THRESHOLD


def predicted_mask(logits: Tensor, threshold: float = THRESHOLD) -> Tensor:
    """The binary prediction of logits, bool of the same shape: the one rule every score, diagnostic and
    stored mask uses. sigmoid(logit) > threshold, i.e. logit > logit(threshold); at 0.5 that is logit > 0,
    exact in any dtype (a logit of exactly 0 is background)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if threshold == 0.5:
        return logits > 0
    return logits.float() > math.log(threshold / (1 - threshold))


def image_scores(logits: Tensor, target: Tensor, ignore: Tensor | None = None,
                 threshold: float = THRESHOLD) -> ImageScores:
    """Dice, IoU and Dice off the ignore band of each image of a batch.

    logits (N,1,H,W); target (N,1,H,W) in {0,1}; ignore (N,1,H,W) or (N,H,W) bool, the band of ambiguous
    pixels (e.g. Oxford-IIIT Pet's trimap border), or None. A pixel is predicted foreground when sigmoid(logit) > threshold,
    i.e. logit > logit(threshold) (a logit of exactly 0 is background at threshold 0.5).
    An image whose prediction and target are both empty scores 1.0.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    return mask_scores(predicted_mask(logits, threshold), target > 0.5, ignore)


def mask_scores(pred: Tensor, truth: Tensor, ignore: Tensor | None = None) -> ImageScores:
    """Dice, IoU and Dice off the ignore band of predicted masks against true masks, bool (N, ...) each.

    What `image_scores` measures once the logits are thresholded, for masks that exist without
    logits; ignore (N, ...) bool holds the same pixels: the band (e.g. Oxford-IIIT Pet's trimap border)
    that dice_no_border leaves out; without one dice_no_border is dice. Both masks empty scores 1.0.
    """
    n = pred.shape[0]
    pred, truth = pred.reshape(n, -1), truth.reshape(n, -1)  # (N, H*W) bool
    if pred.shape != truth.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in size")
    intersection = (pred & truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    dice = _ratio(2 * intersection, total)
    iou = _ratio(intersection, total - intersection)
    if ignore is None:
        dice_no_border = dice
    else:
        valid = ~ignore.reshape(n, -1).bool()
        if valid.shape != pred.shape:
            raise ValueError(f"ignore {tuple(valid.shape)} and pred {tuple(pred.shape)} differ in size")
        dice_no_border = _dice(pred & valid, truth & valid)
    return ImageScores(dice=dice, iou=iou, dice_no_border=dice_no_border)


# -- why an image fails: error structure, boundary, connected components, confidence ---------------

BOUNDARY_BAND = 0.02   # Boundary IoU band width, as a fraction of the image diagonal (Cheng et al.'s default)
OBJECT_FOUND_RECALL = 0.5  # the largest true object component counts as missed below this share of it predicted
DIAGNOSTICS = ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95", "fp_blobs", "object_missed",
               "entropy")


@dataclass
class ImageDiagnostics:
    """Per-image error structure, each (N,) float64 numpy (fp_blobs int64, object_missed bool).

    entropy is None when no probabilities were given (a stored 1-bit mask cannot tell it).
    """
    fp_area: np.ndarray       # false-positive pixels / all pixels
    fn_area: np.ndarray       # false-negative pixels / all pixels
    precision: np.ndarray     # |P∩T| / |P|; 1.0 when nothing is predicted
    recall: np.ndarray        # |P∩T| / |T|; 1.0 when there is no object
    boundary_iou: np.ndarray  # Boundary IoU, band BOUNDARY_BAND x diagonal; 1.0 when both masks are empty
    hd95: np.ndarray          # 95th-percentile Hausdorff distance, pixels; 0 both empty, the diagonal if one is
    fp_blobs: np.ndarray      # predicted 8-connected components touching no true object pixel
    object_missed: np.ndarray    # under OBJECT_FOUND_RECALL of the largest true object component predicted
    entropy: np.ndarray | None = None  # mean binary entropy of the probabilities, bits (0 sure .. 1 unsure)

    def as_dict(self) -> dict[str, np.ndarray | None]:
        return {name: getattr(self, name) for name in DIAGNOSTICS}


def _ratio_np(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator in float64, 1.0 where the denominator is 0."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 1.0)


def band_width(height: int, width: int) -> int:
    """The Boundary IoU band in pixels: BOUNDARY_BAND of the diagonal, rounded, at least 1."""
    return max(1, int(round(BOUNDARY_BAND * math.hypot(height, width))))


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def _eroded(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H, W) uint8 {0,1} eroded by `kernel`, outside the image taken as background (OpenCV, SIMD)."""
    return cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def boundary_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask pixels within chessboard distance d of the background or the image edge: Cheng et al.'s
    boundary region (their d iterations of a 3x3 erosion on a zero-padded image equal one (2d+1)^2 one)."""
    m = mask.view(np.uint8)
    return mask & ~_eroded(m, np.ones((2 * d + 1, 2 * d + 1), np.uint8)).view(bool)


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the image edge): the contour HD95 measures."""
    return mask & ~_eroded(mask.view(np.uint8), _CROSS).view(bool)


def binary_entropy(logits: Tensor) -> Tensor:
    """(N, ...) logits -> (N,) mean binary entropy of sigmoid(logits), in bits.

    H = softplus(x) - x * sigmoid(x) (nats), exact and finite for any logit.
    """
    x = logits.float().reshape(logits.shape[0], -1)
    return (F.softplus(x) - x * torch.sigmoid(x)).mean(1) / math.log(2)


def _exact(distances: np.ndarray) -> np.ndarray:
    """OpenCV's float32 Euclidean distances made exact: each is sqrt(dy^2 + dx^2) of whole pixels, so
    round the square (its float32 last bits vary from run to run with OpenCV's SIMD paths)."""
    d = distances.astype(np.float64)
    return np.sqrt(np.round(d * d))


def _one_image(pred: np.ndarray, truth: np.ndarray, d: int) -> tuple[float, ...]:
    """tp, |P|, |T|, boundary intersection and union, hd95, false-positive blobs, largest object missed
    of one image (2-D C-contiguous bool arrays)."""
    height, width = pred.shape
    tp = np.count_nonzero(pred & truth)
    p_area, t_area = np.count_nonzero(pred), np.count_nonzero(truth)
    pb, tb = boundary_band(pred, d), boundary_band(truth, d)
    b_inter, b_union = np.count_nonzero(pb & tb), np.count_nonzero(pb | tb)
    if p_area and t_area:
        ps, ts = surface(pred), surface(truth)
        to_truth = cv2.distanceTransform((~ts).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        to_pred = cv2.distanceTransform((~ps).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        hd95 = max(float(np.percentile(_exact(to_truth[ps]), 95)), float(np.percentile(_exact(to_pred[ts]), 95)))
    else:
        hd95 = 0.0 if p_area == t_area else math.hypot(height, width)
    fp_blobs = 0
    if p_area:
        n, labels = cv2.connectedComponents(pred.view(np.uint8), connectivity=8)
        touched = np.bincount(labels[truth], minlength=n)
        fp_blobs = int(np.count_nonzero(touched[1:] == 0))
    missed = False
    if t_area:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(truth.view(np.uint8), connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        found = np.count_nonzero(pred & (labels == largest))
        missed = bool(found < OBJECT_FOUND_RECALL * stats[largest, cv2.CC_STAT_AREA])
    return tp, p_area, t_area, b_inter, b_union, hd95, fp_blobs, missed


def mask_diagnostics(pred: Tensor | np.ndarray, truth: Tensor | np.ndarray,
                     logits: Tensor | None = None) -> ImageDiagnostics:
    """Error structure of predicted masks against true masks, (N, H, W) bool each (numpy or torch).

    Per image on the CPU with OpenCV (erosions, exact distance transforms, connected components): a few
    milliseconds an image at 256 px. `logits` (N, ...) adds the entropy, computed where they are.
    """
    pred = (pred.cpu().numpy() if isinstance(pred, Tensor) else np.asarray(pred)).astype(bool)
    truth = (truth.cpu().numpy() if isinstance(truth, Tensor) else np.asarray(truth)).astype(bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be (N, H, W)")
    n, height, width = pred.shape
    d = band_width(height, width)
    pred, truth = np.ascontiguousarray(pred), np.ascontiguousarray(truth)
    rows = np.array([_one_image(pred[i], truth[i], d) for i in range(n)], dtype=np.float64).reshape(n, 8)
    tp, p_area, t_area, b_inter, b_union = rows[:, :5].T
    pixels = float(height * width)
    return ImageDiagnostics(
        fp_area=(p_area - tp) / pixels, fn_area=(t_area - tp) / pixels, precision=_ratio_np(tp, p_area),
        recall=_ratio_np(tp, t_area), boundary_iou=_ratio_np(b_inter, b_union), hd95=rows[:, 5],
        fp_blobs=rows[:, 6].astype(np.int64), object_missed=rows[:, 7].astype(bool),
        entropy=None if logits is None else binary_entropy(logits).double().cpu().numpy())


def image_diagnostics(logits: Tensor, target: Tensor) -> ImageDiagnostics:
    """mask_diagnostics of logits (N,1,H,W) thresholded (predicted_mask) against target (N,1,H,W), entropy included."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    return mask_diagnostics(predicted_mask(logits[:, 0]), target[:, 0] > 0.5, logits)


def concat_diagnostics(parts: list[ImageDiagnostics]) -> ImageDiagnostics:
    """Batches' diagnostics joined in order (entropy only when every part has it)."""
    if not parts:
        empty = np.zeros(0)
        return ImageDiagnostics(empty, empty, empty, empty, empty, empty, np.zeros(0, np.int64), np.zeros(0, bool))
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in DIAGNOSTICS if name != "entropy"}
    entropy = None if any(p.entropy is None for p in parts) else np.concatenate([p.entropy for p in parts])
    return ImageDiagnostics(**joined, entropy=entropy)


# -- the failure mode of an image: a deterministic rule over its scores ------------------------------

OK, EMPTY, MISSED, LEAK, BOUNDARY = "ok", "empty prediction", "missed object", "background leak", "boundary"
NOT_COMPUTED = "not computed"
FAILURE_MODES = (OK, BOUNDARY, MISSED, LEAK, EMPTY)  # display order, best to worst
# worst first: how a gallery sorts by mode, and which mode wins a tie for an image's most common one. A missed
# object ranks worse than a leak here (nothing found beats too much found), unlike the display order above
SEVERITY = (EMPTY, MISSED, LEAK, BOUNDARY, OK)

OK_DICE = 0.9             # ok: dice at least this ...
OK_BOUNDARY_IOU = 0.4     # ... and Boundary IoU at least this (a 1 px offset all round at 64 px gives 0.33)
EMPTY_PRED_SHARE = 0.05   # empty prediction: predicted area below this share of the true object's area
GOOD_OVERLAP = 0.8        # boundary: precision and recall both at least this, yet not ok


def failure_modes(dice: np.ndarray, precision: np.ndarray, recall: np.ndarray,
                  boundary_iou: np.ndarray) -> np.ndarray:
    """Each image's failure mode (object array of FAILURE_MODES names); the first rule that matches wins:

    1. `empty prediction`: predicted area < EMPTY_PRED_SHARE x true object area (= recall / precision;
       nothing predicted means precision 1, recall 0);
    2. `ok`: dice >= OK_DICE and Boundary IoU >= OK_BOUNDARY_IOU (both masks empty: ok);
    3. `boundary`: precision and recall both >= GOOD_OVERLAP: the overlap is right, the outline is not;
    4. the larger error: `missed object` when recall <= precision, else `background leak` (a prediction on an
       image with no object, too: precision 0, recall 1). A prediction that overlaps the object nowhere
       (precision = recall = 0) missed the object: whatever it found instead, the object is what is gone.
    Images without diagnostics (NaN precision, recall or Boundary IoU) are `not computed`.
    """
    dice = np.asarray(dice, dtype=np.float64)
    precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    biou = np.asarray(boundary_iou, np.float64)
    out = np.full(dice.shape, NOT_COMPUTED, dtype=object)
    todo = ~(np.isnan(dice) | np.isnan(precision) | np.isnan(recall) | np.isnan(biou))
    with np.errstate(divide="ignore", invalid="ignore"):
        pred_over_true = np.where(precision > 0, recall / np.where(precision > 0, precision, 1.0), np.inf)
    rules = ((pred_over_true < EMPTY_PRED_SHARE, EMPTY),
             ((dice >= OK_DICE) & (biou >= OK_BOUNDARY_IOU), OK),
             ((precision >= GOOD_OVERLAP) & (recall >= GOOD_OVERLAP), BOUNDARY),
             (recall <= precision, MISSED),
             (np.ones(dice.shape, bool), LEAK))
    for cond, mode in rules:
        hit = todo & cond
        out[hit] = mode
        todo &= ~hit
    return out


def spread(values: np.ndarray, lower_is_better: bool = False) -> dict[str, float]:
    """How a trial's per-image scores spread: mean, median, the 10th and 5th percentile on the bad
    side (90th and 95th when lower is better) and the worst. The one summary every job and page prints."""
    values = np.asarray(values, dtype=np.float64)
    tail = (90, 95) if lower_is_better else (10, 5)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p10": float(np.percentile(values, tail[0])), "p5": float(np.percentile(values, tail[1])),
            "worst": float(values.max() if lower_is_better else values.min())}
