"""How a pretrained encoder is trained and recorded: its own share of the learning rate, frozen first
epochs that leave it (and its batch-norm statistics) as loaded, and the weights' source in the store."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.models.pretrained import encoder_parameters, lite0_imagenet_file
from core.store.db import Store
from core.training.loop import TrainConfig, build_step, freeze_encoder, param_groups
from jobs import sweep as sweep_job
from jobs import train as train_job

CPU = torch.device("cpu")


def _lite0(**kw) -> TrainConfig:
    return TrainConfig(arch="efficientnet_lite0_unet", width=0.125, image_size=32, device="cpu", amp="off",
                       encoder_weights="imagenet", **kw)


def test_the_encoder_gets_its_share_of_the_learning_rate_and_the_decoder_the_rest() -> None:
    model, optimizer, _ = build_step(_lite0(lr=1e-3, encoder_lr=0.3), CPU, None)
    decoder, encoder = optimizer.param_groups
    assert (decoder["lr_scale"], encoder["lr_scale"]) == (1.0, 0.3) and encoder["lr"] == pytest.approx(3e-4)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, _lite0(encoder_lr=1.0))) == 1  # the full rate: one group, as before


def test_build_step_starts_the_encoder_from_the_imagenet_file() -> None:
    model, _, _ = build_step(_lite0(), CPU, None)
    published = torch.load(lite0_imagenet_file(), map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder.stem.conv.weight, published["_conv_stem.weight"])
    assert torch.equal(model.encoder.blocks[15].project.bn.running_var, published["_blocks.15._bn2.running_var"])


def test_a_frozen_encoder_keeps_its_weights_and_batch_norm_statistics_while_the_decoder_learns() -> None:
    model, _, train_step = build_step(_lite0(lr=1e-2), CPU, None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    freeze_encoder(model, True)
    assert not any(p.requires_grad for p in encoder_parameters(model)) and not model.encoder.training
    x, target = torch.randn(4, 3, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    train_step(x, target)
    after = model.state_dict()
    encoder_keys = [k for k in after if k.startswith("encoder.")]
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)  # weights and running statistics
    assert not torch.equal(before["head.weight"], after["head.weight"])
    model.train()
    freeze_encoder(model, False)  # thawed: learns again
    assert all(p.requires_grad for p in encoder_parameters(model)) and model.encoder.training
    train_step(x, target)
    assert not torch.equal(before["encoder.stem.conv.weight"], model.state_dict()["encoder.stem.conv.weight"])


def test_jobs_record_the_encoders_weights_and_their_sha256(tmp_path: Path, pets_root: Path) -> None:
    db = tmp_path / "r.db"
    code = train_job.main(["--arch", "efficientnet_lite0_unet", "--width", "0.125", "--image-size", "32",
                           "--epochs", "1", "--data-root", str(pets_root), "--db", str(db), "--no-progress"])
    assert code == 0
    store = Store(str(db), read_only=True)
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT encoder_weights, encoder_sha256, params FROM trials").one()
    store.dispose()
    assert row[0] == "imagenet:efficientnet-lite0-57934424.pth" and row[1].startswith("579344248a93")
    assert '"encoder_lr": 1.0' in row[2] and '"encoder_weights": "imagenet"' in row[2]


@pytest.mark.parametrize("argv, fragment", [
    (["--arch", "unet", "--encoder-weights", "imagenet"], "unet has no pretrained encoder"),
    (["--arch", "efficientnet_lite0_unet", "--encoder-weights", "/no/such.pth"], "/no/such.pth does not exist"),
])
def test_encoder_weights_a_job_cannot_use_are_a_one_line_error_before_training(argv, fragment, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        train_job.config_from_args(train_job.parse_args(argv))
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_sweep_takes_each_architectures_default_weights() -> None:
    args = sweep_job.parse_args(["--archs", "unet,efficientnet_lite0_unet", "--encoder-lr", "0.3"])
    assert args.encoder == {"unet": "none", "efficientnet_lite0_unet": "imagenet"} and args.encoder_lr == 0.3
    with pytest.raises(SystemExit):  # checked when parsed, before any study opens
        sweep_job.parse_args(["--archs", "resnet34_unet", "--encoder-weights", "/no/such.pth"])
