"""What the dashboard's pages fetch, on a store of a million per-image results.

    .venv/bin/python benchmarks/dashboard_queries.py                  # most of its time is writing the store
    .venv/bin/python benchmarks/dashboard_queries.py --keep big.db    # keep the store; reuse it next time

The store is written the way the jobs write it, through `core.store.db.Store`: one dataset of 3,669
test images (the official test split's size) with Oxford-like attributes (37 breeds, 2 species,
brightness, pet size), and as many complete trials of two architectures as it takes to reach
`--results` rows in `image_results`, each closed by `Store.finish_trial`; pruned and failed
trials (no per-image rows) sit between them as in a real sweep, and the best trial of each
architecture has its masks. Every image has a difficulty and every trial a quality, so filters
select realistic, uneven subsets.

Each timed view is what a page asks `core.store.queries` for when the user changes something and the
dashboard's caches are cold, through one read-only Store as the dashboard holds it:

* hardest images, filtered   count_images + hardest_images (one page of 12) for a trial, filtered
                             by species, breeds, brightness, pet size and a dice range
* ... by failure mode        the same filter plus one failure mode (`missed object`), worst dice first
* ... ranked by HD95         count_images + hardest_images of that trial in one failure mode, worst
                             (highest) HD95 first: the sort no index serves
* + the page's masks         the same plus mask_pngs for the 12 images shown
* distributions page data    best_trials, image_scores of the best trial per architecture, the
                             per-trial summary, paired_scores of the two and their comparison
                             (bootstrap CI and Wilcoxon)
* hard for every model       image_medians over every complete trial, filtered, + images_by_id:
                             from the sweep's per-image summaries (schema v3)
* ... unfiltered             the same over every image: the view as it first opens
* ... by most common mode    the same over the images whose most common failure mode is the one
                             most images have
* ..., every result          the three above as a store without the summaries answers them
                             (image_medians_from_results: every per-image result of the sweep)
* whole table into pandas    the yardstick: every image_results row of the sweep joined to its
                             image, read into a DataFrame (what filtering in the browser would need)

Views take turns round after round; each figure is the median, and the ratio to the yardstick
is paired per round. Writing the store prints what keeping the summaries cost its closing trials; a
kept store of an older schema is upgraded first, and the upgrade is timed.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from benchmarks._common import (
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

TEST_IMAGES = 3669          # the official Oxford-IIIT Pet test split
RESULTS = 1_000_000         # image_results rows in the generated store
HARDEST_TARGET_S = 0.100
DISTRIBUTIONS_TARGET_S = 0.500
EVERY_MODEL_TARGET_S = 0.200       # the sweep-wide ranking, unfiltered
EVERY_MODEL_MODE_TARGET_S = 0.100  # ... narrowed to one most common failure mode
SWEEP = "bench"
ARCHS = ("unet", "resnet34_unet")
SPECIES_OF_BREED = ["cat"] * 12 + ["dog"] * 25  # Oxford-IIIT Pet: 12 cat and 25 dog breeds


def build_store(url: str, results: int, n_images: int, seed: int = 0) -> None:
    """Write a sweep of whole trials, at least `results` image_results rows, through core.store.db as the jobs do."""
    import numpy as np

    from core.metrics import ImageDiagnostics
    from core.store.db import ImageResults, Store

    rng = np.random.default_rng(seed)
    store = Store(url)
    timer = UpkeepTimer()
    upkeep, recomputed = timer.seconds, timer.recomputed
    timer.install()
    breeds = rng.integers(0, len(SPECIES_OF_BREED), n_images)
    brightness = np.clip(rng.normal(0.45, 0.15, n_images), 0.02, 0.98)
    fg = np.clip(rng.beta(2.5, 4, n_images), 0.01, 0.95)
    infos = [SimpleNamespace(name=f"Breed{b}_{i}", split="test", breed=f"breed_{b:02d}", species=SPECIES_OF_BREED[b],
                             width=500, height=375, brightness=float(brightness[i]), fg_fraction=float(fg[i]))
             for i, b in enumerate(breeds)]
    ids = store.register_dataset("synthetic/bench", "synthetic", tempfile.gettempdir(), infos)
    image_ids = np.array([ids[info.name] for info in infos], dtype=np.int64)
    # dark and small pets are harder, as in the real data
    difficulty = 0.25 * rng.random(n_images) + 0.3 * (brightness < 0.25) + 0.4 * (fg < 0.12)
    n_complete = math.ceil(results / n_images)
    states = ["complete"] * n_complete + ["pruned"] * (n_complete // 5) + ["failed"] * (n_complete // 20)
    rng.shuffle(states)
    archs = [ARCHS[k % len(ARCHS)] for k in range(len(states))]
    quality = rng.uniform(0.7, 0.95, len(states))
    best = {max((k for k, a in enumerate(archs) if a == arch and states[k] == "complete"), key=lambda k: quality[k])
            for arch in ARCHS}
    yy, xx = np.mgrid[0:64, 0:64]
    discs = [(yy - 32) ** 2 + (xx - 32) ** 2 < (8 + i % 20) ** 2 for i in range(20)]
    masks = [discs[j % 20] for j in range(n_images)]  # what the galleries show, for the best trials only
    numbers = {arch: 0 for arch in ARCHS}
    for k, (state, arch) in enumerate(zip(states, archs)):
        tid = store.start_trial(sweep=SWEEP, study=f"{SWEEP}/{arch}", arch=arch, number=numbers[arch],
                                params={"lr": float(10 ** rng.uniform(-5, -2)), "dice_weight": float(rng.random())},
                                device="cpu", dataset="synthetic/bench", image_size=64)
        numbers[arch] += 1
        if state != "complete":
            store.finish_trial(tid, state=state, val_dice=None, error="diverged" if state == "failed" else None)
            continue
        dice = np.clip(quality[k] - difficulty * rng.uniform(0.5, 1.5) + rng.normal(0, 0.05, n_images), 0, 1)
        # diagnostics consistent with the dice (precision and recall whose harmonic mean it is), invented
        # rather than measured: the queries only need realistic values and failure-mode shares
        lean = rng.uniform(-1, 1, n_images) * (1 - dice)
        recall = np.clip(dice * (1 + lean), 0.0, 1.0)
        precision = np.clip(np.where(2 * recall - dice > 1e-9, dice * recall / np.maximum(2 * recall - dice, 1e-9),
                                     1.0), 0.0, 1.0)
        diag = ImageDiagnostics(
            fp_area=(1 - precision) * fg[:n_images] * 0.5, fn_area=(1 - recall) * fg[:n_images] * 0.5,
            precision=precision, recall=recall, boundary_iou=np.clip(dice ** 3 + rng.normal(0, 0.05, n_images), 0, 1),
            hd95=(1 - dice) * 40 + rng.exponential(1.0, n_images), fp_blobs=rng.poisson(2 * (1 - precision)),
            object_missed=recall < 0.5, entropy=np.clip(0.05 + 0.5 * (1 - dice) + rng.normal(0, 0.05, n_images), 0, 1))
        store.finish_trial(tid, state="complete", val_dice=float(quality[k]), results=ImageResults(
            image_ids, dice, dice / (2 - dice), np.clip(dice + 0.02, 0, 1), masks=masks if k in best else None,
            diagnostics=diag))
    store.dispose()
    timer.remove()
    late = upkeep[len(upkeep) // 2:]
    print(f"   summary upkeep in finish_trial: {sum(upkeep):.1f} s over {len(upkeep)} closes; per close median "
          f"{1000 * median(upkeep):.0f} ms ({1000 * median(late):.0f} ms over the last half), at most "
          f"{1000 * max(upkeep):.0f} ms; {sum(recomputed):,} of {len(upkeep) * n_images:,} image summaries recomputed "
          f"from image_results")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/dashboard_queries.py")
    p.add_argument("--results", type=positive_int, default=RESULTS, help="image_results rows in the generated store")
    p.add_argument("--images", type=positive_int, default=TEST_IMAGES, help="test images per trial")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--keep", type=Path, help="write the store to this SQLite file, or reuse it if it exists")
    args = p.parse_args(argv)

    import pandas as pd
    from sqlalchemy import func, select

    from core.store import queries
    from core.store.db import Store
    from core.store.schema import SCHEMA_VERSION, image_results, images, trials
    from core.store.queries import ImageFilter
    from dashboard import stats

    header("dashboard queries on a store of a million per-image results", args)
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp) / "results.db").resolve()
        url = f"sqlite:///{path}"
        if not path.exists():
            started = time.perf_counter()
            build_store(url, args.results, args.images)
            print(f"   wrote {path.name} through core.store.db in {time.perf_counter() - started:.0f} s")
        elif Store(url, read_only=True).schema_version < SCHEMA_VERSION:
            messages: list[str] = []
            started = time.perf_counter()
            Store(url, log=messages.append).dispose()
            print(f"   {messages[0] if messages else 'upgraded'}: {time.perf_counter() - started:.1f} s")
        store = Store(url, read_only=True)
        with store.engine.connect() as conn:
            rows = int(conn.execute(select(func.count()).select_from(image_results)).scalar() or 0)
            n_trials = int(conn.execute(select(func.count()).select_from(trials)).scalar() or 0)
        print(f"   {rows:,} image_results rows, {n_trials} trials, {path.stat().st_size / 2**20:.0f} MiB")

        best = queries.best_trials(store, SWEEP)
        worst_best = int(best.sort_values("val_dice")["id"].iloc[0])
        breeds = tuple(sorted(queries.filter_options(store, (worst_best,))["breeds"]))[:6]  # half the cat breeds
        flt = ImageFilter(metric="dice", score=(0.0, 0.8), breeds=breeds, species=("cat",),
                          brightness=(0.05, 0.7), fg_fraction=(0.02, 0.6))

        def timed(work) -> float:
            started = time.perf_counter()
            work()
            return time.perf_counter() - started

        page: dict = {}

        def hardest() -> None:
            page["total"] = queries.count_images(store, worst_best, flt)
            page["rows"] = queries.hardest_images(store, worst_best, flt, limit=12)

        by_mode = replace(flt, modes=("missed object",))
        by_hd95 = ImageFilter(metric="hd95", modes=("missed object",))

        def hardest_by(image_filter: ImageFilter) -> None:
            page[f"total {image_filter.metric}"] = queries.count_images(store, worst_best, image_filter)
            page[f"rows {image_filter.metric}"] = queries.hardest_images(store, worst_best, image_filter, limit=12)

        def hardest_with_masks() -> None:
            hardest()
            page["masks"] = queries.mask_pngs(store, (worst_best,), tuple(int(i) for i in page["rows"]["image_id"]))

        def distributions() -> None:
            best_now = queries.best_trials(store, SWEEP)
            ids = tuple(int(i) for i in best_now["id"])
            scores = queries.image_scores(store, ids)
            page["summary"] = stats.summarize(scores, "dice")
            pairs = queries.paired_scores(store, ids[0], ids[-1])
            page["paired"] = stats.compare_paired(pairs["dice_a"], pairs["dice_b"])

        def every_model(image_filter: ImageFilter = flt, rank=queries.image_medians, key: str = "every") -> None:
            ranked = rank(store, SWEEP, image_filter)
            page[key] = ranked
            queries.images_by_id(store, ranked["image_id"].head(12).tolist())

        common_mode = str(queries.image_medians(store, SWEEP)["mode"].value_counts().index[0])  # the most images
        by_top_mode = ImageFilter(modes=(common_mode,))
        slow = queries.image_medians_from_results

        def whole_table() -> None:
            stmt = (select(image_results, images.c.name, images.c.breed, images.c.species, images.c.brightness,
                           images.c.fg_fraction)
                    .join_from(image_results, images, images.c.id == image_results.c.image_id)
                    .join(trials, trials.c.id == image_results.c.trial_id).where(trials.c.sweep == SWEEP))
            with store.engine.connect() as conn:
                page["table"] = pd.read_sql(stmt, conn)

        views = {"hardest images, filtered": hardest, "... by failure mode": lambda: hardest_by(by_mode),
                 "... ranked by HD95": lambda: hardest_by(by_hd95), "+ the page's masks": hardest_with_masks,
                 "distributions page data": distributions, "hard for every model": every_model,
                 "... unfiltered": lambda: every_model(ImageFilter(), key="unfiltered"),
                 "... by most common mode": lambda: every_model(by_top_mode, key="mode"),
                 "... filtered, every result": lambda: every_model(rank=slow, key="every before"),
                 "... unfiltered, every result": lambda: every_model(ImageFilter(), rank=slow, key="unfiltered before"),
                 "... by most common mode, every result": lambda: every_model(by_top_mode, rank=slow, key="mode before"),
                 "whole table into pandas": whole_table}
        times = interleave({name: (lambda w=work: timed(w)) for name, work in views.items()}, args.rounds)
        store.dispose()

    yard = times["whole table into pandas"]

    def times_faster(view: str) -> str:
        r = paired_ratio(yard, times[view])
        return f"{r:,.0f}x" if r >= 10 else f"{r:.2g}x"

    print(f"-- {rows:,} image_results rows; trial {worst_best}: {page['total']} of {args.images} images match "
          f"the filter (cat, {len(breeds)} breeds, brightness, pet size, dice <= 0.8); medians of {args.rounds} rounds:")
    for name, values in times.items():
        ratio = "" if values is yard else f"  ({times_faster(name)} faster than the whole table)"
        print(f"   {name:<38} {1000 * median(values):9.1f} ms{ratio}")
    print(f"   (failure mode `missed object`: {page['total dice']} images match the filter, "
          f"{page['total hd95']} of the trial's {args.images} unfiltered)")
    print(f"   (the whole table: {len(page['table']):,} rows; hard for every model ranks "
          f"{len(page['unfiltered']):,} images unfiltered, {len(page['every']):,} filtered, {len(page['mode']):,} "
          f"whose most common failure mode is `{common_mode}`)")
    same = all(page[k]["image_id"].tolist() == page[f"{k} before"]["image_id"].tolist()
               and page[k]["median"].tolist() == page[f"{k} before"]["median"].tolist()
               for k in ("every", "unfiltered", "mode"))
    print(f"   summaries and every result rank the same images with the same medians: {'yes' if same else 'NO'}")
    for view, before in (("hard for every model", "... filtered, every result"),
                         ("... unfiltered", "... unfiltered, every result"),
                         ("... by most common mode", "... by most common mode, every result")):
        print(f"RATIO {view.strip(' .')}: every result / summaries = {paired_ratio(times[before], times[view]):.0f}x")
    print(f"RATIO whole table / hardest images, filtered = {times_faster('hardest images, filtered')}")
    print(f"RATIO whole table / distributions page data = {times_faster('distributions page data')}")
    print("      (milliseconds are absolute: compare them only with the load line above)")
    verdicts = [
        verdict("hardest-images query with filters", 1000 * median(times["hardest images, filtered"]),
                1000 * HARDEST_TARGET_S, unit=" ms", higher_is_better=False),
        verdict("hardest-images query with a failure-mode filter", 1000 * median(times["... by failure mode"]),
                1000 * HARDEST_TARGET_S, unit=" ms", higher_is_better=False),
        verdict("hardest-images query in a failure mode, ranked by HD95", 1000 * median(times["... ranked by HD95"]),
                1000 * HARDEST_TARGET_S, unit=" ms", higher_is_better=False),
        verdict("distributions page's data", 1000 * median(times["distributions page data"]),
                1000 * DISTRIBUTIONS_TARGET_S, unit=" ms", higher_is_better=False),
        verdict("hard for every model, unfiltered", 1000 * median(times["... unfiltered"]),
                1000 * EVERY_MODEL_TARGET_S, unit=" ms", higher_is_better=False),
        verdict("hard for every model, one most common failure mode", 1000 * median(times["... by most common mode"]),
                1000 * EVERY_MODEL_MODE_TARGET_S, unit=" ms", higher_is_better=False),
        verdict("summaries rank as every result does", float(same), 1.0, unit="", higher_is_better=True),
    ]
    return finish(verdicts, args.report_only)


if __name__ == "__main__":
    sys.exit(main())
