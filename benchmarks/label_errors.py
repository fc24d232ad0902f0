"""Which labels are wrong: plant known mask errors in a copy of a dataset, sweep it, and rank the test images.

    .venv/bin/python benchmarks/label_errors.py                        # each shared sample, quick preset (~5 min each)
    .venv/bin/python benchmarks/label_errors.py --data ../shared/data/busi-sample --keep /tmp/le
    .venv/bin/python benchmarks/label_errors.py --data ../shared/data/busi-sample --keep /tmp/le --rescore

For each dataset folder, in a temporary copy: a share (--share, 10%) of the test images get a wrong mask,
by kinds in turn: erased, grown (area about doubled), shrunk (about halved), shifted (by half the mask's
extent, at least a fifth of the image), or another test image's mask; in a folder whose images may have
several mask files (BUSI's second lesions), one such image first loses one. Then `python -m jobs.sweep
--data-root COPY` at the given budget (default: the quick preset's), and three rankings of the test images,
most suspect first:

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
holds (each complete trial's predicted mask and entropy, core.labels' steps; median dice from the masks;
cleanlab from the refit's probabilities, which no mask changes). First the sweep's own planting is replayed and
must reproduce the stored truths, dice and label_suspicion exactly, or the dataset fails loudly. PASS when the
suspect-label score's mean AUROC reaches the dataset's target (0.95 in Oxford-IIIT Pet's layout, 0.90 in a
folder of the user's kind) and beats both other rankings' mean AUROC. --keep keeps the copy and the store; --rescore scores a kept sweep again, no sweep.
"""
from __future__ import annotations

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

from benchmarks._common import REPO, finish, header, parser, positive_int, verdict
from benchmarks._planting import KINDS, DatasetMasks, plant, planted_truths

SAMPLES = (REPO.parent / "shared" / "data" / "oxford-pets-sample", REPO.parent / "shared" / "data" / "busi-sample")
TARGETS = {"oxford-pets": 0.95, "folder": 0.90}  # by _planting.DatasetMasks.kind
SWEEP = "label-errors"


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


def judge(title: str, rankings: list, target: float, what: str) -> list[bool]:
    """The verdicts: the first ranking (the suspect-label score) reaches `target` and beats each other one's
    `what` (an unmeasured one, NaN, counts as 0)."""
    ours, others = rankings[0], rankings[1:]
    verdicts = [verdict(f"{title}: suspect-label {what}", ours.auroc, target, unit="")]
    for other in others:
        verdicts.append(verdict(f"{title}: suspect-label {what} - {other.name} {what}",
                                ours.auroc - (other.auroc if other.auroc == other.auroc else 0.0), 1e-9, unit=""))
    return verdicts


def refit_probabilities(db: str, sweep: str, root: Path, names: list[str]) -> tuple[np.ndarray | None, str]:
    """The foreground probabilities (N, S, S) of the sweep's selected model (its refit) on the test images `names`,
    computed as its evaluation computed them (core.training.result: flip TTA, members, precision), and which model
    that was; None without a kept checkpoint. No test mask changes them: every planting's cleanlab ranking uses them."""
    import torch

    from core.store import queries, selection
    from core.store.db import Store
    from core.training import result

    store = Store(db, read_only=True)
    try:
        best = queries.best_trials(store, sweep)
    finally:
        store.dispose()
    best = best[best["checkpoint"].notna()]
    if best.empty:
        return None, "no checkpoint kept"
    row = max(best.to_dict("records"), key=selection.rank)
    model = result.load(row, device="cpu", warn=lambda _: None)
    data = load(root, int(row["image_size"]))
    index = {info.name: i for i, info in enumerate(data.infos)}
    idx = np.array([index[n] for n in names])
    fg = [torch.sigmoid(model.logits(torch.from_numpy(data.images[idx[start:start + 16]]))).float().cpu().numpy()
          for start in range(0, len(idx), 16)]
    return np.concatenate(fg).astype(np.float64), f"{row['arch']} trial {row['number']} ({selection.chosen_as(row['params'])})"


# -- many plantings of one sweep: what its store holds, rescored against each -----------------------------

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
    """A sweep's complete trials' masks, dice and entropies of `names`, their truths and stored scores
    (core.store.queries)."""
    from core.store import queries
    from core.store.db import Store
    from core.store.mask_png import decode_image, decode_mask

    store = Store(db, read_only=True)
    try:
        ranked = queries.suspects(store, sweep).set_index("name")
        missing = [n for n in names if n not in ranked.index]
        if missing:
            raise RuntimeError(f"sweep {sweep!r} has no summaries of {len(missing)} test images, e.g. {missing[0]}")
        ids = [int(i) for i in ranked.loc[names, "image_id"]]
        done = queries.sweep_trials(store, sweep)
        done = done[done["state"] == "complete"].sort_values(["finished_at", "id"])
        if done.empty:
            raise RuntimeError(f"sweep {sweep!r} has no complete trial")
        size, trial_ids = int(done["image_size"].iloc[-1]), [int(t) for t in done["id"]]
        pngs = queries.mask_pngs(store, trial_ids, ids)
        scores = queries.image_scores(store, trial_ids)
        truths, pictures = (queries.truth_pngs(store, ids, size, column) for column in ("png", "image"))
    finally:
        store.dispose()
    entropy = scores["entropy"] if "entropy" in scores else np.full(len(scores), np.nan)
    measured = {(int(t), int(i)): (d, np.nan if e is None else e)
                for t, i, d, e in zip(scores["trial_id"], scores["image_id"], scores["dice"], entropy)}
    masks = np.zeros((len(trial_ids), len(ids), size, size), bool)
    dice, entropies = np.full(masks.shape[:2], np.nan), np.full(masks.shape[:2], np.nan)
    for t, trial in enumerate(trial_ids):
        for k, image in enumerate(ids):
            if (trial, image) in pngs:
                masks[t, k] = decode_mask(pngs[(trial, image)])
            dice[t, k], entropies[t, k] = measured.get((trial, image), (np.nan, np.nan))
    truth = np.stack([decode_mask(truths[i]) if i in truths else np.zeros((size, size), bool) for i in ids])
    images = [decode_image(pictures[i]) if i in pictures else None for i in ids]
    suspicion = np.array(ranked.loc[names, "label_suspicion"], dtype=np.float64)
    return StoredSweep(list(names), masks, dice, entropies, truth, suspicion, images)


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
        k = int(np.count_nonzero(planted))
        for name, scores in rank(truth).items():
            found.setdefault(name, []).append((auroc(scores, planted), precision_at_k(scores, planted, k)))
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


def run_sweep(copy: Path, db: str, extra: list[str]) -> float:
    """`python -m jobs.sweep` on the planted copy; its wall seconds."""
    cmd = [sys.executable, "-m", "jobs.sweep", "--data-root", str(copy), "--db", db, "--name", SWEEP, "--no-progress",
           *extra]
    started = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"the sweep failed ({run.returncode}): {(run.stderr or run.stdout).strip()[-1500:]}")
    return time.perf_counter() - started


def table(scores: dict[str, np.ndarray], names: list[str], planted: dict[str, str],
          show: Callable[[str], None] = print) -> list[Spread]:
    """One planting's AUROC and precision at k per ranking, and the planted images' ranks; returns the former."""
    rankings = over_plantings(lambda _: scores, [(None, np.array([n in planted for n in names]))])
    show(f"   {'ranking':<24}{'AUROC':>8}{f'precision@{len(planted)}':>15}")
    for r in rankings:
        show(f"   {r.name:<24}{r.auroc:>8.3f}{r.precision:>15.3f}")
    show(f"   planted (rank of {len(names)}, 1 = most suspect): " + "; ".join(
        f"{name} {kind} " + "/".join(_rank(s, names.index(name)) for s in scores.values())
        for name, kind in planted.items()))
    return rankings


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
        files = DatasetMasks(root, names)  # the original's masks: read, never written
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
            planted = plant(DatasetMasks(copy, names, files=True), names, args.share, args.seed)
            db_file.unlink(missing_ok=True)
        print(f"\n{root.name} ({files.kind}): {len(names)} test images, {len(planted)} planted "
              f"({', '.join(sorted(set(planted.values())))}); copy in {copy}", flush=True)
        if not args.rescore:
            extra = ["--image-size", str(args.image_size), *(["--timeout", f"{args.timeout:g}"] if args.timeout else []),
                     *args.sweep_args.split()]
            wall = f"{run_sweep(copy, db, extra):.0f} s wall"
        sweep = read_sweep(db, SWEEP, names)
        truths = []
        for seed in range(args.seed, args.seed + args.plantings):
            # each planting starts the kinds one further along: with few planted (BUSI's 4, one a removed object)
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
        table(rank(truths[0][0]), names, planted)
        spreads = over_plantings(rank, truths)
        return report_plantings(root.name, spreads, len(planted), TARGETS[files.kind])
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


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
