"""The training loop: device choice, schedule, learning, divergence guard, callbacks, prediction."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import core.training.loop as train
from core.data.augment import AugmentConfig
from core.data.dataset import prepare_dataset
from core.metrics import image_scores
from core.models.ensemble import Ensemble
from core.data.synthetic import generate_synthetic
from core.training.loop import TrainConfig, fit, predict, select_amp, select_device


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory):
    root = generate_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", n_images=60, image_size=64, seed=3)
    return prepare_dataset(root, 32, log=lambda _: None)


def small(**kw) -> TrainConfig:
    base = dict(arch="unet", width=0.125, image_size=32, epochs=2, batch_size=8, lr=3e-3, augment=AugmentConfig.none())
    base.update(kw)
    return TrainConfig(**base)


def test_auto_device_is_cpu_without_accelerators() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    assert select_device("auto").type == "cpu"


def test_naming_an_absent_cuda_device_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


def test_cpu_uses_bf16_only_where_the_cpu_does_it_natively() -> None:
    cpu = torch.device("cpu")
    assert select_amp(cpu, "auto") == (torch.bfloat16 if train.cpu_has_fast_bf16() else None)
    assert select_amp(cpu, "off") is None and select_amp(cpu, "bf16") == torch.bfloat16


def test_lr_warms_up_linearly_then_decays_to_one_percent() -> None:
    assert train._lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert train._lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert train._lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert train._lr_factor(100, 100, 10) == pytest.approx(0.01)


def test_fit_reports_every_epoch_and_keeps_the_last_weights_by_default(tiny_synthetic) -> None:
    seen = []
    result = fit(small(epochs=3), tiny_synthetic, on_epoch=seen.append, progress=False)
    assert [s.epoch for s in seen] == [0, 1, 2] and result.epochs_run == 3
    assert result.kept_epoch == 2 and result.val_dice == seen[-1].val_dice
    assert all(s.images_per_s > 0 and s.seconds > 0 and math.isfinite(s.train_loss) for s in seen)
    val = predict(result.model, tiny_synthetic, tiny_synthetic.indices("val"), small(), with_masks=False)
    assert val.mean_dice == pytest.approx(seen[-1].val_dice, abs=1e-5)


def test_keep_best_returns_the_epoch_with_the_highest_validation_dice(tiny_synthetic, monkeypatch) -> None:
    scripted = iter([0.5, 0.9, 0.6])  # validation dice of epochs 0, 1, 2: the best is not the last
    states = []
    real_predict = train.predict

    def scripted_predict(model, *args, **kwargs):
        pred = real_predict(model, *args, **kwargs)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        pred.dice = np.full_like(pred.dice, next(scripted))
        return pred

    monkeypatch.setattr(train, "predict", scripted_predict)
    result = fit(small(epochs=3, keep="best"), tiny_synthetic, progress=False)
    assert result.kept_epoch == 1 and result.val_dice == pytest.approx(0.9)
    kept = result.model.state_dict()
    assert all(torch.equal(v, states[1][k]) for k, v in kept.items())
    assert not all(torch.equal(v, states[2][k]) for k, v in kept.items())


def test_fit_trains_an_ensemble_whose_validation_is_its_members_mean(tiny_synthetic) -> None:
    cfg = small(epochs=2, members=2)
    result = fit(cfg, tiny_synthetic, progress=False)
    assert isinstance(result.model, Ensemble) and len(result.model.members) == 2
    assert cfg.params()["members"] == 2
    val_idx = tiny_synthetic.indices("val")
    whole = predict(result.model, tiny_synthetic, val_idx, cfg, with_masks=False)
    assert whole.mean_dice == pytest.approx(result.val_dice, abs=1e-5)
    alone = [predict(m, tiny_synthetic, val_idx, cfg, with_masks=False).loss for m in result.model.members]
    assert alone[0] != pytest.approx(alone[1], rel=1e-3)  # two different networks, not one twice


def test_an_unknown_keep_is_refused_before_training(tiny_synthetic) -> None:
    with pytest.raises(ValueError, match="keep must be one of last, best"):
        fit(small(keep="worst"), tiny_synthetic, progress=False)


def test_best_weights_snapshot_is_a_copy_refreshed_in_its_own_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    snap = train._snapshot(model, None)
    buffers = {k: v.data_ptr() for k, v in snap.items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)  # training moves on: the snapshot must not follow
    assert not torch.equal(snap["0.weight"], model[0].weight)
    assert train._snapshot(model, snap) is snap  # a better epoch: copied into the same memory
    assert {k: v.data_ptr() for k, v in snap.items()} == buffers
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_same_seed_gives_the_same_run(tiny_synthetic) -> None:
    a = fit(small(epochs=1, augment=AugmentConfig.reports()), tiny_synthetic, progress=False).history[0]
    b = fit(small(epochs=1, augment=AugmentConfig.reports()), tiny_synthetic, progress=False).history[0]
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5) and a.val_dice == pytest.approx(b.val_dice, rel=1e-5)


def test_non_finite_loss_stops_training_with_a_reason(tiny_synthetic, diverging_loss) -> None:
    result = fit(small(epochs=3), tiny_synthetic, progress=False)
    assert result.diverged is not None and "non-finite loss" in result.diverged and "epoch 1" in result.diverged
    assert result.epochs_run == 0


def test_an_exception_from_on_epoch_stops_training(tiny_synthetic) -> None:
    class Stop(Exception):
        pass

    def stop(stats):
        raise Stop()

    with pytest.raises(Stop):
        fit(small(epochs=3), tiny_synthetic, on_epoch=stop, progress=False)


def test_predict_scores_each_image_and_returns_masks(tiny_synthetic) -> None:
    model = fit(small(epochs=1), tiny_synthetic, progress=False).model
    idx = tiny_synthetic.indices("test")
    pred = predict(model, tiny_synthetic, idx, small(), batch_size=7)
    assert pred.dice.shape == (len(idx),) and pred.masks.shape == (len(idx), 32, 32)
    target = torch.from_numpy(tiny_synthetic.masks[idx]).float().unsqueeze(1)
    logits = torch.from_numpy(np.where(pred.masks, 1.0, -1.0)).float().unsqueeze(1)
    expected = image_scores(logits, target).dice.numpy()
    np.testing.assert_allclose(pred.dice, expected, atol=1e-6)
    assert pred.mean_dice == pytest.approx(float(expected.mean()))


def test_predict_with_diagnostics_measures_the_masks_it_returns(tiny_synthetic) -> None:
    from core.metrics import mask_diagnostics

    model = fit(small(epochs=1), tiny_synthetic, progress=False).model
    idx = tiny_synthetic.indices("test")
    pred = predict(model, tiny_synthetic, idx, small(), batch_size=7, diagnostics=True)
    expected = mask_diagnostics(pred.masks, tiny_synthetic.masks[idx].astype(bool))
    for name in ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95", "fp_blobs", "object_missed"):
        np.testing.assert_array_equal(getattr(pred.diagnostics, name), getattr(expected, name), err_msg=name)
    assert pred.diagnostics.entropy.shape == (len(idx),) and np.isfinite(pred.diagnostics.entropy).all()
    assert predict(model, tiny_synthetic, idx, small()).diagnostics is None  # validation asks for none


@pytest.mark.slow
def test_real_pets_training_beats_predicting_all_pet(pets_root: Path) -> None:
    data = prepare_dataset(pets_root, 64, log=lambda _: None)
    test = data.indices("test")
    target = data.masks[test].reshape(len(test), -1).astype(np.float64)
    all_pet = float(np.mean(2 * target.sum(1) / (target.sum(1) + target.shape[1])))
    cfg = TrainConfig(arch="resnet34_unet", width=0.5, image_size=64, epochs=6, batch_size=8, lr=2e-3)
    result = fit(cfg, data, progress=False)
    dice = predict(result.model, data, test, cfg).mean_dice
    assert dice > all_pet + 0.05, (dice, all_pet)


@pytest.mark.parametrize("augment", [AugmentConfig.none(), AugmentConfig.reports()], ids=["plain", "augmented"])
def test_a_paused_run_resumes_exactly_where_it_stopped(tiny_synthetic, tmp_path: Path, augment) -> None:
    cfg = small(epochs=4, augment=augment, amp="off")
    straight = fit(cfg, tiny_synthetic, progress=False).history

    def pause_after_two(stats) -> None:
        if stats.epoch == 1:
            raise train.StopTraining()

    state = tmp_path / "paused.pt"
    with pytest.raises(train.StopTraining):
        fit(cfg, tiny_synthetic, on_epoch=pause_after_two, progress=False, pause_to=state)
    resumed = fit(cfg, tiny_synthetic, progress=False, resume_from=state).history

    assert [s.epoch for s in resumed] == [2, 3]
    assert [s.lr for s in resumed] == pytest.approx([s.lr for s in straight[2:]])
    assert [s.train_loss for s in resumed] == pytest.approx([s.train_loss for s in straight[2:]], rel=1e-5)
    assert [s.val_dice for s in resumed] == pytest.approx([s.val_dice for s in straight[2:]], abs=1e-6)


@pytest.mark.parametrize("saved_as", ["checkpoint", "paused state"])
def test_a_warm_restart_starts_from_saved_weights_with_a_fresh_optimizer_and_schedule(
        tiny_synthetic, tmp_path: Path, saved_as: str) -> None:
    trained = fit(small(epochs=3), tiny_synthetic, progress=False).model
    path = tmp_path / "weights.pt"
    if saved_as == "checkpoint":
        train.save_checkpoint(path, trained, small())
    else:
        train._save_train_state(path, trained, torch.optim.SGD(trained.parameters(), lr=0.1), next_epoch=3, step=18)
    still = small(epochs=2, lr=1e-12, weight_decay=0.0)  # a learning rate that moves nothing
    warm = fit(still, tiny_synthetic, progress=False, init_from=path)
    fresh = fit(still, tiny_synthetic, progress=False)
    assert [s.epoch for s in warm.history] == [0, 1]  # the whole schedule, not a resumption at epoch 3
    assert warm.history[-1].lr == pytest.approx(fresh.history[-1].lr)
    convs = [k for k, v in trained.state_dict().items() if v.ndim == 4]
    assert all(torch.allclose(warm.model.state_dict()[k], trained.state_dict()[k], atol=1e-6) for k in convs)
    assert not any(torch.allclose(fresh.model.state_dict()[k], trained.state_dict()[k], atol=1e-3) for k in convs)
