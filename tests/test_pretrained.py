"""core.models.pretrained: ImageNet encoder weights, loaded strictly and offline, checked on real pets.

The ResNet34 download is served by a local HTTP server only; nothing here reaches the internet.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from core.data.layout import ALL_LIST, image_rel
from core.models import build_model
from core.models import efficientnet_lite0_unet as lite0
from core.models.pretrained import (LITE0_FILE, LITE0_SHA256, RESNET34_URL_ENV, WeightsError, WeightsSource,
                                    encoder_parameters, file_sha256, lite0_classifier, lite0_imagenet_file,
                                    lite0_key, load_encoder_weights, resnet34_imagenet_file)
from core.models.resnet34_unet import ResNet34Encoder
from core.training.loop import MEAN, STD, Normalizer
from tests.pg_server import free_port
from tests.test_download import _Server, data_server  # noqa: F401  (the local HTTP server fixture)

CATS, DOGS = range(281, 286), range(151, 269)  # ImageNet's domestic cat and dog classes
SPECIES_CLASSES = {1: CATS, 2: DOGS}  # list.txt's SPECIES column: 1 = cat, 2 = dog
LITE0 = "efficientnet_lite0_unet"


@pytest.fixture(scope="module")
def published() -> dict[str, torch.Tensor]:
    """The ImageNet Lite0 state dict as the package ships it (efficientnet_pytorch names)."""
    return torch.load(lite0_imagenet_file(), weights_only=True)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_encoder_undoes_the_training_loops_normalisation_into_lite0s() -> None:
    assert (lite0.IMAGENET_MEAN, lite0.IMAGENET_STD) == (MEAN, STD)
    encoder = lite0.Lite0Encoder().eval()
    seen = []
    encoder.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        encoder(Normalizer(torch.device("cpu"), channels_last=False).images(pixels))
    lite0_input = (pixels.permute(0, 3, 1, 2).float() - 127) / 128
    torch.testing.assert_close(seen[0], lite0_input, atol=1e-5, rtol=0)


def _pets_at_224(root: Path) -> tuple[torch.Tensor, list[int]]:
    """list.txt's readable images, shorter side to 256 px and centre-cropped to 224 (ImageNet's
    evaluation), as uint8 NHWC, with their species."""
    images, species = [], []
    for line in (root / ALL_LIST).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, kind, _ = line.split()
        try:
            with Image.open(root / image_rel(name)) as im:
                im = im.convert("RGB")
        except (OSError, UnidentifiedImageError):
            continue
        scale = 256 / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        images.append(np.asarray(im.crop((left, top, left + 224, top + 224))))
        species.append(int(kind))
    return torch.from_numpy(np.stack(images)), species


def test_imagenet_lite0_names_the_right_animal_family_of_real_pets(pets_root: Path) -> None:
    images, species = _pets_at_224(pets_root)
    assert len(species) >= 150  # the sample lists 160
    model = lite0_classifier().eval()
    normalise = Normalizer(torch.device("cpu"), channels_last=False)
    with torch.no_grad():
        top5 = torch.cat([model(normalise.images(batch)).topk(5).indices for batch in images.split(32)])
    right = [any(c in SPECIES_CLASSES[s] for c in top.tolist()) for top, s in zip(top5, species)]
    assert sum(right) / len(right) >= 0.9, f"{sum(right)} of {len(right)}"


def test_imagenet_lite0_unet_loads_the_published_encoder_for_any_input_size(published) -> None:
    torch.manual_seed(0)
    model = build_model(LITE0, width=0.5)
    decoder_before = {k: v for k, v in _state(model).items() if not k.startswith("encoder.")}
    source = load_encoder_weights(model, LITE0, "imagenet")
    assert source == WeightsSource(f"imagenet:{LITE0_FILE}", LITE0_SHA256)
    assert LITE0_SHA256 == file_sha256(lite0_imagenet_file())
    state = model.state_dict()
    encoder_keys = [k for k in published if not k.startswith("_fc.")]
    assert sorted(lite0_key(k) for k in encoder_keys) == sorted(k for k in state if k.startswith("encoder."))
    for key in encoder_keys:
        assert torch.equal(state[lite0_key(key)], published[key]), key
    for key, value in decoder_before.items():
        assert torch.equal(state[key], value), key
    model.eval()
    with torch.no_grad():
        for size in [(64, 64), (72, 56)]:
            logits = model(torch.randn(2, 3, *size))
            assert logits.shape == (2, 1, *size) and logits.isfinite().all()


def test_every_ensemble_member_gets_the_encoder_and_encoder_parameters_lists_theirs(published) -> None:
    ensemble = build_model(LITE0, width=0.125, members=2)
    load_encoder_weights(ensemble, LITE0, "imagenet")
    for member in ensemble.members:
        assert torch.equal(member.encoder.stem.conv.weight, published["_conv_stem.weight"])
    params = encoder_parameters(ensemble)
    assert sum(p.numel() for p in params) == 2 * 3_371_008
    assert {id(p) for p in params} == {id(p) for m in ensemble.members for p in m.encoder.parameters()}
    assert encoder_parameters(build_model("unet", width=0.125)) == []


def _saved(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return str(path)


def test_a_file_path_loads_and_is_recorded_with_its_sha256(tmp_path: Path, published) -> None:
    path = tmp_path / "mine.pth"
    shutil.copyfile(lite0_imagenet_file(), path)
    model = build_model(LITE0, width=0.125)
    assert load_encoder_weights(model, LITE0, str(path)) == WeightsSource(f"file:{path}", LITE0_SHA256)
    assert torch.equal(model.encoder.head.bn.running_var, published["_bn1.running_var"])


def _renamed(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {(new if k == old else k): v for k, v in state.items()}


TAMPERED = {
    "renamed": (lambda s: _renamed(s, "_blocks.3._bn1.weight", "_blocks.3._bn1.gamma"),
                "missing keys: _blocks.3._bn1.weight; unexpected keys: _blocks.3._bn1.gamma"),
    "removed": (lambda s: {k: v for k, v in s.items() if k != "_conv_head.weight"},
                "missing keys: _conv_head.weight"),
    "extra": (lambda s: {**s, "_blocks.16._bn1.weight": torch.ones(320)},
              "unexpected keys: _blocks.16._bn1.weight"),
    "reshaped": (lambda s: {**s, "_blocks.5._depthwise_conv.weight": torch.zeros(240, 1, 5, 5)},
                 "wrong shapes: _blocks.5._depthwise_conv.weight (240, 1, 5, 5) (model (240, 1, 3, 3))"),
}


@pytest.mark.parametrize("tamper", TAMPERED, ids=list(TAMPERED))
def test_a_tampered_file_fails_naming_the_key_and_loads_nothing(tmp_path: Path, published, tamper: str) -> None:
    change, expected = TAMPERED[tamper]
    path = _saved(tmp_path, change(published))
    model = build_model(LITE0, width=0.125)
    before = _state(model)
    with pytest.raises(WeightsError) as info:
        load_encoder_weights(model, LITE0, path)
    assert str(info.value) == f"{path} does not fit this encoder: {expected}"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_what_is_not_a_state_dict_fails_in_one_line(tmp_path: Path) -> None:
    model = build_model(LITE0, width=0.125)
    with pytest.raises(WeightsError, match="does not exist"):
        load_encoder_weights(model, LITE0, str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint\n" * 10)
    with pytest.raises(WeightsError) as info:
        load_encoder_weights(model, LITE0, str(tmp_path / "junk.pth"))
    assert str(info.value).startswith(f"cannot read {tmp_path / 'junk.pth'} as a PyTorch state dict")
    assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="unet has no pretrained encoder"):
        load_encoder_weights(build_model("unet", width=0.125), "unet", "imagenet")


@pytest.mark.parametrize("arch", ["unet", "resnet34_unet", LITE0])
def test_none_keeps_the_random_initialisation(arch: str) -> None:
    model = build_model(arch, width=0.125)
    before = _state(model)
    assert load_encoder_weights(model, arch, "none") == WeightsSource("none", None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- ResNet34 download


@pytest.fixture
def hub(data_server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    """torch hub's checkpoint folder under tmp_path ($TORCH_HOME), empty."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _serve(server: _Server, monkeypatch: pytest.MonkeyPatch, name: str, body: bytes) -> None:
    server.serve({name: body})
    monkeypatch.setenv(RESNET34_URL_ENV, server.url + name)


def test_resnet34_imagenet_downloads_once_checks_and_loads_strictly(
        hub: Path, data_server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    torch.manual_seed(0)
    published = {**ResNet34Encoder().state_dict(), "fc.weight": torch.randn(1000, 512), "fc.bias": torch.zeros(1000)}
    body = Path(_saved(tmp_path, published)).read_bytes()
    sha = file_sha256(tmp_path / "weights.pth")
    name = f"resnet34-{sha[:8]}.pth"  # torchvision's naming: the file's sha256 prefix is what is checked
    _serve(data_server, monkeypatch, name, body)
    model = build_model("resnet34_unet")
    assert load_encoder_weights(model, "resnet34_unet", "imagenet") == WeightsSource(f"imagenet:{name}", sha)
    assert data_server.requests == [f"/pets/{name}"]
    assert [p.name for p in hub.iterdir()] == [name]
    assert (hub / name).read_bytes() == body
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, published[key]), key
    data_server.routes.clear()  # a second load must not ask again
    assert load_encoder_weights(model, "resnet34_unet", "imagenet") == WeightsSource(f"imagenet:{name}", sha)
    assert data_server.requests == [f"/pets/{name}"]


def test_a_download_with_the_wrong_sha256_is_discarded(
        hub: Path, data_server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _serve(data_server, monkeypatch, "resnet34-00000000.pth", b"not the weights")
    with pytest.raises(WeightsError) as info:
        resnet34_imagenet_file(progress=False)
    assert "is corrupt (sha256 " in str(info.value) and "expected 00000000...) and was discarded" in str(info.value)
    assert list(hub.iterdir()) == []


def test_an_unreachable_address_says_which_file_to_put_where(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/resnet34-b627a593.pth"  # nobody listens there
    monkeypatch.setenv(RESNET34_URL_ENV, url)
    with pytest.raises(WeightsError) as info:
        load_encoder_weights(build_model("resnet34_unet"), "resnet34_unet", "imagenet")
    message = str(info.value)
    assert message.startswith(f"resnet34-b627a593.pth is not in {hub} and could not be downloaded (")
    assert message.endswith(f"; put resnet34-b627a593.pth (from {url}) in {hub}, or give a file path")
    assert "\n" not in message and list(hub.iterdir()) == []


def test_resnet34_imagenet_needs_full_width_and_asks_no_server(
        hub: Path, data_server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _serve(data_server, monkeypatch, "resnet34-00000000.pth", b"")
    with pytest.raises(WeightsError, match=r"at width 1\.0 only; this model has 32 stem channels instead of 64"):
        load_encoder_weights(build_model("resnet34_unet", width=0.5), "resnet34_unet", "imagenet")
    assert data_server.requests == []


def test_a_narrow_resnet34_file_of_our_own_loads(tmp_path: Path) -> None:
    trained = build_model("resnet34_unet", width=0.125)
    path = _saved(tmp_path, trained.encoder.state_dict())
    model = build_model("resnet34_unet", width=0.125)
    assert load_encoder_weights(model, "resnet34_unet", path).source == f"file:{path}"
    assert all(torch.equal(v, trained.encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(path) == first  # the same version: from memory
    path.write_bytes(b"b" * 1000)  # same size, rewritten: hashed again
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
