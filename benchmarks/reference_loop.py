"""The lab reports' plain training loop, the yardstick the trainer and the sweep are measured against.

What the reports did, kept as they did it: a Dataset that decodes, resizes (OpenCV, no
antialiasing) and augments every sample on every access, DataLoader defaults, fp32 NCHW,
Adam at a constant 1e-4, 0.3 BCE + 0.7 Dice, batch 8, full width. Used for speed
(`train_throughput.py`: images/s of this loop) and for quality (`quality.py`: this loop trained
for N seconds, the best-by-validation epoch kept, scored on the same test masks as the sweep).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.data.layout import LAYOUT_SOURCES, image_path, trimap_foreground, trimap_path

LR = 1e-4
BCE_WEIGHT, DICE_WEIGHT = 0.3, 0.7
BATCH_SIZE = 8


class OxfordFiles:
    """The reports' reads of one sample: images/NAME.jpg and its trimap's foreground (uint8 0/1), decoded on
    every access."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        return (np.array(Image.open(image_path(self.root, name)).convert("RGB")),
                trimap_foreground(np.array(Image.open(trimap_path(self.root, name)))).astype(np.uint8))


class FolderFiles:
    """The same reads from a user's folder: the image and its masks, united, as core.data reads them
    (uint8 0/1), decoded on every access."""

    def __init__(self, root: Path, foreground: tuple[int, ...] | None = None):
        from core.data.sources import scan_folder

        scan = scan_folder(root)
        self.root, self.foreground = scan.root, foreground if foreground is not None else scan.foreground
        self.pairs = {pair.name: pair for pair in scan.pairs}

    def __call__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        from core.data.folder_dataset import read_pair

        read = read_pair(self.root, self.pairs[name], self.foreground)
        if read.image is None or read.mask is None:
            raise OSError(f"cannot read {name}: {read.unreadable}")
        return np.array(read.image), read.mask.astype(np.uint8)


def sample_reader(root: Path) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
    """How the reports' loop reads a sample of the dataset at `root`: its files, as that layout keeps them."""
    from core.data.sources import detect_layout

    return OxfordFiles(root) if detect_layout(Path(root)) in LAYOUT_SOURCES else FolderFiles(root)


class ReportsDataset:
    """The lab reports' Dataset: decode, resize and (when `train`) augment every sample on every access.

    `root` is a dataset folder (its layout's reader: sample_reader) or a reader itself."""

    def __init__(self, root: Path | Callable[[str], tuple[np.ndarray, np.ndarray]], names: Sequence[str], size: int,
                 train: bool = True):
        import albumentations as A
        import cv2
        from albumentations.pytorch import ToTensorV2

        from core.training.loop import MEAN, STD

        self.read = root if callable(root) else sample_reader(Path(root))
        self.names = list(names)
        augment = [
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
        ] if train else []
        self.transform = A.Compose([A.Resize(size, size), *augment, A.Normalize(mean=MEAN, std=STD), ToTensorV2()])

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        image, mask = self.read(self.names[i])
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].float().unsqueeze(0)


def reference_model(arch: str, width: float = 1.0, seed: int = 0):
    """A fresh model, its optimizer and its loss, built as the reports built them; its encoder starts from
    the weights the jobs give the architecture by default (ImageNet for efficientnet_lite0_unet), so a
    pretrained network's sweep is compared with the plain loop on the same pretrained network."""
    import torch

    from core.losses import SegmentationLoss
    from core.models import build_model
    from core.models.pretrained import default_encoder_weights, load_encoder_weights

    torch.manual_seed(seed)
    model = build_model(arch, width=width)
    load_encoder_weights(model, arch, default_encoder_weights(arch))
    return model, torch.optim.Adam(model.parameters(), lr=LR), SegmentationLoss(BCE_WEIGHT, DICE_WEIGHT)


def train_epoch(model, optimizer, criterion, loader) -> int:
    """One epoch of the plain loop; returns the number of images seen."""
    model.train()
    seen = 0
    for images, masks in loader:
        optimizer.zero_grad()
        loss = criterion(model(images), masks)
        loss.backward()
        optimizer.step()
        seen += images.size(0)
    return seen


@dataclass
class ReferenceResult:
    test_dice: float            # mean over test images, best-by-validation weights
    test_scores: np.ndarray     # per test image, aligned with the `test` names given
    best_val_dice: float
    best_epoch: int
    epochs: int
    seconds: float


def per_image_dice(model, root: Path | Callable[[str], tuple[np.ndarray, np.ndarray]], names: Sequence[str], masks: np.ndarray, size: int) -> np.ndarray:
    """Dice of each image against `masks` (the shared ground truth, bool), inputs prepared as the reports did."""
    import torch

    from core.metrics import image_scores

    dataset = ReportsDataset(root, names, size, train=False)
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(names), 32):
            chunk = range(start, min(len(names), start + 32))
            x = torch.stack([dataset[i][0] for i in chunk])
            target = torch.from_numpy(masks[start:start + len(chunk)]).unsqueeze(1).float()
            out.append(image_scores(model(x), target).dice.double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def train_for(arch: str, root: Path, seconds: float, size: int, train: Sequence[str], val: Sequence[str],
              val_masks: np.ndarray, test: Sequence[str], test_masks: np.ndarray, width: float = 1.0,
              seed: int = 0) -> ReferenceResult:
    """Train the plain loop for `seconds` (whole epochs; the last one may run over), validating after
    each epoch and keeping the best weights, then score every test image with them."""
    import torch

    model, optimizer, criterion = reference_model(arch, width, seed)
    root = sample_reader(root)  # scanned once; each sample is still decoded on every access
    loader = torch.utils.data.DataLoader(ReportsDataset(root, train, size), batch_size=BATCH_SIZE, shuffle=True)
    started = time.perf_counter()
    best_val, best_epoch, best_state, epoch = -1.0, -1, None, 0
    while time.perf_counter() - started < seconds:
        train_epoch(model, optimizer, criterion, loader)
        dice = float(per_image_dice(model, root, val, val_masks, size).mean())
        if dice > best_val:
            best_val, best_epoch, best_state = dice, epoch, copy.deepcopy(model.state_dict())
        epoch += 1
    elapsed = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    scores = per_image_dice(model, root, test, test_masks, size)
    return ReferenceResult(float(scores.mean()), scores, best_val, best_epoch, epoch, elapsed)
