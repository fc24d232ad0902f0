"""Which labels are wrong: plant known mask errors in a copy of a dataset, sweep it, and rank the test images.

    .venv/bin/python benchmarks/label_errors.py                        # each shared sample, quick preset (~5 min each)
    .venv/bin/python benchmarks/label_errors.py --data ../shared/data/busi-sample --keep /tmp/le
    .venv/bin/python benchmarks/label_errors.py --data ../shared/data/busi-sample --keep /tmp/le --rescore

For each dataset folder, in a temporary copy: a share (--share, 10%) of the test images get a wrong mask,
by kinds in turn: erased, grown (area about doubled), shrunk (about halved), shifted (by half the mask's
extent, at least a fifth of the image), or another test image's mask; on ultrasound (BUSI's layout) a
two-lesion mask first loses a lesion. Then `python -m jobs.sweep --data-root COPY` at the given budget
(default: the quick preset's), and three rankings of the test images, most suspect first:

* suspect-label score   sweep_images.label_suspicion (core.labels: the models agree, and against the mask);
* median dice           sweep_images.dice_median ascending: "hard for every model" as the dashboard had it;
* cleanlab soft-minimum cleanlab.segmentation.rank.get_label_quality_scores (softmin) on the probabilities
                        of the sweep's selected model (its refit) for the test images, lowest quality first.

Each gets AUROC (planted vs the rest) and precision among its top k (k = the number planted).

One planting is a noisy measure (4 of BUSI's 42 test images: one image moves AUROC by up to 0.25), but test
masks never enter training or model selection, so the one sweep's stored predictions are scored against
--plantings plantings (seeds --seed, --seed + 1, ...; same share, the kinds' turn starting one further along each
time, so that every kind is planted about as often), made in memory at the masks' own
size and brought to the evaluation size as the loader does: every ranking is recomputed from what the store
holds (each complete trial's predicted mask and entropy, core.labels.label_parts; median dice from the masks;
cleanlab from the refit's probabilities, which no mask changes). First the sweep's own planting is replayed and
must reproduce the stored truths, dice and label_suspicion exactly, or the dataset fails loudly. PASS when the
suspect-label score's mean AUROC reaches the dataset's target (0.95 on pets, 0.90 on ultrasound) and beats both
other rankings' mean AUROC. --keep keeps the copy and the store; --rescore scores a kept sweep again, no sweep.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmarks._common import REPO, finish, header, parser, positive_int, verdict

SAMPLES = (REPO.parent / "shared" / "data" / "oxford-pets-sample", REPO.parent / "shared" / "data" / "busi-sample")
TARGETS = {"pets": 0.95, "ultrasound": 0.90}
KINDS = ("erased", "grown", "shrunk", "shifted", "swapped")
SWEEP = "label-errors"
RANKINGS = ("suspect-label score", "median dice", "cleanlab soft-minimum")


# -- planting ------------------------------------------------------------------------------------------

def grow(mask: np.ndarray) -> np.ndarray:
    """The mask widened until its area is about doubled (or the image is full)."""
    if not mask.any():
        return mask.copy()
    outside = ndimage.distance_transform_edt(~mask)
    reach = np.sort(outside[~mask])
    if not len(reach):
        return mask.copy()
    radius = reach[min(int(mask.sum()), len(reach)) - 1]
    return mask | (outside <= radius)


def shrink(mask: np.ndarray) -> np.ndarray:
    """The mask narrowed to about half its area (its inner half by distance to the edge)."""
    inside = ndimage.distance_transform_edt(mask)
    depth = np.sort(inside[mask])[::-1]
    if not len(depth):
        return mask.copy()
    cut = depth[len(depth) // 2]  # distances come in steps: of >= and >, the one nearer half the area
    deep, deeper = inside >= cut, inside > cut
    return min((deep, deeper), key=lambda m: abs(int(m.sum()) - len(depth) / 2))


def shift(mask: np.ndarray) -> np.ndarray:
    """The mask moved right and down by half its extent, at least a fifth of the image (no wrap-around)."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return mask.copy()
    dy = max(int(np.ptp(rows) / 2), h // 5)
    dx = max(int(np.ptp(cols) / 2), w // 5)
    out = np.zeros_like(mask)
    # away from the image's nearer edge, so most of the mask stays inside
    sy = dy if rows.mean() < h / 2 else -dy
    sx = dx if cols.mean() < w / 2 else -dx
    src = mask[max(0, -sy):h - max(0, sy), max(0, -sx):w - max(0, sx)]
    out[max(0, sy):max(0, sy) + src.shape[0], max(0, sx):max(0, sx) + src.shape[1]] = src
    return out


def resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask resized (nearest) to another image's (height, width)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.Resampling.NEAREST)) > 0


def planted_mask(kind: str, mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The wrong mask of one kind; `other` is another test image's mask (for 'swapped')."""
    if kind == "erased":
        return np.zeros_like(mask)
    if kind == "swapped":
        return resized(other, mask.shape)
    return {"grown": grow, "shrunk": shrink, "shifted": shift}[kind](mask)


class Layout:
    """How a dataset folder keeps its masks: read one test image's mask, write a planted one back."""

    kind = "pets"

    def __init__(self, root: Path):
        self.root = root

    def read(self, name: str) -> np.ndarray:
        from core.data.layout import pet_mask, trimap_path

        return pet_mask(np.asarray(Image.open(trimap_path(self.root, name))))

    def write(self, name: str, mask: np.ndarray) -> None:
        from core.data.layout import TRIMAP_BACKGROUND, trimap_path

        trimap = np.where(mask, 1, TRIMAP_BACKGROUND).astype(np.uint8)  # 1 = pet
        Image.fromarray(trimap).save(trimap_path(self.root, name))

    def lesions(self, name: str) -> int:
        return 1


class UltrasoundLayout(Layout):
    """BUSI's release: CLASS/images/NAME.png with CLASS/mask/NAME_mask.png (and NAME_mask_1.png, a second lesion)."""

    kind = "ultrasound"

    def _files(self, name: str) -> list[Path]:
        """The image's mask files, first lesion first; `name` is the loader's CLASS/STEM."""
        folder, _, stem = name.rpartition("/")
        found = sorted((self.root / folder / "mask").glob(f"{glob.escape(stem)}_mask*.png"),
                       key=lambda p: (len(p.name), p.name))
        if not found:
            raise FileNotFoundError(f"no mask file for {name} in {self.root / folder / 'mask'}")
        return found

    def read(self, name: str) -> np.ndarray:
        masks = [np.asarray(Image.open(p).convert("L")) > 0 for p in self._files(name)]
        return np.logical_or.reduce(masks)

    def write(self, name: str, mask: np.ndarray) -> None:
        first, *rest = self._files(name)
        for extra in rest:
            extra.unlink()
        Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(first)

    def lesions(self, name: str) -> int:
        return len(self._files(name))

    def drop_lesion(self, name: str) -> None:
        """Remove the second lesion's mask file: the mask keeps one of its two lesions."""
        self._files(name)[-1].unlink()


def layout_of(root: Path) -> Layout:
    return Layout(root) if (root / "annotations").is_dir() else UltrasoundLayout(root)


class MemoryLayout:
    """A folder's test masks held in memory at their own size: `plant` rewrites these, never the files, so one
    sweep's predictions can be scored against many plantings."""

    def __init__(self, files: Layout, names: list[str]):
        self.kind, self.files = files.kind, files
        self.masks = {n: files.read(n) for n in names}
        self.count = {n: files.lesions(n) for n in names}

    def read(self, name: str) -> np.ndarray:
        return self.masks[name]

    def write(self, name: str, mask: np.ndarray) -> None:
        self.masks[name] = mask

    def lesions(self, name: str) -> int:
        return self.count[name]

    def drop_lesion(self, name: str) -> None:
        kept = self.files._files(name)[:self.count[name] - 1]  # type: ignore[attr-defined]  (ultrasound only)
        self.masks[name] = np.logical_or.reduce([np.asarray(Image.open(p).convert("L")) > 0 for p in kept])
        self.count[name] -= 1


def plant(layout: Layout, test_names: list[str], share: float, seed: int, first_kind: int = 0) -> dict[str, str]:
    """Give `share` of the test images (those with a non-empty mask) a wrong mask, the kinds in turn from
    KINDS[first_kind]; returns name -> kind."""
    rng = np.random.default_rng(seed)
    masks = {name: layout.read(name) for name in test_names}
    candidates = [n for n in test_names if masks[n].any()]
    k = max(1, round(share * len(test_names)))
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:k]]
    two = [n for n in chosen if layout.lesions(n) > 1] + [n for n in candidates if layout.lesions(n) > 1 and n not in chosen]
    kinds: dict[str, str] = {}
    if layout.kind == "ultrasound" and two:  # one two-lesion mask loses a lesion
        if two[0] not in chosen:
            chosen[-1] = two[0]
        kinds[two[0]] = "lesion removed"
        layout.drop_lesion(two[0])
    rest = [n for n in chosen if n not in kinds]
    keep = [n for n in candidates if n not in chosen]
    for j in range(len(rest)):
        kind = KINDS[(first_kind + j) % len(KINDS)]
        # a mask is grown where it can double: the smallest one left (a pet filling the frame has no room)
        name = min(rest, key=lambda n: masks[n].mean()) if kind == "grown" else rest[0]
        rest.remove(name)
        other = masks[keep[int(rng.integers(len(keep)))]] if keep else masks[name][::-1]
        layout.write(name, planted_mask(kind, masks[name], other))
        kinds[name] = kind
    return kinds


# -- scoring -------------------------------------------------------------------------------------------

def auroc(scores: np.ndarray, planted: np.ndarray) -> float:
    """Chance that a planted image scores above a clean one (ties count half); NaN scores rank lowest."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    planted = np.asarray(planted, dtype=bool)
    pos, neg = s[planted], s[~planted]
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def precision_at_k(scores: np.ndarray, planted: np.ndarray, k: int) -> float:
    """Share of planted images among the k highest scores (ties broken by position; NaN lowest)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    return float(np.asarray(planted, dtype=bool)[top].mean()) if k else float("nan")


@dataclass
class Ranking:
    """One ranking's score per test image (higher = more suspect), its AUROC and precision at k."""

    name: str
    scores: np.ndarray
    auroc: float
    precision: float


def evaluate(scores: dict[str, np.ndarray], planted: np.ndarray) -> list[Ranking]:
    k = int(np.count_nonzero(planted))
    return [Ranking(name, s, auroc(s, planted), precision_at_k(s, planted, k)) for name, s in scores.items()]


def judge(title: str, rankings: list, target: float, what: str) -> list[bool]:
    """The verdicts: the first ranking (the suspect-label score) reaches `target` and beats each other one's
    `what` (an unmeasured one, NaN, counts as 0)."""
    ours, others = rankings[0], rankings[1:]
    verdicts = [verdict(f"{title}: suspect-label {what}", ours.auroc, target, unit="")]
    for other in others:
        verdicts.append(verdict(f"{title}: suspect-label {what} - {other.name} {what}",
                                ours.auroc - (other.auroc if other.auroc == other.auroc else 0.0), 1e-9, unit=""))
    return verdicts


def store_scores(db: str, sweep: str, names: list[str]) -> dict[str, np.ndarray]:
    """The suspect-label and median-dice rankings of `names` from a sweep's store (NaN where missing)."""
    from core.store.db import Store
    from core.store.queries import suspects

    store = Store(db, read_only=True)
    try:
        frame = suspects(store, sweep).set_index("name")
    finally:
        store.dispose()
    frame = frame.reindex(names)
    return {"suspect-label score": frame["label_suspicion"].to_numpy(np.float64),
            "median dice": 1.0 - frame["dice_median"].to_numpy(np.float64)}


def refit_probabilities(db: str, sweep: str, root: Path, names: list[str]) -> tuple[np.ndarray | None, str]:
    """The foreground probabilities (N, S, S) of the sweep's selected model (its refit, with its flip-TTA) on the
    test images `names`, and which model that was; None without a kept checkpoint. They do not depend on the
    test masks, so every planting's cleanlab ranking is computed from them."""
    import torch

    from core.models.registry import build_model
    from core.store import queries, selection
    from core.store.db import Store
    from core.training.loop import Normalizer, load_weights

    store = Store(db, read_only=True)
    try:
        best = queries.best_trials(store, sweep)
    finally:
        store.dispose()
    best = best[best["checkpoint"].notna()]
    if best.empty:
        return None, "no checkpoint kept"
    row = max(best.to_dict("records"), key=selection.rank)
    params = row["params"]
    data = load(root, int(row["image_size"]))
    index = {info.name: i for i, info in enumerate(data.infos)}
    idx = np.array([index[n] for n in names])
    device = torch.device("cpu")
    model = build_model(params["arch"], width=float(params["width"]), members=int(params.get("members") or 1))
    load_weights(row["checkpoint"], model, device)
    model.eval()
    normalize = Normalizer(device, False)
    probs = []
    with torch.no_grad():
        for start in range(0, len(idx), 16):
            part = idx[start:start + 16]
            x, _, _ = normalize(torch.from_numpy(data.images[part]), torch.from_numpy(data.trimaps[part]))
            logits = model(x).float()
            if params.get("flip_tta", True):
                logits = (logits + model(x.flip(-1)).float().flip(-1)) / 2
            probs.append(torch.sigmoid(logits[:, 0]).numpy())
    fg = np.concatenate(probs).astype(np.float64)
    return fg, f"{row['arch']} trial {row['number']} ({selection.chosen_as(params)})"


# -- many plantings of one sweep -----------------------------------------------------------------------
# Test masks never enter training or model selection, so one sweep's stored predictions can be scored against
# any planting: with 4 of BUSI's 42 test images planted, one planting's AUROC moves by up to 0.25 per image.

@dataclass
class StoredSweep:
    """What a sweep's store holds about its test images (aligned with `names`): every complete trial's predicted
    mask, dice and entropy, the truth as scored and the stored label_suspicion; the rankings are recomputed from
    these against any truth."""

    names: list[str]
    masks: np.ndarray        # (T, N, S, S) bool, trials in the order they closed
    dice: np.ndarray         # (T, N) image_results.dice (against `truth`)
    entropy: np.ndarray      # (T, N) image_results.entropy, bits (NaN: not measured)
    truth: np.ndarray        # (N, S, S) bool, truth_masks at the trials' size
    suspicion: np.ndarray    # (N,) sweep_images.label_suspicion (NaN: NULL)
    images: list[np.ndarray | None]  # truth_masks.image: each image as scored on the vote grid (None: not stored)


def read_sweep(db: str, sweep: str, names: list[str]) -> StoredSweep:
    """A sweep's complete trials' masks, dice and entropies of `names`, their truths and stored scores."""
    from sqlalchemy import select

    from core.store import schema as st
    from core.store.db import Store
    from core.store.engine import connect
    from core.store.mask_png import decode_image, decode_mask

    store = Store(db, read_only=True)
    try:
        with connect(store) as conn:
            t, i, r, m = st.trials, st.images, st.image_results, st.masks
            ids = dict(conn.execute(select(i.c.name, i.c.id).join_from(st.sweep_images, i, i.c.id == st.sweep_images.c.image_id)
                                    .where(st.sweep_images.c.sweep == sweep)).all())
            missing = [n for n in names if n not in ids]
            if missing:
                raise RuntimeError(f"sweep {sweep!r} has no summaries of {len(missing)} test images, e.g. {missing[0]}")
            at = {ids[n]: k for k, n in enumerate(names)}
            done = conn.execute(select(t.c.id, t.c.image_size).where(t.c.sweep == sweep, t.c.state == "complete")
                                .order_by(t.c.finished_at, t.c.id)).all()
            if not done:
                raise RuntimeError(f"sweep {sweep!r} has no complete trial")
            size = int(done[-1][1])
            n, trial = len(names), {int(tid): k for k, (tid, _) in enumerate(done)}
            masks = np.zeros((len(done), n, size, size), bool)
            dice, entropy = np.full((len(done), n), np.nan), np.full((len(done), n), np.nan)
            for tid, iid, png in conn.execute(select(m.c.trial_id, m.c.image_id, m.c.png).where(m.c.trial_id.in_(trial))):
                if int(iid) in at:
                    masks[trial[int(tid)], at[int(iid)]] = decode_mask(bytes(png))
            for tid, iid, d, e in conn.execute(select(r.c.trial_id, r.c.image_id, r.c.dice, r.c.entropy)
                                               .where(r.c.trial_id.in_(trial))):
                if int(iid) in at:
                    dice[trial[int(tid)], at[int(iid)]] = d
                    entropy[trial[int(tid)], at[int(iid)]] = np.nan if e is None else e
            truth = np.zeros((n, size, size), bool)
            images: list[np.ndarray | None] = [None] * n
            tm = st.truth_masks
            image_column = [tm.c.image] if st.holds(st.stored_version(conn), tm.name, "image") else []
            for iid, png, *image in conn.execute(select(tm.c.image_id, tm.c.png, *image_column)
                                                 .where(tm.c.image_size == size, tm.c.image_id.in_(at))):
                truth[at[int(iid)]] = decode_mask(bytes(png))
                images[at[int(iid)]] = decode_image(image[0]) if image and image[0] is not None else None
            s = st.sweep_images
            stored = dict(conn.execute(select(s.c.image_id, s.c.label_suspicion).where(s.c.sweep == sweep)).all())
    finally:
        store.dispose()
    suspicion = np.array([np.nan if stored.get(ids[name]) is None else stored[ids[name]] for name in names])
    return StoredSweep(list(names), masks, dice, entropy, truth, suspicion, images)


def mask_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of masks (..., S, S) against truths broadcast to them, as the trials scored them (core.metrics)."""
    import torch

    from core.metrics import mask_scores

    pred, truth = np.broadcast_arrays(pred, truth)
    flat = (-1, *pred.shape[-2:])
    dice = mask_scores(torch.from_numpy(pred.reshape(flat)), torch.from_numpy(truth.reshape(flat))).dice
    return dice.numpy().astype(np.float64).reshape(pred.shape[:-2])


def store_rankings(sweep: StoredSweep, truth: np.ndarray) -> dict[str, np.ndarray]:
    """The suspect-label score and median dice of every image against `truth`, recomputed from the stored trial
    masks, entropies and images exactly as the store computes them at a close (core.labels.label_parts)."""
    from core.labels import label_parts, on_grid

    dice = np.median(mask_dice(sweep.masks, truth[None]), axis=0)
    votes = sweep.masks.sum(axis=0, dtype=np.int64)
    # the store keeps votes, truth and image on the vote grid (every s-th pixel above VOTE_GRID a side)
    parts = label_parts([on_grid(v) for v in votes], len(sweep.masks), [on_grid(t) for t in truth],
                        entropy=np.median(sweep.entropy, axis=0), dice_median=dice, images=sweep.images)
    return {"suspect-label score": parts.label_suspicion, "median dice": 1.0 - dice}


def check_reproduces(sweep: StoredSweep, truth: np.ndarray) -> None:
    """Fail loudly unless the real planting's truths, dice and label_suspicion recompute to what the store holds:
    otherwise the other plantings' figures would measure another score than the store's."""
    if not np.array_equal(truth, sweep.truth):
        wrong = [sweep.names[k] for k in np.flatnonzero((truth != sweep.truth).any(axis=(1, 2)))]
        raise RuntimeError(f"the planting replayed in memory differs from the stored truth of {len(wrong)} images, "
                           f"e.g. {wrong[0]}")
    dice = mask_dice(sweep.masks, truth[None])
    if not np.allclose(dice, sweep.dice, atol=1e-5):
        raise RuntimeError(f"recomputed dice differs from image_results.dice by up to {np.nanmax(abs(dice - sweep.dice)):.3g}")
    again = store_rankings(sweep, truth)["suspect-label score"]
    if not np.allclose(again, sweep.suspicion, rtol=1e-6, atol=1e-9, equal_nan=True):
        worst = int(np.nanargmax(np.abs(again - sweep.suspicion)))
        raise RuntimeError(f"recomputed label_suspicion of {sweep.names[worst]} is {again[worst]:.6g}, "
                           f"the store holds {sweep.suspicion[worst]:.6g}")


def cleanlab_ranking(fg: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1 - cleanlab's soft-minimum label quality of each image: fg (N, S, S) foreground probabilities."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    quality, _ = get_label_quality_scores(truth.astype(np.int64), np.stack([1 - fg, fg], axis=1), verbose=False)
    return 1.0 - np.asarray(quality, np.float64)


def as_scored(mask: np.ndarray, image_wh: tuple[int, int], size: int) -> np.ndarray:
    """A mask at its file's size as the sweep scores it (core.data.dataset.trimap_as_scored, then pet_mask)."""
    from core.data.dataset import trimap_as_scored
    from core.data.layout import TRIMAP_BACKGROUND, TRIMAP_PET, pet_mask

    return pet_mask(trimap_as_scored(np.where(mask, TRIMAP_PET, TRIMAP_BACKGROUND), image_wh, size))


def planted_truths(files: Layout, names: list[str], wh: list[tuple[int, int]], clean: np.ndarray, size: int,
                   share: float, seed: int, first_kind: int = 0) -> tuple[np.ndarray, dict[str, str]]:
    """The test truths at evaluation size (N, S, S) after planting in memory with `seed`, kinds from
    KINDS[first_kind] (the files untouched), and name -> kind of the planted ones; `clean` are the unplanted
    truths."""
    memory = MemoryLayout(files, names)
    kinds = plant(memory, names, share, seed, first_kind)
    truth = clean.astype(bool).copy()
    for k, name in enumerate(names):
        if name in kinds:
            truth[k] = as_scored(memory.read(name), wh[k], size)
    return truth, kinds


@dataclass
class Spread:
    """One ranking over many plantings: mean AUROC with its 5th-95th percentile, mean precision at k."""

    name: str
    aurocs: np.ndarray
    precisions: np.ndarray

    @property
    def auroc(self) -> float:
        return float(np.mean(self.aurocs))

    @property
    def interval(self) -> tuple[float, float]:
        return float(np.percentile(self.aurocs, 5)), float(np.percentile(self.aurocs, 95))

    @property
    def precision(self) -> float:
        return float(np.mean(self.precisions))


def over_plantings(rank: Callable[[np.ndarray], dict[str, np.ndarray]], truths: list[tuple[np.ndarray, np.ndarray]]
                   ) -> list[Spread]:
    """Each ranking's AUROC and precision at k (k = the number planted) over plantings: `truths` holds each
    planting's (truth, planted) and `rank` maps a truth to the rankings' scores."""
    found: dict[str, list[tuple[float, float]]] = {}
    for truth, planted in truths:
        for r in evaluate(rank(truth), planted):
            found.setdefault(r.name, []).append((r.auroc, r.precision))
    return [Spread(name, np.array([a for a, _ in v]), np.array([p for _, p in v])) for name, v in found.items()]


def report_plantings(title: str, spreads: list[Spread], k: int, target: float,
                     show: Callable[[str], None] = print) -> list[bool]:
    """The table over plantings and the verdicts, on the mean AUROC."""
    show(f"   over {len(spreads[0].aurocs)} plantings of this sweep's test masks (same share, every kind in turn):")
    show(f"   {'ranking':<24}{'mean AUROC':>11}{'90% of plantings':>19}{f'mean precision@{k}':>20}")
    for r in spreads:
        low, high = r.interval
        show(f"   {r.name:<24}{r.auroc:>11.3f}{f'{low:.3f} .. {high:.3f}':>19}{r.precision:>20.3f}")
    return judge(title, spreads, target, "mean AUROC")


# -- one dataset ---------------------------------------------------------------------------------------

def load(root: Path, size: int):
    """The dataset as a sweep of its folder reads it (jobs.sweep --data-root, defaults)."""
    from core.data.sources import load_data

    return load_data("auto", root, size, log=lambda _: None)


def test_names_of(root: Path, size: int) -> list[str]:
    data = load(root, size)
    return [data.infos[i].name for i in data.indices("test")]


def run_sweep(copy: Path, db: str, extra: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "jobs.sweep", "--data-root", str(copy), "--db", db, "--name", SWEEP, "--no-progress",
           *extra]
    started = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"the sweep failed ({run.returncode}): {(run.stderr or run.stdout).strip()[-1500:]}")
    return time.perf_counter() - started, run.stdout


def table(rankings: list[Ranking], names: list[str], planted: dict[str, str], show: Callable[[str], None] = print) -> None:
    """One planting's AUROC and precision at k per ranking, and the planted images' ranks."""
    k = len(planted)
    show(f"   {'ranking':<24}{'AUROC':>8}{f'precision@{k}':>15}")
    for r in rankings:
        show(f"   {r.name:<24}{r.auroc:>8.3f}{r.precision:>15.3f}")
    show(f"   planted (rank of {len(names)}, 1 = most suspect): " + "; ".join(
        f"{name} {kind} " + "/".join(_rank(r.scores, names.index(name)) for r in rankings)
        for name, kind in planted.items()))


def report(title: str, rankings: list[Ranking], names: list[str], planted: dict[str, str], target: float,
           show: Callable[[str], None] = print) -> list[bool]:
    """The table, the planted images' ranks, and the verdicts of one planting."""
    table(rankings, names, planted, show)
    return judge(title, rankings, target, "AUROC")


def _rank(scores: np.ndarray, position: int) -> str:
    """1 + how many images score above this one; '-' where it has no score."""
    if np.isnan(scores[position]):
        return "-"
    return str(int(np.count_nonzero(np.nan_to_num(scores, nan=-np.inf) > scores[position])) + 1)


def run_dataset(root: Path, args, keep: Path | None) -> list[bool]:
    """Plant, sweep (or, with --rescore, read the sweep kept in `keep`), check the store's score recomputes, and
    judge the rankings over --plantings plantings of the sweep's test masks."""
    work = keep or Path(tempfile.mkdtemp(prefix="label-errors-"))
    copy, db_file = work / root.name, work / (root.name + ".db")
    db = f"sqlite:///{db_file}"
    try:
        os.environ["SEGSWEEP_CACHE"] = str(work / "cache")  # the copy's prepared arrays go with it
        data = load(root, args.image_size)
        test = data.indices("test")
        names = [data.infos[i].name for i in test]  # the split depends on names only: the original's
        files = layout_of(root)  # the original's masks: read, never written
        wh = [(data.infos[i].width, data.infos[i].height) for i in test]
        if args.rescore:
            if not db_file.is_file():
                raise RuntimeError(f"no kept sweep at {db_file}: run once with --keep {work} first")
            planted = planted_truths(files, names, wh, data.masks[test], args.image_size, args.share, args.seed)[1]
            wall = "kept sweep re-scored"
        else:
            if copy.exists():
                shutil.rmtree(copy)
            shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.cache*", ".segsweep*"))
            planted = plant(layout_of(copy), names, args.share, args.seed)
            db_file.unlink(missing_ok=True)
        print(f"\n{root.name} ({files.kind}): {len(names)} test images, {len(planted)} planted "
              f"({', '.join(sorted(set(planted.values())))}); copy in {copy}", flush=True)
        if not args.rescore:
            extra = ["--image-size", str(args.image_size), *(["--timeout", f"{args.timeout:g}"] if args.timeout else []),
                     *args.sweep_args.split()]
            wall = f"{run_sweep(copy, db, extra)[0]:.0f} s wall"
        sweep = read_sweep(db, SWEEP, names)
        truths = []
        for seed in range(args.seed, args.seed + args.plantings):
            # each planting starts the kinds one further along: with few planted (BUSI's 4, one a removed lesion)
            # the kinds late in KINDS would otherwise never be planted; the sweep's own planting starts at the first
            truth, kinds = planted_truths(files, names, wh, data.masks[test], args.image_size, args.share, seed,
                                          first_kind=(seed - args.seed) % len(KINDS))
            if seed == args.seed:
                if kinds != planted:
                    raise RuntimeError(f"planting again in memory chose {kinds}, the sweep's copy {planted}")
                check_reproduces(sweep, truth)
            truths.append((truth, np.array([n in kinds for n in names])))
        fg, model = refit_probabilities(db, SWEEP, root, names)

        def rank(truth: np.ndarray) -> dict[str, np.ndarray]:
            scores = store_rankings(sweep, truth)
            scores["cleanlab soft-minimum"] = np.full(len(names), np.nan) if fg is None else cleanlab_ranking(fg, truth)
            return scores

        print(f"   sweep: {len(sweep.masks)} complete trials voting, {wall}; cleanlab on {model}; the store's "
              f"label_suspicion recomputed from its masks, entropies and images: identical")
        print(f"   the sweep's own planting (seed {args.seed}):")
        table(evaluate(rank(truths[0][0]), truths[0][1]), names, planted)
        spreads = over_plantings(rank, truths)
        return report_plantings(root.name, spreads, len(planted), TARGETS[files.kind])
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _complete_trials(db: str) -> int:
    from core.store.db import Store
    from core.store.schema import trials

    store = Store(db, read_only=True)
    try:
        return store.count(trials, sweep=SWEEP, state="complete")
    finally:
        store.dispose()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "label_errors.py")
    p.add_argument("--data", type=Path, action="append", default=None,
                   help="a dataset folder (repeatable; default: each shared sample)")
    p.add_argument("--share", type=float, default=0.10, help="share of the test images given a wrong mask")
    p.add_argument("--seed", type=int, default=0, help="which images are planted, and how")
    p.add_argument("--image-size", type=int, default=64, help="the sweep's evaluation size (the quick preset's)")
    p.add_argument("--timeout", type=float, default=None, help="the sweep's training seconds (default: the preset's)")
    p.add_argument("--sweep-args", default="", help="more flags for jobs.sweep")
    p.add_argument("--keep", type=Path, default=None, help="keep the copies and stores in this folder")
    p.add_argument("--plantings", type=positive_int, default=50,
                   help="plantings of the test masks the sweep's predictions are scored against (seeds from --seed)")
    p.add_argument("--rescore", action="store_true",
                   help="no new sweep: score the one kept in --keep (planted with the same --seed and --share)")
    args = p.parse_args(argv)
    if args.rescore and args.keep is None:
        p.error("--rescore needs --keep DIR, the folder of a kept sweep")
    roots = [r.expanduser().resolve() for r in (args.data or SAMPLES)]
    header("label errors: planted wrong masks, ranked by three scores", args)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    verdicts: list[bool] = []
    for root in roots:
        if not root.is_dir():
            print(f"\n{root.name}: skipped, no folder at {root}")
            continue
        try:
            verdicts += run_dataset(root, args, args.keep)
        except Exception as exc:  # one dataset's failure (e.g. a layout the loader cannot read yet) is reported
            print(f"\n{root.name}: not measured: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
            verdicts.append(False)
    return finish(verdicts, args.report_only)


if __name__ == "__main__":
    sys.exit(main())
