"""core.store.queries: the dashboard's reads, on a small store whose every number is known, in SQLite
and in PostgreSQL (a throwaway server from tests.pg_server)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from core.metrics import spread
from core.store import queries as q
from core.store.db import ImageResults, Store, decode_mask
from tests.pg_server import postgres  # noqa: F401  (the session fixture)

DATASET = "oxford-pets/tiny"


@dataclass
class Info:
    name: str
    split: str
    breed: str
    species: str
    brightness: float
    fg_fraction: float
    width: int = 100
    height: int = 80
    group: str | None = None


# 10 images: the first 8 are test images with results, the last 2 train images without; groups: images 0-2
# "left", 3-5 "right", the rest none.
INFOS = [Info(f"{'cat' if i % 2 else 'dog'}_{i}", "test" if i < 8 else "train", "persian" if i % 2 else "beagle",
              "cat" if i % 2 else "dog", brightness=0.1 * (i + 1), fg_fraction=0.05 * (i + 1),
              group="left" if i < 3 else "right" if i < 6 else None) for i in range(10)]
# Per-trial dice of test images 0..7 (image i gets DICE[trial][i]).
DICE = {
    ("unet", 0): [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
    ("unet", 1): [0.95, 0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25],
    ("resnet34_unet", 0): [0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
}
VAL = {("unet", 0): 0.70, ("unet", 1): 0.80, ("resnet34_unet", 0): 0.75}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Sweep "s": 3 complete trials as DICE, one pruned and one running unet trial; sweep "other": 1 trial."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path_factory.mktemp('queries') / 'results.db'}"
    else:
        db = request.getfixturevalue("postgres").create_database("queries")
    store = Store(db)
    ids = store.register_dataset(DATASET, "oxford-pets", tmp_path_factory.getbasetemp(), INFOS)
    test_ids = np.array([ids[i.name] for i in INFOS[:8]])
    trial_ids = {}
    for (arch, number), dice in DICE.items():
        tid = store.start_trial(sweep="s", study=f"s/{arch}", arch=arch, number=number, params={"lr": 1e-3 * (number + 1)},
                                device="cpu", dataset=DATASET, image_size=8)
        for epoch in range(3):
            store.record_epoch(tid, epoch, train_loss=1.0 - 0.1 * epoch, val_loss=1.1 - 0.1 * epoch,
                               train_dice=0.5 + 0.1 * epoch, val_dice=0.4 + 0.1 * epoch, lr=1e-3, seconds=1.0,
                               images_per_s=50.0)
        d = np.array(dice)
        masks = [np.eye(8, dtype=bool) if k == 0 else np.zeros((8, 8), bool) for k in range(8)]
        store.finish_trial(tid, state="complete", val_dice=VAL[(arch, number)],
                           results=ImageResults(test_ids, d, d * 0.9, np.minimum(1.0, d + 0.05), masks=masks))
        trial_ids[(arch, number)] = tid
    pruned = store.start_trial(sweep="s", study="s/unet", arch="unet", number=2, params={"lr": 1e-2}, device="cpu",
                               dataset=DATASET, image_size=8)
    store.record_epoch(pruned, 0, train_loss=2.0, val_loss=2.0, train_dice=0.1, val_dice=0.99, lr=1e-2, seconds=1.0,
                       images_per_s=50.0)
    store.finish_trial(pruned, state="pruned", val_dice=0.99)  # a high val dice that must not count as best
    running = store.start_trial(sweep="s", study="s/unet", arch="unet", number=3, params={"lr": 1e-4}, device="cpu",
                                dataset=DATASET, image_size=8)
    store.record_epoch(running, 0, train_loss=1.5, val_loss=1.6, train_dice=0.3, val_dice=0.25, lr=1e-4, seconds=1.0,
                       images_per_s=50.0)
    other = store.start_trial(sweep="other", study="other/unet", arch="unet", number=0, params={}, device="cpu",
                              dataset=DATASET, image_size=8)
    store.finish_trial(other, state="failed", error="boom")
    store.dispose()
    return {"db": db, "ids": ids, "trials": trial_ids, "pruned": pruned, "running": running}


@pytest.fixture(scope="module")
def ro(tiny: dict) -> Iterator[Store]:
    store = Store(tiny["db"], read_only=True)
    yield store
    store.dispose()


def test_sweeps_count_trials_by_state(ro: Store) -> None:
    sweeps = q.sweeps(ro).set_index("sweep")
    assert sweeps.loc["s", ["trials", "complete", "pruned", "running", "failed", "archs"]].tolist() == [5, 3, 1, 1, 0, 2]
    assert sweeps.loc["other", "failed"] == 1 and sweeps.loc["s", "dataset"] == DATASET


def test_best_trial_per_arch_is_the_highest_val_dice_among_complete_trials(ro: Store, tiny: dict) -> None:
    best = q.best_trials(ro, "s").set_index("arch")
    assert best.loc["unet", "id"] == tiny["trials"][("unet", 1)]  # not the pruned 0.99 one
    assert best.loc["resnet34_unet", "id"] == tiny["trials"][("resnet34_unet", 0)]
    assert best.loc["unet", "test_dice"] == pytest.approx(np.mean(DICE[("unet", 1)]))
    assert best.loc["unet", "params"] == {"lr": 2e-3}


def test_running_progress_reports_the_latest_epoch(ro: Store, tiny: dict) -> None:
    running = q.running_progress(ro, "s")
    assert running["id"].tolist() == [tiny["running"]] and running["epoch"].tolist() == [0]
    assert running["val_dice"].tolist() == [0.25] and running["heartbeat_at"].notna().all()


def test_epoch_curves_carry_arch_number_and_state(ro: Store, tiny: dict) -> None:
    curves = q.epoch_curves(ro, [tiny["trials"][("unet", 0)], tiny["pruned"]])
    assert len(curves) == 4 and set(curves["state"]) == {"complete", "pruned"}
    assert curves[curves["trial_id"] == tiny["pruned"]]["val_dice"].tolist() == [0.99]


def test_hardest_images_are_worst_first_and_paged(ro: Store, tiny: dict) -> None:
    tid = tiny["trials"][("unet", 0)]
    first = q.hardest_images(ro, tid, limit=3)
    assert first["name"].tolist() == ["cat_7", "dog_6", "cat_5"]
    assert first["dice"].tolist() == pytest.approx([0.2, 0.3, 0.4])
    second = q.hardest_images(ro, tid, limit=3, offset=3)
    assert second["dice"].tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert q.count_images(ro, tid) == 8


def test_image_filters_narrow_the_gallery_in_sql(ro: Store, tiny: dict) -> None:
    tid = tiny["trials"][("unet", 0)]
    dogs = q.ImageFilter(species=("dog",))
    assert q.hardest_images(ro, tid, dogs)["name"].tolist() == ["dog_6", "dog_4", "dog_2", "dog_0"]
    assert q.count_images(ro, tid, dogs) == 4
    assert q.count_images(ro, tid, q.ImageFilter(score=(0.25, 0.55))) == 3          # 0.3, 0.4, 0.5
    assert q.count_images(ro, tid, q.ImageFilter(brightness=(0.15, 0.35))) == 2     # images 1 and 2
    assert q.count_images(ro, tid, q.ImageFilter(fg_fraction=(0.0, 0.12))) == 2     # images 0 and 1
    assert q.count_images(ro, tid, q.ImageFilter(breeds=("persian",), splits=("test",))) == 4
    assert q.count_images(ro, tid, q.ImageFilter(species=())) == 0                  # nothing chosen: nothing shown
    border = q.hardest_images(ro, tid, q.ImageFilter(metric="dice_no_border", score=(0.0, 0.3)))
    assert border["dice_no_border"].tolist() == pytest.approx([0.25])


def test_unknown_metric_is_refused(ro: Store, tiny: dict) -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        q.hardest_images(ro, tiny["trials"][("unet", 0)], q.ImageFilter(metric="dice; DROP TABLE trials"))


def test_image_medians_rank_images_by_their_median_over_complete_trials(ro: Store) -> None:
    ranked = q.image_medians(ro, "s")
    expected = {i: float(np.median([DICE[k][i] for k in DICE])) for i in range(8)}
    by_name = {INFOS[i].name: v for i, v in expected.items()}
    names = q.images_by_id(ro, ranked["image_id"].tolist())["name"].tolist()
    assert dict(zip(names, ranked["median"])) == pytest.approx(by_name)
    assert ranked["median"].is_monotonic_increasing and set(ranked["trials"]) == {3}
    assert ranked.iloc[0]["min"] == pytest.approx(0.2) and ranked.iloc[0]["max"] == pytest.approx(0.9)
    page = q.hard_for_every_model(ro, "s", q.ImageFilter(species=("cat",)), limit=2)
    assert page["name"].tolist() == ["cat_7", "cat_5"] and page["median"].tolist() == pytest.approx([0.25, 0.45])
    assert len(q.image_medians(ro, "s", q.ImageFilter(score=(0.0, 0.5)))) == 3  # medians 0.25, 0.35, 0.45


def test_the_ranking_reads_the_sweep_summaries_kept_by_closing_trials(ro: Store) -> None:
    assert q.has_summaries(ro)
    for flt in (q.ImageFilter(), q.ImageFilter(metric="iou", species=("dog",)), q.ImageFilter(score=(0.3, 0.9))):
        fast, slow = q.image_medians(ro, "s", flt), q.image_medians_from_results(ro, "s", flt)
        assert fast["image_id"].tolist() == slow["image_id"].tolist() and len(fast) > 0
        assert fast["median"].tolist() == slow["median"].tolist() and fast["trials"].tolist() == slow["trials"].tolist()
    # no diagnostics were written: every result is 'not computed', the most common mode of every image
    every = q.image_medians(ro, "s")
    assert set(every["mode"]) == {"not computed"} and set(every["mode_trials"]) == set(every["evaluated"]) == {3}
    assert len(q.image_medians(ro, "s", q.ImageFilter(modes=("not computed",)))) == 8
    assert q.image_medians(ro, "s", q.ImageFilter(modes=("missed object",))).empty
    assert q.sweep_top_modes(ro, "s") == ["not computed"] and q.sweep_top_modes(ro, "other") == []


def test_trial_tail_scores_give_the_worst_tenth_and_the_tenth_percentile(ro: Store, tiny: dict) -> None:
    tails = q.trial_tail_scores(ro, "s").set_index("trial_id")
    assert len(tails) == 3  # complete trials only
    row = tails.loc[tiny["trials"][("resnet34_unet", 0)]]
    dice = DICE[("resnet34_unet", 0)]
    assert row["images"] == 8 and row["worst10_mean"] == pytest.approx(0.1)
    assert row["p10"] == pytest.approx(np.percentile(dice, 10)) == pytest.approx(spread(np.array(dice))["p10"])
    assert row["mean"] == pytest.approx(np.mean(dice))
    assert tails.loc[tiny["trials"][("unet", 0)], "worst"] == pytest.approx(0.2)


def test_trial_tail_scores_of_a_lower_is_better_metric_take_its_highest_values(db_url: str) -> None:
    """fp_area is worst when high: its tail is the top 10% and the 90th percentile, as the jobs print it."""
    from core.metrics import ImageDiagnostics

    store = Store(db_url)
    ids = store.register_dataset("t/x", "synthetic", ".", INFOS[:8])
    fp = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9])
    n = len(fp)
    diag = ImageDiagnostics(fp_area=fp, fn_area=np.zeros(n), precision=np.ones(n), recall=np.ones(n),
                            boundary_iou=np.ones(n), hd95=np.zeros(n), fp_blobs=np.zeros(n, np.int64),
                            object_missed=np.zeros(n, bool), entropy=None)
    tid = store.start_trial(sweep="s", study="s/unet", arch="unet", number=0, params={}, device="cpu",
                            dataset="t/x", image_size=8)
    dice = np.full(n, 0.5)
    store.finish_trial(tid, state="complete", val_dice=0.5, results=ImageResults(
        np.array([ids[i.name] for i in INFOS[:8]]), dice, dice, dice, diagnostics=diag))
    row = q.trial_tail_scores(store, "s", metric="fp_area").set_index("trial_id").loc[tid]
    assert row["worst"] == pytest.approx(0.9) and row["worst10_mean"] == pytest.approx(0.9)
    assert row["p10"] == pytest.approx(np.percentile(fp, 90)) == pytest.approx(0.69)
    store.dispose()


def test_paired_scores_align_images_of_two_trials(ro: Store, tiny: dict) -> None:
    pairs = q.paired_scores(ro, tiny["trials"][("unet", 0)], tiny["trials"][("resnet34_unet", 0)])
    assert len(pairs) == 8
    first = pairs[pairs["name"] == "dog_0"].iloc[0]
    assert (first["dice_a"], first["dice_b"]) == pytest.approx((0.9, 0.1))


def test_image_across_trials_lists_every_trial_that_scored_it(ro: Store, tiny: dict) -> None:
    rows = q.image_across_trials(ro, tiny["ids"]["dog_0"], "s")
    assert sorted(rows["dice"].tolist()) == pytest.approx([0.1, 0.9, 0.95])
    assert rows.groupby("arch").size().to_dict() == {"resnet34_unet": 1, "unet": 2}


def test_masks_come_back_by_trial_and_image(ro: Store, tiny: dict) -> None:
    tid = tiny["trials"][("unet", 0)]
    pngs = q.mask_pngs(ro, [tid], [tiny["ids"]["dog_0"], tiny["ids"]["cat_1"]])
    assert decode_mask(pngs[(tid, tiny["ids"]["dog_0"])]).sum() == 8
    assert decode_mask(pngs[(tid, tiny["ids"]["cat_1"])]).sum() == 0
    assert q.mask_pngs(ro, [], [1]) == {}


def test_filter_options_cover_the_evaluated_images_only(ro: Store, tiny: dict) -> None:
    options = q.filter_options(ro, [tiny["trials"][("unet", 0)]])
    assert options["splits"] == ["test"] and options["species"] == ["cat", "dog"]
    assert options["brightness"] == pytest.approx((0.1, 0.8)) and options["fg_fraction"] == pytest.approx((0.05, 0.4))


def test_dataset_summary_and_roots(ro: Store, tiny: dict) -> None:
    summary = q.dataset_summary(ro, DATASET)
    assert summary["splits"] == {"test": 8, "train": 2} and summary["source"] == "oxford-pets"
    assert set(q.dataset_roots(ro)) == {DATASET} and q.dataset_summary(ro, "nope") is None


def test_queries_accept_an_engine_or_an_open_connection(ro: Store) -> None:
    with ro.engine.connect() as conn:
        assert q.has_results_tables(conn) and len(q.sweeps(conn)) == 2
    assert len(q.sweep_trials(ro.engine, "s")) == 5


# -- the user's own data and the review queue (schema v4) ---------------------------------------------------

def test_groups_filter_the_gallery_and_the_sweep_ranking(ro: Store, tiny: dict) -> None:
    tid = tiny["trials"][("unet", 0)]
    assert q.filter_options(ro, [tid])["groups"] == ["left", "right", q.NO_GROUP]  # images 6, 7 have none
    assert q.hardest_images(ro, tid, q.ImageFilter(groups=("right",)))["name"].tolist() == ["cat_5", "dog_4", "cat_3"]
    assert q.count_images(ro, tid, q.ImageFilter(groups=(q.NO_GROUP,))) == 2
    assert q.count_images(ro, tid, q.ImageFilter(groups=("left", q.NO_GROUP))) == 5
    assert q.count_images(ro, tid, q.ImageFilter(groups=())) == 0
    ranked = q.hard_for_every_model(ro, "s", q.ImageFilter(groups=("left",)))
    assert sorted(ranked["name"]) == ["cat_1", "dog_0", "dog_2"] and set(ranked["group_name"]) == {"left"}
    scores = q.image_scores(ro, [tid]).set_index("name")
    assert scores.loc["dog_0", "group_name"] == "left" and pd.isna(scores.loc["dog_6", "group_name"])


def test_pet_filters_leave_out_the_empty_breed_and_species_of_the_users_own_data(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    ids = store.register_dataset("folder/scans", "folder", tmp_path, [
        Info("scan (1)", "test", "", "", 0.5, 0.1, group="benign"),
        Info("scan (2)", "test", "", "", 0.5, 0.2, group="malignant")], layout="paired-folders")
    tid = store.start_trial(sweep="f", study="f/unet", arch="unet", number=0, params={}, device="cpu",
                            dataset="folder/scans", image_size=8)
    d = np.array([0.5, 0.7])
    store.finish_trial(tid, state="complete", val_dice=0.6, results=ImageResults(np.array(list(ids.values())), d, d, d))
    options = q.filter_options(store, [tid])
    assert options["breeds"] == [] and options["species"] == [] and options["groups"] == ["benign", "malignant"]
    assert q.dataset_kinds(store)["folder/scans"]["layout"] == "paired-folders"
    assert q.dataset_summary(store, "folder/scans")["groups"] == {"benign": 1, "malignant": 1}
    store.dispose()


def test_marks_and_likely_label_errors_filter_the_images(ro: Store, tiny: dict) -> None:
    from sqlalchemy import text

    from core.store import reviews

    writer = Store(tiny["db"])
    tid = tiny["trials"][("unet", 0)]
    try:
        assert q.filter_options(ro, [tid])["marks"] == [q.UNMARKED, "label error", "hard image", "fine"]
        before = q.reviews_version(ro)
        reviews.mark(writer, DATASET, "cat_7", "label error")
        reviews.mark(writer, DATASET, "cat_5", "fine", "looked at it")
        assert q.reviews_version(ro) != before
        assert q.hardest_images(ro, tid, q.ImageFilter(marks=("label error",)))["name"].tolist() == ["cat_7"]
        assert q.count_images(ro, tid, q.ImageFilter(marks=(q.UNMARKED,))) == 6
        assert q.count_images(ro, tid, q.ImageFilter(marks=(q.UNMARKED, "fine"))) == 7
        with writer.engine.begin() as conn:  # dog_6 and cat_5 look like label errors to the models
            conn.execute(text("UPDATE sweep_images SET label_suspicion = CASE image_id WHEN :a THEN 0.9 WHEN :b "
                              "THEN 0.8 ELSE 0.01 END WHERE sweep = 's'"), {"a": tiny["ids"]["dog_6"],
                                                                              "b": tiny["ids"]["cat_5"]})
        every = q.image_medians(ro, "s")
        assert len(every) == 8 and sorted(every["label_suspicion"].round(2)) == [0.01] * 6 + [0.8, 0.9]
        kept = q.hard_for_every_model(ro, "s", q.ImageFilter(skip_label_errors=True))["name"].tolist()
        # dog_6 by its score, cat_7 by its mark; cat_5 scores high but a person marked it fine
        assert len(kept) == 6 and {"dog_6", "cat_7"}.isdisjoint(kept) and "cat_5" in kept
    finally:
        with writer.engine.begin() as conn:
            conn.execute(text("DELETE FROM reviews"))
            conn.execute(text("UPDATE sweep_images SET label_suspicion = NULL"))
        writer.dispose()


def test_the_truth_as_scored_comes_back_by_image_at_its_size(ro: Store, tiny: dict) -> None:
    from sqlalchemy import text

    writer = Store(tiny["db"])
    truth = np.zeros((8, 8), bool)
    truth[2:5, 1:3] = True
    try:
        writer.record_truths([tiny["ids"]["dog_0"]], 8, [truth])
        found = q.truth_pngs(ro, [tiny["ids"]["dog_0"], tiny["ids"]["cat_1"]], 8)
        assert list(found) == [tiny["ids"]["dog_0"]] and (decode_mask(found[tiny["ids"]["dog_0"]]) == truth).all()
        assert q.truth_pngs(ro, [tiny["ids"]["dog_0"]], 16) == {} and q.truth_pngs(ro, [], 8) == {}
    finally:
        with writer.engine.begin() as conn:
            conn.execute(text("DELETE FROM truth_masks"))
        writer.dispose()
