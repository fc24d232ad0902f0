"""Writing one trial's test results (3,669 images, masks and diagnostics included) to SQLite.

    .venv/bin/python benchmarks/store_writes.py
    .venv/bin/python benchmarks/store_writes.py --images 500 --no-before

`Store.finish_trial` is timed whole: PNG-encoding every mask, the per-image rows with their v2
diagnostics, the masks, the sweep's per-image summaries (schema v3), its mask votes and suspect-label
scores (v4) and the trial update in one transaction, on a SQLite file in WAL mode as the jobs use it.
The test images' truths are recorded first, as a trial run does (the same shapes shifted 3 px, with the
sample's photos: the score's image evidence, v5), so each close reads them and scores every image; --no-truths leaves them out (no scores computed: the setup
of the earlier figures in docs/benchmarks.md). The masks are pet-shaped: the real
sample's trimaps (pet + border) resized to the mask size, cycled (and mirrored on every other pass)
to the test-set size; the diagnostics are measured on them against the same shapes shifted. Before
the timed rounds, `--prior-trials` complete trials fill the sweep, so its medians are kept by the
windows rather than holding every value (core.store.summaries). Variants take turns:

* finish_trial         as the jobs call it
* without the summary  the same, with the per-image summary upkeep switched off (into another sweep)
* finish_trial before  the same with PIL's PNG encoder (optimize=True) patched in for encode_mask
* no masks             finish_trial with the per-image rows only (the database part alone)
* encode only          encode_mask on every mask, no database
"""
from __future__ import annotations

import gc
import io
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks._common import (
    DEFAULT_DATA,
    UpkeepTimer,
    finish,
    header,
    interleave,
    median,
    paired_ratio,
    parser,
    positive_int,
    verdict,
)
from jobs.cli import non_negative_int

TEST_IMAGES = 3669  # the official Oxford-IIIT Pet test split
TIME_TARGET_S = 1.0
BYTES_TARGET = 1024


def sample_masks(root: Path, size: int, count: int) -> list:
    import numpy as np
    from PIL import Image

    from core.data.layout import TRIMAPS_DIR, trimap_foreground

    trimaps = sorted((root / TRIMAPS_DIR).glob("*.png"))
    if not trimaps:
        raise SystemExit(f"error: no trimaps under {root / TRIMAPS_DIR}")
    shapes = [trimap_foreground(np.asarray(Image.open(t).resize((size, size), Image.Resampling.NEAREST))) for t in trimaps]
    return [shapes[i % len(shapes)] if (i // len(shapes)) % 2 == 0 else shapes[i % len(shapes)][:, ::-1]
            for i in range(count)]


def sample_images(root: Path, size: int, count: int) -> list:
    """The sample's photos of the trimaps sample_masks reads, at the mask size, cycled and mirrored alike."""
    import numpy as np
    from PIL import Image

    from core.data.layout import TRIMAPS_DIR

    def photo(trimap: Path):
        try:
            with Image.open(root / "images" / f"{trimap.stem}.jpg") as im:
                return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except OSError:  # the sample's deliberately odd files
            return np.full((size, size, 3), 128, np.uint8)

    shapes = [photo(t) for t in sorted((root / TRIMAPS_DIR).glob("*.png"))]
    return [shapes[i % len(shapes)] if (i // len(shapes)) % 2 == 0 else shapes[i % len(shapes)][:, ::-1]
            for i in range(count)]


def old_encode_mask(mask) -> bytes:
    """PIL's PNG encoder with optimize=True: the baseline encode_mask is compared against."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/store_writes.py")
    p.add_argument("--images", type=positive_int, default=TEST_IMAGES, help="test images in the trial")
    p.add_argument("--mask-size", type=positive_int, default=256)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--no-before", action="store_true", help="skip the old-encoder variant (10+ s a round)")
    p.add_argument("--prior-trials", type=non_negative_int, default=24,
                   help="complete trials closed into the sweep before the timed ones")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the trimaps come from")
    p.add_argument("--no-truths", action="store_true", help="record no truths: the closes compute no label scores")
    args = p.parse_args(argv)

    import numpy as np
    from sqlalchemy import select

    import core.store.db as store_module
    from core.labels import decode_votes
    from core.metrics import mask_diagnostics
    from core.store.db import ImageResults, Store, decode_mask, encode_mask
    from core.store.schema import sweep_image_votes, sweep_images

    header("store writes: one trial's per-image results, diagnostics and masks on SQLite", args)
    masks = sample_masks(args.data.resolve(), args.mask_size, args.images)
    rng = np.random.default_rng(0)
    dice, iou, dnb = rng.random(args.images), rng.random(args.images), rng.random(args.images)
    period = min(args.images, 2 * len(list((args.data.resolve() / "annotations" / "trimaps").glob("*.png"))))
    # the masks repeat with this period, so do their diagnostics: measured once, against the shapes shifted
    measured = mask_diagnostics(np.stack(masks[:period]), np.roll(np.stack(masks[:period]), 3, axis=2))
    diagnostics = type(measured)(**{name: None if value is None else np.resize(value, args.images)
                                    for name, value in vars(measured).items()})
    diagnostics.entropy = rng.random(args.images)

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/results.db")
        infos = [SimpleNamespace(name=f"img_{i}", split="test", breed="breed", species="cat", width=500, height=375,
                                 brightness=0.5, fg_fraction=0.3) for i in range(args.images)]
        ids = store.register_dataset("oxford-pets/bench", "oxford-pets", tmp, infos)
        image_ids = np.array([ids[f"img_{i}"] for i in range(args.images)], dtype=np.int64)
        if not args.no_truths:  # as a trial run records them before it closes: the closes score every image
            store.record_truths(image_ids, args.mask_size, [np.roll(m, 3, axis=1) for m in masks],
                                sample_images(args.data.resolve(), args.mask_size, args.images))
        number = iter(range(10**6))
        trials: list[int] = []
        timed_add_trial = UpkeepTimer()  # the summaries' and votes' upkeep inside each timed finish_trial
        upkeep, recomputed = timed_add_trial.seconds, timed_add_trial.recomputed

        def close_trial(with_masks: bool = True, encoder=None, summary: bool = True, sweep: str = "bench",
                        scores=None) -> float:
            tid = store.start_trial(sweep=sweep, study=sweep, arch="unet", number=next(number), params={},
                                    device="cpu", dataset="oxford-pets/bench", image_size=args.mask_size)
            results = ImageResults(image_ids, dice if scores is None else scores, iou, dnb,
                                   masks=masks if with_masks else None, diagnostics=diagnostics)
            saved = store_module.encode_mask
            if encoder is not None:
                store_module.encode_mask = encoder
            timed_add_trial.install(summary)
            settle()
            try:
                started = time.perf_counter()
                store.finish_trial(tid, state="complete", val_dice=0.5, results=results)
                elapsed = time.perf_counter() - started
            finally:
                store_module.encode_mask = saved
                timed_add_trial.remove()
            trials.append(tid)
            return elapsed

        def settle() -> None:
            """Every close starts alike: the earlier closes' WAL pages checkpointed, the heap collected;
            otherwise whichever variant comes first in a round pays for the one before it."""
            with store.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            gc.collect()

        prior = np.random.default_rng(1)
        for _ in range(args.prior_trials):  # the sweep's earlier trials, better and worse ones
            close_trial(with_masks=False, scores=rng.random(args.images) * 0.5 + prior.uniform(0.2, 0.5))
        upkeep.clear()
        recomputed.clear()
        trials.clear()

        def encode_only() -> float:
            settle()
            started = time.perf_counter()
            for m in masks:
                encode_mask(m)
            return time.perf_counter() - started

        variants = {"finish_trial": close_trial,
                    "without the summary": lambda: close_trial(summary=False, sweep="bench-unsummarised"),
                    "no masks": lambda: close_trial(with_masks=False), "encode only": encode_only}
        if not args.no_before:
            variants["finish_trial before"] = lambda: close_trial(encoder=old_encode_mask)
        results = interleave(variants, args.rounds)

        with store.engine.connect() as conn:  # what was written reads back, and its size
            rows = conn.execute(select(store_module.masks.c.image_id, store_module.masks.c.png)
                                .where(store_module.masks.c.trial_id == trials[0])).all()
        by_id = {int(i): png for i, png in rows}
        position = {int(i): k for k, i in enumerate(image_ids)}
        assert len(by_id) == args.images, (len(by_id), args.images)
        for image_id in list(by_id)[:: max(1, args.images // 50)]:
            assert np.array_equal(decode_mask(by_id[image_id]), masks[position[image_id]]), "mask does not read back"
        mean_bytes = float(np.mean([len(png) for png in by_id.values()]))
        with store.engine.connect() as conn:
            votes = conn.execute(select(sweep_image_votes.c.votes)
                                 .where(sweep_image_votes.c.sweep == "bench")).scalars().all()
            scored = conn.execute(select(sweep_images.c.label_suspicion)
                                  .where(sweep_images.c.sweep == "bench", sweep_images.c.label_suspicion.is_not(None))
                                  ).scalars().all()
        vote_bytes = float(np.mean([len(v) for v in votes])) if votes else float("nan")
        vote_grid = "x".join(map(str, decode_votes(votes[0]).shape)) if votes else "-"
        old_bytes = float(np.mean([len(old_encode_mask(m)) for m in masks[:200]]))
        store.dispose()

    print(f"-- {args.images} images, masks {args.mask_size} px, diagnostics, into a sweep of {args.prior_trials} "
          f"complete trials; medians of {args.rounds} interleaved rounds:")
    for name, values in results.items():
        print(f"   {name:<20} {median(values):7.3f} s")
    print(f"   summary upkeep inside finish_trial: {1000 * median(upkeep):.0f} ms median, {1000 * max(upkeep):.0f} ms "
          f"at most over {len(upkeep)} closes; {sum(recomputed)} of {len(recomputed) * args.images} image summaries "
          f"recomputed from image_results")
    print(f"   mean votes blob {vote_bytes:.0f} bytes an image ({vote_grid} counts); {len(scored)} images scored")
    print(f"   mean mask PNG {mean_bytes:.0f} bytes (PIL optimize=True: {old_bytes:.0f} bytes, first 200 masks); "
          f"every 50th mask decoded back equal")
    if "finish_trial before" in results:
        print(f"RATIO finish_trial before / now = {paired_ratio(results['finish_trial before'], results['finish_trial']):.1f}x")
    print(f"RATIO finish_trial / without the summary = "
          f"{paired_ratio(results['finish_trial'], results['without the summary']):.2f}x")
    print(f"RATIO encode share of finish_trial = {paired_ratio(results['encode only'], results['finish_trial']):.2f}")
    print("      (timings in seconds are absolute: compare them only with the load line above)")
    verdicts = [
        verdict(f"finish_trial of {args.images} results + masks on SQLite", median(results["finish_trial"]),
                TIME_TARGET_S, unit=" s", higher_is_better=False),
        verdict(f"mean mask size at {args.mask_size} px", mean_bytes, BYTES_TARGET, unit=" B", higher_is_better=False),
    ]
    return finish(verdicts, args.report_only)


if __name__ == "__main__":
    sys.exit(main())
