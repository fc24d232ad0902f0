import math

import pytest
import torch
import torch.nn.functional as F

from core.losses import SegmentationLoss, bce_loss, dice_loss, focal_loss

BIG = 30.0  # a confident logit: sigmoid(30) = 1 - 9e-14


def _target(n: int = 2, size: int = 8) -> torch.Tensor:
    target = torch.zeros(n, 1, size, size)
    target[:, :, 2:6, 1:5] = 1
    return target


def _confident(target: torch.Tensor) -> torch.Tensor:
    return (2 * target - 1) * BIG


def test_perfect_confident_prediction_has_zero_dice_and_bce():
    target = _target()
    assert dice_loss(_confident(target), target).item() == pytest.approx(0, abs=1e-6)
    assert bce_loss(_confident(target), target).item() == pytest.approx(0, abs=1e-6)


def test_all_wrong_prediction_has_dice_loss_one():
    target = _target(n=1, size=8)
    # no overlap, |P| + |T| = 64: dice = eps / (64 + eps) with eps = 1
    assert dice_loss(_confident(1 - target), target).item() == pytest.approx(1 - 1 / 65, abs=1e-6)


def test_empty_target_and_empty_prediction_is_a_perfect_dice():
    target = torch.zeros(1, 1, 8, 8)
    assert dice_loss(_confident(target), target).item() == pytest.approx(0, abs=1e-6)


def test_dice_is_averaged_per_image_not_pooled_over_the_batch():
    target = torch.zeros(2, 1, 8, 8)
    target[0] = 1                    # perfect on a full image
    target[1, :, 0, 0] = 1           # totally wrong on a one-pixel pet
    logits = _confident(target)
    logits[1] = -logits[1]
    # per image: (0 + (1 - 1/65)) / 2 ~ 0.49; pooled: 1 - (2*64 + 1) / (64 + 64 + 64 + 1) ~ 0.33
    assert dice_loss(logits, target).item() == pytest.approx((1 - 1 / 65) / 2, abs=1e-6)


def test_soft_dice_uses_probabilities():
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 everywhere: inter 0.5, |P| 1, |T| 1
    assert dice_loss(logits, target).item() == pytest.approx(1 - (2 * 0.5 + 1) / (2 + 1))


def test_bce_equals_torch_bce_with_logits():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8), _target(3)
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert bce_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_with_gamma_0_and_no_alpha_equals_bce():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8) * 3, _target(3)
    assert focal_loss(logits, target, gamma=0.0, alpha=None).item() == pytest.approx(
        bce_loss(logits, target).item(), rel=1e-6)


def test_focal_matches_its_formula_on_one_pixel():
    logit, p = 0.0, 0.5  # positive pixel predicted at p = 0.5
    focal = focal_loss(torch.full((1, 1, 1, 1), logit), torch.ones(1, 1, 1, 1), gamma=2.0, alpha=0.25)
    assert focal.item() == pytest.approx(0.25 * (1 - p) ** 2 * -math.log(p), rel=1e-6)
    negative = focal_loss(torch.full((1, 1, 1, 1), logit), torch.zeros(1, 1, 1, 1), gamma=2.0, alpha=0.25)
    assert negative.item() == pytest.approx(0.75 * (1 - p) ** 2 * -math.log(p), rel=1e-6)


def test_combined_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), _target()
    loss = SegmentationLoss(bce_weight=0.2, dice_weight=0.5, focal_weight=0.3, focal_gamma=1.5)
    expected = (0.2 * bce_loss(logits, target) + 0.5 * dice_loss(logits, target)
                + 0.3 * focal_loss(logits, target, gamma=1.5))
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_default_loss_is_0_3_bce_plus_0_7_dice():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), _target()
    expected = 0.3 * bce_loss(logits, target) + 0.7 * dice_loss(logits, target)
    assert SegmentationLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("weights", [dict(bce_weight=0, dice_weight=0), dict(bce_weight=-0.1),
                                     dict(dice_weight=float("nan"))])
def test_invalid_weights_are_rejected(weights):
    with pytest.raises(ValueError):
        SegmentationLoss(**weights)


@pytest.mark.parametrize("loss_fn", [bce_loss, dice_loss, focal_loss, SegmentationLoss(focal_weight=0.1)])
def test_half_precision_logits_give_a_float32_loss(loss_fn):
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), _target()
    loss = loss_fn(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss_fn(logits.bfloat16().float(), target).item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss_fn(logits.bfloat16(), target).dtype == torch.float32


def test_gradient_flows_back_to_bf16_logits():
    logits = torch.randn(2, 1, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    SegmentationLoss()(logits, _target()).backward()
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.abs().sum() > 0


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        dice_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))
