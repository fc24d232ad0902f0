"""Per-image segmentation scores (Dice, IoU, Dice ignoring the trimap border), vectorized over a batch.

Scores are per image so they can be stored per image and averaged over a split with
`mean_score`: a split's score is the mean over its images, never a mean of batch means
(those differ whenever batches differ in size, e.g. the last one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TRIMAP_BORDER = 3  # Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border (ambiguous outline)


@dataclass
class ImageScores:
    """Per-image scores, each (N,) float32 in [0, 1]."""
    dice: Tensor
    iou: Tensor
    dice_no_border: Tensor  # Dice over pixels where trimap != 3 (= dice when no trimap given)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator as float32, 1.0 where the denominator is 0 (both masks empty)."""
    ratio = numerator.float() / denominator.clamp_min(1).float()
    return torch.where(denominator > 0, ratio, torch.ones_like(ratio))


def _dice(pred: Tensor, target: Tensor) -> Tensor:
    """(N, P) bool, (N, P) bool -> (N,) Dice = 2|P∩T| / (|P| + |T|)."""
    return _ratio(2 * (pred & target).sum(1), pred.sum(1) + target.sum(1))


def image_scores(logits: Tensor, target: Tensor, trimap: Tensor | None = None,
                 threshold: float = 0.5) -> ImageScores:
    """Dice, IoU and border-free Dice of each image of a batch.

    logits (N,1,H,W); target (N,1,H,W) in {0,1}; trimap (N,1,H,W) or (N,H,W) with values
    1 pet / 2 background / 3 border. A pixel is predicted pet when sigmoid(logit) > threshold,
    i.e. logit > logit(threshold) (a logit of exactly 0 is background at threshold 0.5).
    An image whose prediction and target are both empty scores 1.0.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    n = logits.shape[0]
    if threshold == 0.5:
        pred = logits > 0  # exact in any dtype, no sigmoid
    else:
        pred = logits.float() > math.log(threshold / (1 - threshold))
    pred, target = pred.reshape(n, -1), (target > 0.5).reshape(n, -1)  # (N, H*W) bool

    intersection = (pred & target).sum(1)
    total = pred.sum(1) + target.sum(1)
    dice = _ratio(2 * intersection, total)
    iou = _ratio(intersection, total - intersection)
    if trimap is None:
        dice_no_border = dice
    else:
        valid = (trimap != TRIMAP_BORDER).reshape(n, -1)
        if valid.shape != pred.shape:
            raise ValueError(f"trimap {tuple(trimap.shape)} does not match logits {tuple(logits.shape)}")
        dice_no_border = _dice(pred & valid, target & valid)
    return ImageScores(dice=dice, iou=iou, dice_no_border=dice_no_border)


def mean_score(scores: Tensor) -> float:
    """Mean of per-image scores (N,) -> float: a split's score.

    Concatenate every batch's per-image scores first and average once; averaging batch means
    would over-weight the images of a smaller (last) batch.
    """
    if scores.numel() == 0:
        raise ValueError("no scores to average")
    return scores.double().mean().item()
