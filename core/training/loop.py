"""The one training loop every job uses: fit a model on a prepared dataset, then predict.

Readable first (nanoGPT-style): the loop is `fit`; the speed tricks (uint8 batches moved
once and normalised on the device, channels_last and bf16 where they measure faster, fused AdamW,
unthreaded OpenCV augmentation, freed memory kept on CPUs, optional torch.compile) are set up
around it and never inside its logic. What each is worth: benchmarks/train_throughput.py --ablations.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from core.data.augment import AugmentConfig, build_augment
from core.data.dataset import PreparedDataset
from core.losses import SegmentationLoss
from core.machine import usable_cores
from core.metrics import ImageDiagnostics, concat_diagnostics, image_diagnostics, image_scores, predicted_mask
from core.models import build_model
from core.models.pretrained import encoder_parameters, load_encoder_weights
from core.training.malloc import keep_freed_memory

# ImageNet statistics, as the lab reports normalised their inputs.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    """Everything that defines one training run; `params()` is what the store records.

    The defaults are the lab reports' configuration (jobs.search_space.BASELINE reads them from here);
    jobs.train's defaults are SegSweep's short-run recipe on top of them (search_space.RECIPE)."""

    arch: str = "resnet34_unet"
    width: float = 1.0
    members: int = 1               # > 1: a deep ensemble of that many copies, trained side by side
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    bce_weight: float = 0.3
    dice_weight: float = 0.7
    focal_weight: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig.reports)
    warmup_epochs: float = 0.5     # linear warm-up, then cosine decay to 1% of lr
    grad_clip: float = 1.0         # max gradient norm; 0 disables
    flip_tta: bool = True          # evaluate on each image and its mirror image, logits averaged
    encoder_weights: str = "none"  # the encoder's start: "imagenet", "none" (random) or a file (core.models.pretrained)
    encoder_lr: float = 1.0        # the encoder's learning rate as a share of lr (a pretrained one wants less)
    freeze_epochs: int = 0         # first epochs with the encoder frozen (no encoder backward; its BN statistics kept)
    keep: str = "last"             # the weights fit returns: "last" (the schedule's end) or "best" (by val dice)
    device: str = "auto"           # auto | cpu | cuda | cuda:N | mps
    amp: str = "auto"              # auto (CUDA: bf16/fp16; CPU: bf16 where measured faster, choose_amp) | bf16 | fp16 | off
    channels_last: bool | None = None  # None: channels_last on CUDA, measured on a CPU (use_channels_last)
    compile: bool = False
    seed: int = 0
    num_workers: int = -1          # -1: chosen for the device

    def params(self) -> dict[str, Any]:
        """The sweepable and descriptive knobs, flat, JSON-ready."""
        out = {k: v for k, v in asdict(self).items() if k not in ("augment", "device", "num_workers")}
        out.update({f"aug_{k}": v for k, v in self.augment.as_dict().items()})
        return out


@dataclass
class EpochStats:
    """One point of a learning curve (the store's `epochs` row)."""

    epoch: int
    train_loss: float
    val_loss: float
    train_dice: float
    val_dice: float
    lr: float
    seconds: float
    images_per_s: float  # training images per second of optimizer steps, data loading included


class StopTraining(Exception):
    """Raised by `fit`'s on_epoch to end training after that epoch (e.g. a scheduler pausing a trial).

    When fit was given `pause_to`, it first saves a resumable state there, so the run can later
    continue exactly where it stopped (`fit(..., resume_from=...)`).
    """


class EndTraining(Exception):
    """Raised by `fit`'s on_epoch to finish now: `fit` returns normally after that epoch, with the
    weights `cfg.keep` names among those so far (e.g. a time budget spent sooner than planned)."""


KEEP = ("last", "best")


@dataclass
class FitResult:
    model: nn.Module            # holds the kept weights (TrainConfig.keep)
    val_dice: float             # the kept weights' validation dice
    kept_epoch: int             # the epoch they are from (0-based)
    epochs_run: int
    history: list[EpochStats]
    diverged: str | None        # why training stopped early on a non-finite loss, else None
    device: str
    amp: str


@dataclass
class Prediction:
    """Per-image results on one split, aligned with `indices`."""

    indices: np.ndarray         # positions in the PreparedDataset
    dice: np.ndarray
    iou: np.ndarray
    dice_no_border: np.ndarray
    loss: float                 # mean loss over images
    masks: np.ndarray | None    # (M, S, S) bool predicted masks, when asked for
    diagnostics: ImageDiagnostics | None = None  # why each image fails, when asked for

    @property
    def mean_dice(self) -> float:
        """A split's score: the mean over images, never a mean of batch means."""
        return float(self.dice.mean()) if len(self.dice) else float("nan")


# -- device and precision ---------------------------------------------------------

def select_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless a device is named."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} asked for, but Apple MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


CHANNELS_LAST_GAIN = 0.1  # on a CPU, channels_last only when its measured step is at least this much faster
_MEASURED_LAYOUT: dict[tuple[Any, ...], bool] = {}


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """cfg.channels_last, or where unset the memory layout that trains this model faster here.

    CUDA: channels_last (it feeds the tensor cores). CPU: measured, once per process and step shape,
    since the faster layout depends on the CPU: a bf16 unet step at 64 px ran 1.5x faster in
    channels_last on a 2-core Intel Xeon with AMX and the same in both on AMD EPYC, where oneDNN's
    blocked NCHW convolutions are as fast. NCHW unless channels_last wins by CHANNELS_LAST_GAIN, so
    timing noise does not flip it. Other devices: NCHW.
    """
    if cfg.channels_last is not None:
        return cfg.channels_last
    if device.type != "cpu":
        return device.type == "cuda"
    if cfg.amp == "auto":  # the precision choose_amp settled on: its timings measured this layout already
        cfg = replace(cfg, amp="bf16" if choose_amp(cfg, device) == torch.bfloat16 else "off")
    key = (cfg.arch, cfg.width, cfg.members, cfg.image_size, cfg.batch_size, cfg.amp, cfg.compile,
           torch.get_num_threads())
    if key not in _MEASURED_LAYOUT:
        nchw = step_seconds(replace(cfg, channels_last=False), steps=2)
        channels_last = step_seconds(replace(cfg, channels_last=True), steps=2)
        _MEASURED_LAYOUT[key] = channels_last < nchw * (1 - CHANNELS_LAST_GAIN)
    return _MEASURED_LAYOUT[key]


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def select_amp(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 (or fp16) on CUDA, bf16 on CPUs that do it natively, else None."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


BF16_GAIN = 0.1  # on a CPU, bf16 autocast only when its measured step is at least this much faster than fp32
_MEASURED_AMP: dict[tuple[Any, ...], bool] = {}


def choose_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype fit, predict and step_seconds use: select_amp, except that amp='auto' on a CPU
    with native bf16 measures a bf16 and an fp32 step (once per process and step shape) and takes bf16
    only where it wins by BF16_GAIN. Native bf16 is not always faster: on a 2-core Intel Xeon with
    AVX512-BF16 and no AMX, a quarter-width unet step at 64 px, batch 8, ran at 76-84 images/s in bf16
    and 85-104 in fp32 (and bf16 at batch 16 in NCHW at 13-25), so the CPU kind alone cannot decide."""
    dtype = select_amp(device, cfg.amp)
    if cfg.amp != "auto" or device.type != "cpu" or dtype is None:
        return dtype
    key = (cfg.arch, cfg.width, cfg.members, cfg.image_size, cfg.batch_size, cfg.compile, torch.get_num_threads())
    if key not in _MEASURED_AMP:
        bf16 = step_seconds(replace(cfg, amp="bf16"), steps=3)
        fp32 = step_seconds(replace(cfg, amp="off"), steps=3)
        _MEASURED_AMP[key] = bf16 < fp32 * (1 - BF16_GAIN)
    return dtype if _MEASURED_AMP[key] else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- batches ------------------------------------------------------------------------

class _Split(torch.utils.data.Dataset):
    """(uint8 image, bool mask) pairs of one split, augmented together when asked. Training needs no
    ignore band (only the evaluation's dice_no_border does), so none is moved."""

    def __init__(self, data: PreparedDataset, indices: np.ndarray, augment: Callable | None):
        self.images, self.masks, self.indices, self.augment = data.images, data.masks, indices, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        image, mask = self.images[j], self.masks[j]
        if self.augment is not None:
            image, mask, _ = self.augment(image, mask)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))


def _plain_batches(data: PreparedDataset, indices: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, masks) slices of the cached arrays: no per-sample Python work when nothing is augmented."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        yield torch.from_numpy(data.images[idx]), torch.from_numpy(data.masks[idx])


def _scored_batches(data: PreparedDataset, indices: np.ndarray,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(images, masks, ignore band or None) slices: what evaluation scores."""
    for start, (images, masks) in zip(range(0, len(indices), batch_size), _plain_batches(data, indices, batch_size)):
        ignore = None if data.ignore is None else torch.from_numpy(data.ignore[indices[start:start + batch_size]])
        yield images, masks, ignore


class Normalizer:
    """Turns uint8 NHWC images into normalised float NCHW (channels_last if asked) on the device."""

    def __init__(self, device: torch.device, channels_last: bool):
        self.device, self.channels_last = device, channels_last
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 ignore: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x, target (N,1,H,W) float 0/1, ignore band (N,1,H,W) bool or None) on the device."""
        x = self.images(images)
        target = self._masks(masks).float()
        return x, target, None if ignore is None else self._masks(ignore)

    def _masks(self, masks: torch.Tensor) -> torch.Tensor:
        return masks.to(self.device, non_blocking=self.device.type == "cuda").unsqueeze(1).bool()

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """The images alone (no masks: a prediction's input), as __call__ gives them."""
        images = images.to(self.device, non_blocking=self.device.type == "cuda")
        x = images.permute(0, 3, 1, 2).float()  # NHWC memory viewed as NCHW: channels_last for free
        x = (x - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: the decoder (everything else) at lr, and with cfg.encoder_lr != 1 the
    encoder at that share of it (`lr_scale`, which the schedule multiplies in)."""
    encoder = encoder_parameters(model)
    if cfg.encoder_lr == 1.0 or not encoder:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    mine = {id(p) for p in encoder}
    return [{"params": [p for p in model.parameters() if id(p) not in mine], "lr_scale": 1.0},
            {"params": encoder, "lr_scale": cfg.encoder_lr, "lr": cfg.lr * cfg.encoder_lr}]


def _make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def freeze_encoder(model: nn.Module, frozen: bool) -> None:
    """Freeze (or thaw) the encoder: no gradients, so no encoder backward at all, and its batch-norm
    layers in eval mode, keeping their pretrained statistics. Call after model.train()."""
    for p in encoder_parameters(model):
        p.requires_grad_(not frozen)
    for member in getattr(model, "members", [model]):
        if frozen and isinstance(encoder := getattr(member, "encoder", None), nn.Module):
            encoder.eval()


def _snapshot(model: nn.Module, into: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """A copy of the model's weights, written into `into`'s buffers when given (no new memory)."""
    state = model.state_dict()
    if into is None:
        return {k: v.detach().clone() for k, v in state.items()}
    for k, v in state.items():
        into[k].copy_(v)
    return into


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed + 1_000_003 * (epoch + 1)


def _member_seed(seed: int, member: int) -> int:
    return seed + 7_919 * member


def _train_loader(data: PreparedDataset, indices: np.ndarray, cfg: TrainConfig, device: torch.device,
                  generator: torch.Generator) -> tuple[Callable[[int], Iterator], int]:
    """A function giving epoch k's shuffled uint8 batches, and the number of batches.

    Epoch k's order and augmentation depend on (seed, k) alone, so a run paused and resumed
    sees exactly the batches an uninterrupted one would. An ensemble's batch is one batch per
    member, concatenated: each member sees its own order and augmentation (core/models/ensemble.py).
    """
    workers = cfg.num_workers if cfg.num_workers >= 0 else (min(8, usable_cores()) if device.type == "cuda" else 0)
    if cfg.members > 1:  # the workers shared out between the members' loaders
        loaders = [_train_loader(data, indices, replace(cfg, members=1, seed=_member_seed(cfg.seed, m),
                                                        num_workers=workers // cfg.members), device, torch.Generator())
                   for m in range(cfg.members)]

        def ensemble_epoch(k: int) -> Iterator:
            for batches in zip(*(epoch(k) for epoch, _ in loaders)):
                yield torch.cat([images for images, _ in batches]), torch.cat([masks for _, masks in batches])
        return ensemble_epoch, loaders[0][1]
    augment = build_augment(cfg.augment)
    n_batches = max(1, len(indices) // cfg.batch_size)  # drop the last partial batch: BatchNorm needs > 1
    if augment is None:
        def epoch(k: int) -> Iterator:
            generator.manual_seed(_epoch_seed(cfg.seed, k))
            order = indices[torch.randperm(len(indices), generator=generator).numpy()]
            return _plain_batches(data, order[:n_batches * cfg.batch_size], cfg.batch_size)
        return epoch, n_batches
    # albumentations runs OpenCV, whose own thread pool (one thread per core) wakes between the
    # steps and fights torch's OpenMP threads for the same cores, which a busy machine punishes
    # (benchmarks/train_throughput.py --ablations measures it). Small images need no threads.
    cv2.setNumThreads(0)
    loader = torch.utils.data.DataLoader(
        _Split(data, indices, augment), batch_size=cfg.batch_size, shuffle=True, drop_last=len(indices) > cfg.batch_size,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=generator)

    def augmented_epoch(k: int) -> Iterator:
        generator.manual_seed(_epoch_seed(cfg.seed, k))
        augment.reseed(_epoch_seed(cfg.seed, k))
        return iter(loader)
    return augmented_epoch, len(loader)


# -- the model, its optimizer and one step -------------------------------------------

TrainStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


OptimizerFactory = Callable[[nn.Module, TrainConfig, torch.device], torch.optim.Optimizer]


def build_step(cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
               make_optimizer: OptimizerFactory | None = None) -> tuple[nn.Module, torch.optim.Optimizer, TrainStep]:
    """The model on its device, its optimizer, and the one training step `fit` (and anything that
    times training) runs: forward in the autocast dtype, backward, clipping, update.
    `make_optimizer` replaces the trainer's fused AdamW (benchmarks price that choice)."""
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on every step's reallocations (core/training/malloc.py)
    model = build_model(cfg.arch, width=cfg.width, members=cfg.members)
    load_encoder_weights(model, cfg.arch, cfg.encoder_weights)  # "none": as built
    model = model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if cfg.compile else model
    criterion = SegmentationLoss(cfg.bce_weight, cfg.dice_weight, cfg.focal_weight)
    optimizer = (make_optimizer or _make_optimizer)(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def train_step(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits = step_model(x)  # an ensemble's: each member's on its own batch, concatenated
            loss = criterion(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return loss, logits

    return model, optimizer, train_step


@torch.inference_mode(False)  # also when asked from inside predict's inference mode (its layout choice)
@torch.enable_grad()
def step_seconds(cfg: TrainConfig, steps: int = 3) -> float:
    """Seconds one training step of `cfg` takes here (median of `steps`, after a warm-up step),
    on random batches: what a budget can afford, known before anything is trained."""
    device = select_device(cfg.device)
    model, _, train_step = build_step(cfg, device, choose_amp(cfg, device))
    model.train()
    n = cfg.batch_size * cfg.members  # an ensemble's step: one batch per member
    x = torch.randn(n, 3, cfg.image_size, cfg.image_size, device=device)
    target = (torch.rand(n, 1, cfg.image_size, cfg.image_size, device=device) > 0.5).float()
    if use_channels_last(cfg, device):
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss, _ = train_step(x, target)
        loss.item()  # waits for the device
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


# -- the loop ------------------------------------------------------------------------

def fit(cfg: TrainConfig, data: PreparedDataset, on_epoch: Callable[[EpochStats], None] | None = None,
        progress: bool = True, pause_to: str | os.PathLike[str] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        init_from: str | os.PathLike[str] | None = None) -> FitResult:
    """Train `cfg.arch` on the train split, validate each epoch, return the weights `cfg.keep` names.

    "last" is the end of the warm-up + cosine schedule, whose learning rate has decayed to 1%
    by then; "best" is the epoch with the highest validation dice, which on a small validation
    split is often a noise peak (docs/sweep.md, "Which weights a run keeps", has the measurement).

    `on_epoch` sees every epoch's stats as soon as they exist; an exception it raises (such as
    optuna.TrialPruned) stops training and propagates, except `EndTraining`, which ends it
    normally; a `StopTraining` one first saves a
    resumable state to `pause_to`, when given. `resume_from` continues such a state: same
    learning-rate schedule (over cfg.epochs), same data order, the epochs after the pause
    only ("best" weights are tracked from the resumed epoch on). `init_from` starts from the
    weights of a checkpoint or paused state instead of fresh ones, with a fresh optimizer and
    the whole schedule: a warm restart. A non-finite loss stops training and is reported in
    `FitResult.diverged`, not raised.
    """
    if cfg.keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {cfg.keep!r}")
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    amp_dtype = choose_amp(cfg, device)
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if len(train_idx) == 0:
        raise ValueError("the dataset has no training images")
    if len(val_idx) == 0:  # tiny datasets: validate on the training images rather than not at all
        val_idx = train_idx

    model, optimizer, train_step = build_step(cfg, device, amp_dtype)
    normalize = Normalizer(device, use_channels_last(cfg, device))
    generator = torch.Generator().manual_seed(cfg.seed)
    next_epoch, n_batches = _train_loader(data, train_idx, cfg, device, generator)
    total_steps = cfg.epochs * n_batches
    warmup_steps = int(cfg.warmup_epochs * n_batches)

    history: list[EpochStats] = []
    best_dice, best_epoch = -1.0, -1
    best_state: dict[str, torch.Tensor] | None = None
    diverged: str | None = None
    step, first_epoch = 0, 0
    if resume_from is not None:
        first_epoch, step = _load_train_state(resume_from, model, optimizer, device)
    elif init_from is not None:
        load_weights(init_from, model, device)
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        freeze_encoder(model, epoch < cfg.freeze_epochs and init_from is None)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        dice_sum = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(next_epoch(epoch), total=n_batches, desc=f"{cfg.arch} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False, file=sys.stderr)
        for images, masks in bar:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * group.get("lr_scale", 1.0) * _lr_factor(step, total_steps, warmup_steps)
            x, target, _ = normalize(images, masks)
            loss, logits = train_step(x, target)
            step += 1
            n = x.shape[0]
            loss_sum += loss.detach().float() * n
            dice_sum += image_scores(logits.detach(), target).dice.sum()
            seen += n
            # checking costs a device sync: every step on the CPU, every 25 steps on a GPU
            if (device.type == "cpu" or step % 25 == 0) and not math.isfinite(loss.item()):
                diverged = (f"training diverged: non-finite loss ({loss.item()}) at epoch {epoch + 1}, "
                            f"step {step} (lr {cfg.lr:g})")
                break
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - started
        if not diverged and not math.isfinite(float(loss_sum)):
            diverged = f"training diverged: non-finite loss in epoch {epoch + 1} (lr {cfg.lr:g})"
        if diverged:
            break
        val = predict(model, data, val_idx, cfg, device=device, with_masks=False)
        stats = EpochStats(
            epoch=epoch, train_loss=float(loss_sum) / seen, val_loss=val.loss, train_dice=float(dice_sum) / seen,
            val_dice=val.mean_dice, lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started,
            images_per_s=seen / train_seconds)
        history.append(stats)
        if cfg.keep == "best" and stats.val_dice > best_dice:
            best_dice, best_epoch = stats.val_dice, epoch
            best_state = _snapshot(model, best_state)
        if on_epoch is not None:
            try:
                on_epoch(stats)
            except EndTraining:
                break
            except StopTraining:
                if pause_to is not None:
                    try:
                        _save_train_state(pause_to, model, optimizer, next_epoch=epoch + 1, step=step)
                    except (OSError, RuntimeError):  # no room or no folder: this run just cannot be resumed
                        with contextlib.suppress(OSError):
                            Path(f"{os.fspath(pause_to)}.tmp").unlink(missing_ok=True)
                raise

    if best_state is not None:
        model.load_state_dict(best_state)
    elif history:  # "last" (after a divergence, the failed trial evaluates nothing)
        best_dice, best_epoch = history[-1].val_dice, history[-1].epoch
    return FitResult(model=model, val_dice=best_dice, kept_epoch=best_epoch, epochs_run=len(history),
                     history=history, diverged=diverged, device=str(device),
                     amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "off")


def evaluation_batch(cfg: TrainConfig) -> int:
    """Images per evaluation batch: no gradients to keep, so at least 32."""
    return max(cfg.batch_size, 32)


def evaluation_logits(model: nn.Module, x: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    """The logits a trial is evaluated on (float32), from normalised images: the model's (an ensemble's:
    its members' mean) and, with flip_tta, averaged with the mirror image's prediction mirrored back,
    a second opinion for one more pass. `predict`, jobs.predict and the exported graph (jobs.export) all use it."""
    logits = model(x).float()
    if flip_tta:
        logits = (logits + model(x.flip(-1)).float().flip(-1)) / 2
    return logits


@torch.inference_mode()
def predict(model: nn.Module, data: PreparedDataset, indices: np.ndarray, cfg: TrainConfig,
            device: torch.device | None = None, with_masks: bool = True, batch_size: int | None = None,
            diagnostics: bool = False) -> Prediction:
    """Score every image of `indices`: per-image dice, IoU, dice off the ignore band, loss, and masks.

    diagnostics=True adds core.metrics.image_diagnostics per image (error areas, boundary, components,
    entropy): the test evaluation asks for them, the per-epoch validation does not.
    """
    device = device or select_device(cfg.device)
    amp_dtype = choose_amp(cfg, device)
    normalize = Normalizer(device, use_channels_last(cfg, device))
    criterion = SegmentationLoss(cfg.bce_weight, cfg.dice_weight, cfg.focal_weight)
    was_training = model.training
    model.eval()
    dice, iou, dnb, losses, masks, diags = [], [], [], [], [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with autocast:
        for images, truths, ignore in _scored_batches(data, indices, batch_size or evaluation_batch(cfg)):
            x, target, ignore = normalize(images, truths, ignore)
            logits = evaluation_logits(model, x, cfg.flip_tta)
            scores = image_scores(logits, target, ignore)
            dice.append(scores.dice.cpu())
            iou.append(scores.iou.cpu())
            dnb.append(scores.dice_no_border.cpu())
            # every loss term is a per-image mean, so batch loss x batch size sums per-image losses
            losses.append(float(criterion(logits, target)) * len(logits))
            if with_masks:
                masks.append(predicted_mask(logits[:, 0]).cpu().numpy())
            if diagnostics:
                diags.append(image_diagnostics(logits, target))
    model.train(was_training)
    cat = lambda parts: torch.cat(parts).numpy().astype(np.float64) if parts else np.zeros(0)  # noqa: E731
    return Prediction(indices=np.asarray(indices), dice=cat(dice), iou=cat(iou), dice_no_border=cat(dnb),
                      loss=sum(losses) / len(indices) if len(indices) else float("nan"),
                      masks=np.concatenate(masks) if with_masks and masks else None,
                      diagnostics=concat_diagnostics(diags) if diagnostics else None)


def _save_train_state(path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer, *,
                      next_epoch: int, step: int) -> None:
    """What `fit` needs to continue a paused run: weights, optimizer moments, position. Atomic."""
    tmp = f"{os.fspath(path)}.tmp"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "next_epoch": next_epoch,
                "step": step}, tmp)
    os.replace(tmp, path)


def _load_train_state(path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer,
                      device: torch.device) -> tuple[int, int]:
    """Load a paused run into a freshly built model and optimizer; returns (next epoch, step)."""
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["next_epoch"]), int(state["step"])


def load_weights(path: str | os.PathLike[str], model: nn.Module, device: torch.device) -> None:
    """Load the weights of a checkpoint (`save_checkpoint`) or of a paused run's state into `model`."""
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["state_dict"] if "state_dict" in state else state["model"])


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, cfg: TrainConfig, **meta: Any) -> None:
    """Weights plus the config that built them, written atomically."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save({"state_dict": model.state_dict(), "params": cfg.params(), **meta}, tmp)
    os.replace(tmp, path)
