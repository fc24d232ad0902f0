"""A small, believable results store without training anything: for tests, screenshots and demos.

It records a dataset the way the jobs do (`core.data.dataset.prepare_dataset` + `Store` write
methods), then invents trials whose per-image predictions are the ground truth perturbed
(shifted, partly missed, with a spurious blob), more so for small and dark objects and for
trials with worse hyperparameters. Scores are measured on those masks, so every dice in the
store matches the mask stored beside it. One Optuna study per architecture, with the same
trials, lives in the same database, as a real sweep leaves it.

`build_folder_sweep` adds a second sweep over the user's own kind of data: the same images written
as a paired-folders dataset with two groups (site-a/, site-b/; names with spaces and parentheses,
non-square files), some of whose masks are wrong on purpose (erased, shifted, another image's). The
store records the truth as scored, so the suspect-label score (core.labels) ranks those first.

    python -m dashboard.demo_store --db demo.db --data /path/to/oxford-iiit-pet-like-folder --folder /tmp/folder-demo
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from core.data.augment import AugmentConfig
from core.data.dataset import PreparedDataset, prepare_dataset
from core.metrics import mask_diagnostics, mask_scores
from PIL import Image

from core.store.db import ImageResults, Store, normalize_url
from core.store.optuna_storage import optuna_storage
from core.training.loop import TrainConfig

# One state per trial number, per architecture; the last arch's last trial is left running.
STATES = ("complete", "complete", "pruned", "complete", "failed", "complete")
SEARCH = {  # Optuna name (as jobs.search_space names it) -> (low, high, log): a few of the sweep's parameters
    "lr": (1e-4, 3e-3, True),
    "dice_weight": (0.0, 1.0, False),
    "hflip": (0.0, 0.5, False),
    "rotate": (0.0, 30.0, False),
    "brightness": (0.0, 0.4, False),
}
ARCH_QUALITY = {"unet": 0.0, "resnet34_unet": 0.06}


@dataclass
class DemoStore:
    url: str
    sweep: str
    archs: tuple[str, ...]
    dataset: str
    root: Path
    trial_ids: dict[str, list[int]] = field(default_factory=dict)  # arch -> ids in number order
    states: dict[int, str] = field(default_factory=dict)           # trial id -> state
    image_ids: dict[str, int] = field(default_factory=dict)        # image name -> id
    test_images: list[str] = field(default_factory=list)


def _draw(rng: np.random.Generator, arch: str, number: int, image_size: int) -> tuple[dict[str, float], TrainConfig]:
    """One trial's Optuna parameters and the TrainConfig they make, as the sweep builds it: the store
    records `TrainConfig.params()`, so the demo's keys are the real jobs' keys."""
    drawn = {}
    for name, (lo, hi, log) in SEARCH.items():
        drawn[name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))) if log else rng.uniform(lo, hi))
    drawn["rotate"] = float(round(drawn["rotate"]))
    augment = AugmentConfig(hflip=drawn["hflip"], vflip=0.0, rotate=drawn["rotate"], brightness=drawn["brightness"],
                            contrast=0.2)
    cfg = TrainConfig(arch=arch, width=0.25, image_size=image_size, epochs=8, batch_size=16, lr=drawn["lr"],
                      bce_weight=1 - drawn["dice_weight"], dice_weight=drawn["dice_weight"], augment=augment,
                      warmup_epochs=0, amp="off", channels_last=False, compile=False, seed=number)
    return drawn, cfg


def _quality(arch: str, p: dict[str, Any]) -> float:
    """How good a trial is overall (0..1): best near lr 1e-3, a little help from augmentation."""
    lr_penalty = 0.08 * abs(math.log10(p["lr"]) + 3.0)
    return 0.8 + ARCH_QUALITY.get(arch, 0.03) - lr_penalty + 0.05 * p["aug_hflip"] + 0.04 * p["aug_brightness"]


def _predict(rng: np.random.Generator, truth: np.ndarray, error: float) -> np.ndarray:
    """The ground truth damaged by `error` (0 perfect .. 1 bad): shifted, holes, a false blob."""
    s = truth.shape[0]
    shift = rng.integers(-1, 2, size=2) * int(round(error * s * 0.2))
    pred = np.roll(truth, tuple(int(v) for v in shift), axis=(0, 1))
    yy, xx = np.mgrid[0:s, 0:s]
    if error > 0.1:  # part of the object missed
        cy, cx = rng.uniform(0, s, 2)
        pred &= (yy - cy) ** 2 + (xx - cx) ** 2 > (error * s * 0.45) ** 2
    if error > 0.25:  # something else taken for the object
        cy, cx = rng.uniform(0, s, 2)
        pred |= (yy - cy) ** 2 + (xx - cx) ** 2 < (error * s * 0.3) ** 2
    return pred


def _curves(rng: np.random.Generator, quality: float, n: int) -> list[dict[str, float]]:
    rows = []
    for e in range(n):
        progress = 1 - math.exp(-(e + 1) / 2.5)
        train_dice = min(0.98, 0.35 + (quality + 0.06 - 0.35) * progress + rng.normal(0, 0.01))
        val_dice = min(0.97, 0.3 + (quality - 0.3) * progress + rng.normal(0, 0.015))
        rows.append(dict(train_loss=1.0 - 0.85 * train_dice + rng.normal(0, 0.01),
                         val_loss=1.05 - 0.85 * val_dice + rng.normal(0, 0.015), train_dice=train_dice,
                         val_dice=val_dice, lr=1e-3, seconds=float(rng.uniform(2, 4)),
                         images_per_s=float(rng.uniform(80, 120))))
    return rows


def _record_trials(store: Store, demo: DemoStore, sweep: str, archs: tuple[str, ...], dataset: str, image_size: int,
                   rng: np.random.Generator, running: bool, image_ids: list[int], real: np.ndarray, scored: np.ndarray,
                   ignore: np.ndarray | None, hardness: np.ndarray, ease: np.ndarray | None = None) -> None:
    """Every trial of a sweep, per architecture STATES (the last one running when `running`), with its Optuna
    study: predictions damage the `real` masks, scores measure them against the masks as `scored` (the same
    unless a label is wrong on purpose) and the ignore band where there is one; `ease` scales each image's damage down (1 = as hard as the rest)."""
    n = len(image_ids)
    distributions = {name: optuna.distributions.FloatDistribution(lo, hi, log=log)
                     for name, (lo, hi, log) in SEARCH.items()}
    storage = optuna_storage(store.url, engine=store.engine)
    for a, arch in enumerate(archs):
        study = optuna.create_study(storage=storage, study_name=f"{sweep}/{arch}", direction="maximize",
                                    load_if_exists=True)
        demo.trial_ids[arch] = []
        for number, state in enumerate(STATES):
            if running and a == len(archs) - 1 and number == len(STATES) - 1:
                state = "running"
            drawn, cfg = _draw(rng, arch, number, image_size)
            p = cfg.params()
            quality = _quality(arch, p)
            tid = store.start_trial(sweep=sweep, study=f"{sweep}/{arch}", arch=arch, number=number, params=p,
                                    device="cpu", dataset=dataset, image_size=image_size)
            demo.trial_ids[arch].append(tid)
            demo.states[tid] = state
            n_epochs = {"complete": 8, "pruned": 3, "failed": 2, "running": 4}[state]
            curve = _curves(rng, quality, n_epochs)
            for e, row in enumerate(curve):
                store.record_epoch(tid, e, **row)
            best_val = max(r["val_dice"] for r in curve)
            if state == "complete":
                # small objects suffer more with little Dice in the loss: the tail, not the mean, moves
                error = np.clip((1 - quality) * (0.8 + 4.5 * hardness ** 1.5) * (1.25 - 0.5 * p["dice_weight"])
                                + rng.normal(0, 0.04, n), 0, 1) * (1.0 if ease is None else ease)
                preds = [_predict(rng, t, float(err)) for t, err in zip(real, error)]
                scores = mask_scores(torch.from_numpy(np.stack(preds)), torch.from_numpy(scored),
                                     None if ignore is None else torch.from_numpy(ignore))
                # diagnostics measured on the masks; the entropy (no probabilities here) is invented, higher
                # where the prediction is worse, as a model that knows when it fails would have it: worse against
                # the real mask (a wrong label does not make the model unsure)
                diag = mask_diagnostics(np.stack(preds), scored)
                noise = np.random.default_rng(tid).normal(0, 0.05, n)  # own stream: other draws unchanged
                dice = scores.dice.double().numpy()
                own = dice if real is scored else mask_scores(torch.from_numpy(np.stack(preds)),
                                                              torch.from_numpy(real)).dice.double().numpy()
                diag.entropy = np.clip(0.05 + 0.6 * (1 - own) + noise, 0.01, 1.0)
                store.finish_trial(tid, state="complete", val_dice=best_val, results=ImageResults(
                    np.array(image_ids), dice, scores.iou.double().numpy(),
                    scores.dice_no_border.double().numpy(), masks=preds, diagnostics=diag))
            elif state == "pruned":
                store.finish_trial(tid, state="pruned", val_dice=best_val)
            elif state == "failed":
                store.finish_trial(tid, state="failed", val_dice=best_val,
                                   error="FloatingPointError: loss is nan at epoch 2 (lr too high?)")
            optuna_state = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                            "failed": optuna.trial.TrialState.FAIL, "running": optuna.trial.TrialState.RUNNING}[state]
            study.add_trial(optuna.trial.create_trial(
                params=drawn, distributions=distributions,
                value=best_val if state == "complete" else None, state=optuna_state,
                intermediate_values={e: r["val_dice"] for e, r in enumerate(curve)}))


def _hardness(rng: np.random.Generator, fg: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Per image, how hard it is for every model: small and dark subjects, plus chance."""
    return 0.5 * np.clip(0.25 - fg, 0, None) / 0.25 + 0.3 * np.clip(0.35 - dark, 0, None) / 0.35 \
        + rng.uniform(0, 0.35, len(fg))


def build_demo_store(db: str, data_root: str | Path, *, sweep: str = "demo-64px",
                     archs: tuple[str, ...] = ("unet", "resnet34_unet"), image_size: int = 64, seed: int = 0,
                     running: bool = True, data: PreparedDataset | None = None) -> DemoStore:
    """Write a demo sweep into `db` (URL or path) over the dataset at `data_root`; returns what it wrote."""
    rng = np.random.default_rng(seed)
    data = data or prepare_dataset(data_root, image_size, log=lambda _msg: None)
    store = Store(db)
    ids = store.register_dataset(data.name, data.source, data.root, data.infos)
    test = data.indices("test")
    demo = DemoStore(url=store.url, sweep=sweep, archs=tuple(archs), dataset=data.name, root=data.root,
                     image_ids=ids, test_images=[data.infos[i].name for i in test])
    truths = data.masks[test].astype(bool)
    store.record_truths([ids[n] for n in demo.test_images], image_size, truths, data.images[test])  # as a sweep does
    ignore = None if data.ignore is None else data.ignore[test]
    fg = np.array([data.infos[i].fg_fraction for i in test])
    dark = np.array([data.infos[i].brightness for i in test])
    hardness = _hardness(rng, fg, dark)  # per image, shared by every model
    _record_trials(store, demo, sweep, tuple(archs), data.name, image_size, rng, running,
                   [ids[n] for n in demo.test_images], truths, truths, ignore, hardness)
    store.dispose()
    return demo


@dataclass
class FolderInfo:
    """An image of the demo's own-folder dataset, as the folder loaders record it (group and path)."""

    name: str
    split: str
    width: int
    height: int
    brightness: float
    fg_fraction: float
    group: str
    path: str
    breed: str = ""    # the user's own data has no breeds or species
    species: str = ""


@dataclass
class FolderDemo(DemoStore):
    groups: dict[str, str] = field(default_factory=dict)   # image name -> group
    planted: dict[str, str] = field(default_factory=dict)  # image name -> how its mask was made wrong
    hard: list[str] = field(default_factory=list)           # test images every model finds hard (right masks)


GROUPS = ("site-a", "site-b")
PLANTED = ("erased", "shifted", "swapped")  # wrong masks, on the first test images of the folder dataset
FILE_SIZE = (96, 64)  # width, height of the written files: not square, as the user's often are


def _wrong(kind: str, mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """A mask made wrong as a careless labeller would: erased, shifted by a quarter, or another image's."""
    if kind == "erased":
        return np.zeros_like(mask)
    if kind == "shifted":
        return np.roll(mask, (mask.shape[0] // 4, mask.shape[1] // 4), axis=(0, 1))
    return other.copy()


def build_folder_sweep(db: str, out: str | Path, data: PreparedDataset, *, sweep: str = "demo-folder",
                       archs: tuple[str, ...] = ("unet", "resnet34_unet"), image_size: int = 64,
                       seed: int = 1) -> FolderDemo:
    """Write `data`'s images as the user's own paired-folders dataset under `out` (GROUPS/images, GROUPS/masks;
    a few test masks wrong on purpose, PLANTED) and a complete sweep over it into `db`."""
    rng = np.random.default_rng(seed)
    out = Path(out).resolve()
    test = set(data.indices("test").tolist())
    infos, real, names = [], [], []
    counters = {g: 0 for g in GROUPS}
    for k, info in enumerate(data.infos):
        group = GROUPS[k % len(GROUPS)]
        counters[group] += 1
        name = f"{group} ({counters[group]})"
        path = f"{group}/images/{name}.png"
        infos.append(FolderInfo(name=name, split="test" if k in test else "train", width=FILE_SIZE[0],
                                height=FILE_SIZE[1], brightness=info.brightness, fg_fraction=info.fg_fraction,
                                group=group, path=path))
        names.append(name)
        real.append(data.masks[k].astype(bool))
    test_pos = sorted(test)
    planted = {names[k]: kind for k, kind in zip(test_pos, PLANTED)}
    scored = {}
    for j, k in enumerate(test_pos):
        kind = planted.get(names[k])
        scored[k] = _wrong(kind, real[k], real[test_pos[(j + 5) % len(test_pos)]]) if kind else real[k]
    for k, info in enumerate(infos):  # the files as the user has them: the wrong masks are what they labelled
        (out / info.group / "images").mkdir(parents=True, exist_ok=True)
        (out / info.group / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[k]).resize(FILE_SIZE, Image.Resampling.BILINEAR).save(out / info.path)
        mask = scored.get(k, real[k]).astype(np.uint8) * 255
        Image.fromarray(mask).resize(FILE_SIZE, Image.Resampling.NEAREST).save(
            out / info.group / "masks" / f"{info.name}_mask.png")
    store = Store(db)
    dataset = f"folder/{out.name}"
    ids = store.register_dataset(dataset, "folder", out, infos, layout="paired-folders")
    test_names = [names[k] for k in test_pos]
    demo = FolderDemo(url=store.url, sweep=sweep, archs=tuple(archs), dataset=dataset, root=out, image_ids=ids,
                      test_images=test_names, groups={i.name: i.group for i in infos}, planted=planted)
    truths = np.stack([scored[k] for k in test_pos])
    store.record_truths([ids[n] for n in test_names], image_size, truths, data.images[test_pos])  # as a sweep does
    fg = np.array([infos[k].fg_fraction for k in test_pos])
    dark = np.array([infos[k].brightness for k in test_pos])
    hardness = _hardness(rng, fg, dark)
    wrong = [j for j, n in enumerate(test_names) if n in planted]
    hardness[wrong] = 0.0  # easy images, only their masks are wrong: every model gets them right
    ease = np.ones(len(test_names))
    ease[wrong] = 0.3
    hard = [j for j in np.argsort(-hardness).tolist() if test_names[j] not in planted][:2]
    hardness[hard] += 0.6  # every model errs here, each its own way: hard, not mislabelled
    demo.hard = [test_names[j] for j in hard]
    _record_trials(store, demo, sweep, tuple(archs), dataset, image_size, rng, False,
                   [ids[n] for n in test_names], np.stack([real[k] for k in test_pos]), truths, None, hardness, ease)
    store.dispose()
    return demo


def build_demo_sweeps(db: str, data_root: str | Path, folder: str | Path, *, sweep: str = "demo-64px",
                      image_size: int = 64) -> tuple[DemoStore, FolderDemo]:
    """Both demo sweeps in `db`: the user-folder one written under `folder` first, then the Oxford-IIIT Pet layout
    one over `data_root`, which so stays the most recent (the one the dashboard opens)."""
    data = prepare_dataset(data_root, image_size, log=lambda _msg: None)
    own = build_folder_sweep(db, folder, data, image_size=image_size)
    return build_demo_store(db, data_root, sweep=sweep, image_size=image_size, data=data), own


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dashboard.demo_store", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="SQLAlchemy URL or SQLite path to write the demo sweep into")
    p.add_argument("--data", required=True, help="dataset folder in the Oxford-IIIT Pet layout")
    p.add_argument("--sweep", default="demo-64px")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--folder", type=Path, default=None,
                   help="also write the images as the user's own paired-folders dataset here (a few masks wrong on "
                        "purpose) and a second sweep over it, demo-folder")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.folder is not None:
        demo, folder = build_demo_sweeps(normalize_url(args.db), args.data, args.folder, sweep=args.sweep,
                                         image_size=args.image_size)
        print(f"demo sweep {folder.sweep!r} on {folder.dataset} ({len(folder.test_images)} test images, wrong masks: "
              f"{', '.join(folder.planted)}) -> {folder.url}")
    else:
        demo = build_demo_store(normalize_url(args.db), args.data, sweep=args.sweep, image_size=args.image_size)
    print(f"demo sweep {demo.sweep!r} on {demo.dataset} ({len(demo.test_images)} test images) -> {demo.url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
