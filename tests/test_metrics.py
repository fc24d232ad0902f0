import numpy as np
import pytest
import torch

from core.metrics import image_scores, mask_scores


def _logits(pred: list[list[int]]) -> torch.Tensor:
    """A {0,1} mask (H, W) -> confident logits (1, 1, H, W)."""
    return (torch.tensor(pred, dtype=torch.float32) * 2 - 1).view(1, 1, len(pred), -1) * 5


def _mask(mask: list[list[int]]) -> torch.Tensor:
    return torch.tensor(mask, dtype=torch.float32).view(1, 1, len(mask), -1)


PRED = [[1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0]]   # |P| = 6
TARGET = [[0, 1, 1, 0],
          [0, 1, 1, 0],
          [0, 0, 0, 0],
          [0, 0, 0, 0]]  # |T| = 4, |P∩T| = 2, |P∪T| = 8


def test_dice_and_iou_of_a_known_4x4_example():
    scores = image_scores(_logits(PRED), _mask(TARGET))
    assert scores.dice.tolist() == pytest.approx([2 * 2 / (6 + 4)])
    assert scores.iou.tolist() == pytest.approx([2 / 8])
    assert scores.dice.dtype == scores.iou.dtype == torch.float32


def test_both_empty_scores_one():
    empty = [[0] * 4] * 4
    scores = image_scores(_logits(empty), _mask(empty))
    assert scores.dice.tolist() == [1.0] and scores.iou.tolist() == [1.0]


def test_empty_prediction_of_a_present_object_scores_zero():
    scores = image_scores(_logits([[0] * 4] * 4), _mask(TARGET))
    assert scores.dice.tolist() == [0.0] and scores.iou.tolist() == [0.0]


BAND = [[1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 1, 1],
        [0, 0, 0, 0]]


def test_ignore_band_pixels_are_excluded_from_dice_no_border():
    # the prediction's extra pixels (column 0, row 2) all lie on the ignore band, so are left out
    band = torch.tensor(BAND, dtype=torch.bool)
    scores = image_scores(_logits(PRED), _mask(TARGET), ignore=band.view(1, 1, 4, 4))
    assert scores.dice.tolist() == pytest.approx([0.4])
    # off the border: P = {(0,1), (1,1)}, T = {(0,1),(0,2),(1,1),(1,2)}: 2*2 / (2 + 4)
    assert scores.dice_no_border.tolist() == pytest.approx([4 / 6])
    # a band without the channel dimension gives the same
    unbatched = image_scores(_logits(PRED), _mask(TARGET), ignore=band.view(1, 4, 4))
    assert unbatched.dice_no_border.tolist() == pytest.approx([4 / 6])


def test_without_an_ignore_band_dice_no_border_is_dice():
    scores = image_scores(_logits(PRED), _mask(TARGET))
    assert scores.dice_no_border.tolist() == scores.dice.tolist()


def test_batch_scores_match_each_image_scored_alone():
    torch.manual_seed(0)
    logits = torch.randn(5, 1, 16, 16)
    target = (torch.rand(5, 1, 16, 16) > 0.6).float()
    target[3] = 0
    logits[3] = -1.0  # an image with both masks empty
    band = torch.rand(5, 1, 16, 16) > 0.7
    batch = image_scores(logits, target, band)
    assert batch.dice.shape == batch.iou.shape == batch.dice_no_border.shape == (5,)
    for i in range(5):
        alone = image_scores(logits[i:i + 1], target[i:i + 1], band[i:i + 1])
        assert batch.dice[i].item() == alone.dice.item()
        assert batch.iou[i].item() == alone.iou.item()
        assert batch.dice_no_border[i].item() == alone.dice_no_border.item()
    assert batch.dice[3].item() == 1.0


def test_a_logit_of_exactly_zero_is_background_at_threshold_one_half():
    logits = torch.tensor([0.0, 0.1, -0.1, 0.0]).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    # predicted {1} against target {0, 1}: dice 2/3
    assert image_scores(logits, target).dice.tolist() == pytest.approx([2 / 3])
    # threshold 0.4 (logit -0.405): predicted {0, 1, 2, 3}: dice 2*2 / (4 + 2)
    assert image_scores(logits, target, threshold=0.4).dice.tolist() == pytest.approx([4 / 6])
    # threshold 0.6 (logit 0.405): nothing predicted
    assert image_scores(logits, target, threshold=0.6).dice.tolist() == [0.0]


def test_bf16_logits_score_like_float32():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 1, 8, 8) > 0.5).float()
    for threshold in (0.5, 0.7):
        expected = image_scores(logits.bfloat16().float(), target, threshold=threshold)
        got = image_scores(logits.bfloat16(), target, threshold=threshold)
        assert got.dice.tolist() == expected.dice.tolist()


def test_invalid_threshold_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        image_scores(_logits(PRED), _mask(TARGET), threshold=1.0)


def test_mask_scores_of_masks_without_logits_are_the_known_values():
    # (H, W) numpy-born bool masks, as a stored prediction is: the same 4x4 example as above
    pred, truth = torch.tensor([PRED], dtype=torch.bool), torch.tensor([TARGET], dtype=torch.bool)
    scores = mask_scores(pred, truth, torch.tensor([BAND], dtype=torch.bool))
    assert scores.dice.tolist() == pytest.approx([0.4])
    assert scores.iou.tolist() == pytest.approx([2 / 8])
    assert scores.dice_no_border.tolist() == pytest.approx([4 / 6])
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert mask_scores(empty, empty).dice.tolist() == [1.0]  # both empty


def test_mask_scores_refuses_masks_of_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        mask_scores(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 5, dtype=torch.bool))


def test_spread_reports_the_bad_side_of_a_trials_images() -> None:
    from core.metrics import spread

    dice = np.linspace(0.0, 1.0, 101)  # 0.00, 0.01, ..., 1.00
    assert spread(dice) == pytest.approx({"mean": 0.5, "median": 0.5, "p10": 0.1, "p5": 0.05, "worst": 0.0})
    hd95 = np.linspace(0.0, 100.0, 101)  # lower is better: the bad side is the top
    assert spread(hd95, lower_is_better=True) == pytest.approx(
        {"mean": 50.0, "median": 50.0, "p10": 90.0, "p5": 95.0, "worst": 100.0})


def test_scores_and_diagnostics_threshold_logits_by_one_rule() -> None:
    from core.metrics import image_diagnostics, predicted_mask

    logits = torch.tensor([[[[-1.0, 0.0], [0.5, 3.0]]]])  # a logit of exactly 0 is background
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert predicted_mask(logits).flatten().tolist() == [False, False, True, True]
    assert predicted_mask(logits, 0.6).flatten().tolist() == [False, False, True, True]  # logit(0.6) = 0.405
    assert predicted_mask(logits, 0.7).flatten().tolist() == [False, False, False, True]  # logit(0.7) = 0.847
    diag = image_diagnostics(logits, target)
    scores = image_scores(logits, target)
    # 2 predicted, 2 true, 1 shared: dice 0.5, precision 0.5, recall 0.5 from the same predicted pixels
    assert scores.dice.tolist() == [0.5] and diag.precision.tolist() == [0.5] and diag.recall.tolist() == [0.5]
