"""Which labels are wrong: plant known mask errors in a copy of a dataset, sweep it, and rank the test images.

    .venv/bin/python benchmarks/label_errors.py                        # each shared sample, quick preset (~5 min each)
    .venv/bin/python benchmarks/label_errors.py --data ../shared/data/oxford-pets-sample --keep /tmp/le

For each dataset folder, in a temporary copy: a share (--share, 10%) of the test images get a wrong mask,
by kinds in turn: erased, grown (area about doubled), shrunk (about halved), shifted (by half the mask's
extent, at least a fifth of the image), or another test image's mask; on ultrasound (BUSI's layout) a
two-lesion mask first loses a lesion. Then `python -m jobs.sweep --data-root COPY` at the given budget
(default: the quick preset's), and three rankings of the test images, most suspect first:

* suspect-label score   sweep_images.label_suspicion (core.labels: the models agree, and against the mask);
* median dice           sweep_images.dice_median ascending: "hard for every model" as the dashboard had it;
* cleanlab soft-minimum cleanlab.segmentation.rank.get_label_quality_scores (softmin) on the probabilities
                        of the sweep's selected model (its refit) for the test images, lowest quality first.

Each gets AUROC (planted vs the rest) and precision among its top k (k = the number planted). PASS when the
suspect-label score reaches the dataset's AUROC target (0.95 on pets, 0.90 on ultrasound) and beats both
other rankings' AUROC.
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

from benchmarks._common import REPO, finish, header, parser, verdict

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


def plant(layout: Layout, test_names: list[str], share: float, seed: int) -> dict[str, str]:
    """Give `share` of the test images (those with a non-empty mask) a wrong mask; returns name -> kind."""
    rng = np.random.default_rng(seed)
    masks = {name: layout.read(name) for name in test_names}
    candidates = [n for n in test_names if masks[n].any()]
    k = max(1, round(share * len(test_names)))
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:k]]
    two = [n for n in chosen if layout.lesions(n) > 1] + [n for n in candidates if layout.lesions(n) > 1 and n not in chosen]
    kinds: dict[str, str] = {}
    if isinstance(layout, UltrasoundLayout) and two:  # one two-lesion mask loses a lesion
        if two[0] not in chosen:
            chosen[-1] = two[0]
        kinds[two[0]] = "lesion removed"
        layout.drop_lesion(two[0])
    rest = [n for n in chosen if n not in kinds]
    keep = [n for n in candidates if n not in chosen]
    for j in range(len(rest)):
        kind = KINDS[j % len(KINDS)]
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


def store_scores(db: str, sweep: str, names: list[str]) -> dict[str, np.ndarray]:
    """The suspect-label and median-dice rankings of `names` from a sweep's store (NaN where missing)."""
    from core.store.db import Store
    from core.store.suspicion import suspects

    store = Store(db, read_only=True)
    try:
        frame = suspects(store, sweep).set_index("name")
    finally:
        store.dispose()
    frame = frame.reindex(names)
    return {"suspect-label score": frame["label_suspicion"].to_numpy(np.float64),
            "median dice": 1.0 - frame["dice_median"].to_numpy(np.float64)}


def cleanlab_scores(db: str, sweep: str, root: Path, names: list[str]) -> tuple[np.ndarray, str]:
    """1 - cleanlab's soft-minimum label quality of each test image under the sweep's selected model, and which
    model that was."""
    import torch
    from cleanlab.segmentation.rank import get_label_quality_scores

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
        return np.full(len(names), np.nan), "no checkpoint kept"
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
    labels = data.masks[idx].astype(np.int64)
    quality, _ = get_label_quality_scores(labels, np.stack([1 - fg, fg], axis=1), verbose=False)
    return 1.0 - np.asarray(quality, np.float64), f"{row['arch']} trial {row['number']} ({selection.chosen_as(params)})"


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


def report(title: str, rankings: list[Ranking], names: list[str], planted: dict[str, str], target: float,
           show: Callable[[str], None] = print) -> list[bool]:
    """The table, the planted images' ranks, and the verdicts of one dataset."""
    k = len(planted)
    show(f"   {'ranking':<24}{'AUROC':>8}{f'precision@{k}':>15}")
    for r in rankings:
        show(f"   {r.name:<24}{r.auroc:>8.3f}{r.precision:>15.3f}")
    show(f"   planted (rank of {len(names)}, 1 = most suspect): " + "; ".join(
        f"{name} {kind} " + "/".join(_rank(r.scores, names.index(name)) for r in rankings)
        for name, kind in planted.items()))
    ours, others = rankings[0], rankings[1:]
    verdicts = [verdict(f"{title}: suspect-label AUROC", ours.auroc, target, unit="")]
    for other in others:
        verdicts.append(verdict(f"{title}: suspect-label AUROC - {other.name} AUROC",
                                ours.auroc - (other.auroc if other.auroc == other.auroc else 0.0), 1e-9, unit=""))
    return verdicts


def _rank(scores: np.ndarray, position: int) -> str:
    """1 + how many images score above this one; '-' where it has no score."""
    if np.isnan(scores[position]):
        return "-"
    return str(int(np.count_nonzero(np.nan_to_num(scores, nan=-np.inf) > scores[position])) + 1)


def run_dataset(root: Path, args, keep: Path | None) -> list[bool]:
    work = keep or Path(tempfile.mkdtemp(prefix="label-errors-"))
    copy = work / root.name
    try:
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.cache*", ".segsweep*"))
        os.environ["SEGSWEEP_CACHE"] = str(work / "cache")  # the copy's prepared arrays go with it
        layout = layout_of(copy)
        names = test_names_of(root, args.image_size)  # the split depends on names only: the original's
        planted = plant(layout, names, args.share, args.seed)
        db = f"sqlite:///{work / (root.name + '.db')}"
        (work / (root.name + ".db")).unlink(missing_ok=True)
        print(f"\n{root.name} ({layout.kind}): {len(names)} test images, {len(planted)} planted "
              f"({', '.join(sorted(set(planted.values())))}); copy in {copy}", flush=True)
        extra = ["--image-size", str(args.image_size), *(["--timeout", f"{args.timeout:g}"] if args.timeout else []),
                 *args.sweep_args.split()]
        wall, _ = run_sweep(copy, db, extra)
        scores = store_scores(db, SWEEP, names)
        cl, model = cleanlab_scores(db, SWEEP, copy, names)
        scores["cleanlab soft-minimum"] = cl
        trials = _complete_trials(db)
        print(f"   sweep: {trials} complete trials voting, {wall:.0f} s wall; cleanlab on {model}")
        is_planted = np.array([n in planted for n in names])
        return report(root.name, evaluate(scores, is_planted), names, planted, TARGETS[layout.kind])
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
    args = p.parse_args(argv)
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
