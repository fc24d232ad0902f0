"""Segmentation losses with one signature: (logits (N,1,H,W), target (N,1,H,W) in {0,1}) -> scalar.

All are computed in float32 whatever the logits' dtype (bf16/fp16 under autocast), since
sums over a few hundred thousand pixels lose too much precision in half types.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _float32(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    return logits.float(), target.float()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over all pixels of the batch."""
    logits, target = _float32(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice of sigmoid probabilities, per image, averaged over the batch.

    Per image so that every image weighs the same whatever its pet's size (pooling the batch
    would let large pets drown small ones). The eps smoothing in numerator and denominator
    makes an empty target with an empty prediction a perfect score instead of 0/0.
    """
    logits, target = _float32(logits, target)
    probs, target = torch.sigmoid(logits).flatten(1), target.flatten(1)  # (N, H*W)
    intersection = (probs * target).sum(1)
    denominator = probs.sum(1) + target.sum(1)
    dice = (2 * intersection + eps) / (denominator + eps)  # (N,)
    return 1 - dice.mean()


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = 0.25) -> Tensor:
    """Focal loss (Lin et al. 2017), mean over pixels: alpha_t * (1 - p_t)^gamma * BCE.

    Down-weights pixels already classified confidently, focusing training on hard ones
    (object borders). alpha weighs positives (1 - alpha: negatives); None disables it.
    gamma=0 and alpha=None give plain BCE.
    """
    logits, target = _float32(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)  # probability given to the true class, computed stably
    loss = (1 - p_t) ** gamma * bce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


class SegmentationLoss(nn.Module):
    """Weighted sum bce_weight*BCE + dice_weight*Dice + focal_weight*Focal; terms weighted 0 are skipped.

    The defaults (0.3 BCE + 0.7 Dice) are the lab reports' loss: BCE gives well-behaved
    per-pixel gradients, Dice optimises the overlap the metric measures.
    """

    def __init__(self, bce_weight: float = 0.3, dice_weight: float = 0.7, focal_weight: float = 0.0,
                 focal_gamma: float = 2.0, focal_alpha: float | None = 0.25):
        super().__init__()
        weights = {"bce_weight": bce_weight, "dice_weight": dice_weight, "focal_weight": focal_weight}
        for name, value in weights.items():
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value}")
        if sum(weights.values()) == 0:
            raise ValueError("at least one of bce_weight, dice_weight, focal_weight must be > 0")
        self.bce_weight, self.dice_weight, self.focal_weight = bce_weight, dice_weight, focal_weight
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """(N,1,H,W) logits, (N,1,H,W) {0,1} target -> float32 scalar."""
        terms = []
        if self.bce_weight:
            terms.append(self.bce_weight * bce_loss(logits, target))
        if self.dice_weight:
            terms.append(self.dice_weight * dice_loss(logits, target))
        if self.focal_weight:
            terms.append(self.focal_weight * focal_loss(logits, target, self.focal_gamma, self.focal_alpha))
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return (f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, focal_weight={self.focal_weight}, "
                f"focal_gamma={self.focal_gamma}, focal_alpha={self.focal_alpha}")
