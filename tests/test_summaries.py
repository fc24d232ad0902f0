"""The per-image summaries of each sweep (schema v3, core.store.summaries): after every close they equal
a summary computed here, independently, from image_results; they move with the closing transaction
only; and the dashboard's ranking reads them (core.store.queries.image_medians)."""
from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import select, text, update

from core.metrics import ImageDiagnostics
from core.store import queries as q
from core.store import summaries
from core.store.db import Store, make_engine
from core.store.schema import sweep_image_windows, sweep_images
from tests.pg_server import PostgresServer, postgres  # noqa: F401  (session fixture)

METRICS = ("dice", "dice_no_border", "iou", "fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95",
           "fp_blobs", "entropy")
WORST_FIRST = ("empty prediction", "missed object", "background leak", "boundary", "ok", "not computed")


def expected_summaries(url: str) -> dict[tuple[str, int], dict]:
    """Per (sweep, image) of complete trials, from image_results with numpy: medians, means, extremes, counts
    of each metric (NULL left out), trials per failure mode (NULL = not computed), the most common mode."""
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                f"SELECT trials.sweep, r.image_id, {', '.join('r.' + m for m in METRICS)}, r.failure_mode "
                "FROM image_results r JOIN trials ON trials.id = r.trial_id WHERE trials.state = 'complete'")).all()
    finally:
        engine.dispose()
    groups: dict[tuple[str, int], list[tuple]] = {}
    for row in rows:
        groups.setdefault((row[0], int(row[1])), []).append(row[2:])
    out = {}
    for key, group in groups.items():
        modes = Counter(r[-1] or "not computed" for r in group)
        summary = {"trials": len(group), "top_mode": min(WORST_FIRST, key=lambda m: -modes[m]),
                   **{"n_" + m.replace(" ", "_"): modes[m] for m in WORST_FIRST}}
        for j, metric in enumerate(METRICS):
            values = [float(r[j]) for r in group if r[j] is not None]
            summary[f"{metric}_trials"] = len(values)
            for stat, fn in (("median", np.median), ("mean", np.mean), ("min", np.min), ("max", np.max)):
                summary[f"{metric}_{stat}"] = float(fn(values)) if values else None
        out[key] = summary
    return out


def stored_summaries(url: str) -> dict[tuple[str, int], dict]:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            return {(r["sweep"], int(r["image_id"])): dict(r) for r in conn.execute(select(sweep_images)).mappings()}
    finally:
        engine.dispose()


def assert_summaries_match(url: str) -> int:
    """sweep_images equals expected_summaries, every column (means to 1e-12); returns the rows compared."""
    expected, stored = expected_summaries(url), stored_summaries(url)
    assert sorted(stored) == sorted(expected)
    for key, want in expected.items():
        got = stored[key]
        for column, value in want.items():
            if column.endswith("_mean") and value is not None:
                assert got[column] == pytest.approx(value, rel=1e-12, abs=1e-15), (key, column)
            else:
                assert got[column] == value, (key, column, got[column], value)
    return len(expected)


# -- a store written here ------------------------------------------------------------------------

N_IMAGES = 24


def _store(url: str) -> tuple[Store, np.ndarray]:
    store = Store(url)
    infos = [SimpleNamespace(name=f"img_{k}", split="test", breed=f"breed_{k % 3}", species="cat" if k % 2 else "dog",
                             width=64, height=64, brightness=0.04 * k, fg_fraction=0.02 * (k + 1))
             for k in range(N_IMAGES)]
    ids = store.register_dataset("synthetic/s", "synthetic", "/tmp", infos)
    return store, np.array([ids[f"img_{k}"] for k in range(N_IMAGES)], dtype=np.int64)


def _close(close_trial, store: Store, sweep: str, number: int, image_ids: np.ndarray, dice: np.ndarray,
           rng: np.random.Generator, diagnostics: bool = True, state: str = "complete") -> int:
    n = len(image_ids)
    diag = None
    if diagnostics:
        recall = np.clip(dice + rng.normal(0, 0.1, n), 0, 1)
        diag = ImageDiagnostics(fp_area=rng.random(n) * 0.2, fn_area=rng.random(n) * 0.2, precision=rng.random(n),
                                recall=recall, boundary_iou=np.clip(dice - 0.3, 0, 1), hd95=rng.exponential(5, n),
                                fp_blobs=rng.integers(0, 3, n), object_missed=recall < 0.5,
                                entropy=rng.random(n) if number % 4 else None)
    return close_trial(store, sweep, number, image_ids, dice, dataset="synthetic/s", image_size=64, state=state,
                       iou=dice * 0.9, dice_no_border=np.minimum(dice + 0.05, 1), diagnostics=diag)


def test_summaries_equal_image_results_after_every_close_and_recompute_only_when_the_median_leaves(
        close_trial, tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store, ids = _store(url)
    recomputed: list[int] = []
    add = summaries.add_trial
    monkeypatch.setattr(summaries, "add_trial", lambda *a: recomputed.append(add(*a)) or recomputed[-1])
    rng = np.random.default_rng(0)
    for number in range(3 * summaries.WINDOW):
        # a run of low values, then of high ones: the medians walk out of their windows
        level = 0.2 if number < 20 else 0.8 if number < 40 else 0.5
        subset = ids if number % 5 else ids[::2]  # some trials evaluate half the images
        dice = np.clip(level + rng.normal(0, 0.03, len(subset)), 0, 1)
        _close(close_trial, store, "a", number, subset, dice, rng, diagnostics=number % 7 != 3)
        if number in (0, 1, summaries.WINDOW, 20, 30, 3 * summaries.WINDOW - 1):
            assert assert_summaries_match(url) == (N_IMAGES // 2 if number == 0 else N_IMAGES)
    _close(close_trial, store, "a", 99, ids, rng.random(N_IMAGES), rng, state="pruned")  # only complete trials count
    _close(close_trial, store, "b", 0, ids[:5], np.full(5, 0.25), rng)                  # another sweep, its own rows
    assert assert_summaries_match(url) == N_IMAGES + 5
    assert recomputed[:summaries.WINDOW] == [0] * summaries.WINDOW  # every value fits the window
    assert sum(recomputed) > 0  # the runs pushed medians out of their windows: recomputed, still exact
    store.dispose()


def test_the_ranking_reads_the_summaries_and_agrees_with_every_result(close_trial, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store, ids = _store(url)
    rng = np.random.default_rng(1)
    for number in range(30):
        _close(close_trial, store, "a", number, ids, np.clip(rng.beta(4, 2, N_IMAGES) - 0.01 * number, 0, 1), rng)
    store.dispose()
    ro = Store(url, read_only=True)
    assert q.has_summaries(ro)
    filters = [q.ImageFilter(metric=m) for m in METRICS] + [
        q.ImageFilter(metric="dice", species=("cat",), score=(0.3, 0.8)),
        q.ImageFilter(metric="hd95", modes=("missed object", "background leak"), brightness=(0.1, 0.7)),
        q.ImageFilter(metric="dice", modes=())]
    for flt in filters:
        fast, slow = q.image_medians(ro, "a", flt), q.image_medians_from_results(ro, "a", flt)
        # the summaries carry the suspect-label score too (v4); image_results alone cannot give it
        assert [c for c in fast.columns if c != "label_suspicion"] == list(slow.columns)
        assert fast["image_id"].tolist() == slow["image_id"].tolist(), flt
        for column in ("median", "min", "max", "trials", "mode", "mode_trials", "evaluated"):
            assert fast[column].tolist() == slow[column].tolist(), (flt, column)
        assert fast["mean"].astype(float).tolist() == pytest.approx(slow["mean"].astype(float).tolist(), rel=1e-12)
    expected = expected_summaries(url)
    tops = {i: s["top_mode"] for (_, i), s in expected.items()}
    chosen = Counter(tops.values()).most_common(1)[0][0]
    ranked = q.image_medians(ro, "a", q.ImageFilter(modes=(chosen,)))
    want = sorted((expected[("a", i)]["dice_median"], i) for i, mode in tops.items() if mode == chosen)
    assert ranked["image_id"].tolist() == [i for _, i in want] and set(ranked["mode"]) == {chosen}
    assert ranked["mode_trials"].tolist() == [expected[("a", i)]["n_" + chosen.replace(" ", "_")] for _, i in want]
    assert q.sweep_top_modes(ro, "a") == [m for m in ("ok", "boundary", "missed object", "background leak",
                                                      "empty prediction", "not computed") if m in set(tops.values())]
    ro.dispose()


def test_a_close_that_fails_leaves_the_summaries_as_they_were(close_trial, tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store, ids = _store(url)
    rng = np.random.default_rng(2)
    _close(close_trial, store, "a", 0, ids, rng.random(N_IMAGES), rng)
    before = stored_summaries(url)
    add = summaries.add_trial

    def add_then_fail(*args):
        add(*args)
        raise RuntimeError("disk full")

    monkeypatch.setattr(summaries, "add_trial", add_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _close(close_trial, store, "a", 1, ids, rng.random(N_IMAGES), rng)
    assert stored_summaries(url) == before
    assert store.count(sweep_images) == N_IMAGES and assert_summaries_match(url) == N_IMAGES
    store.dispose()


def test_a_window_of_another_layout_is_recomputed_not_misread(close_trial, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store, ids = _store(url)
    rng = np.random.default_rng(3)
    for number in range(3):
        _close(close_trial, store, "a", number, ids, rng.random(N_IMAGES), rng)
    with store.engine.begin() as conn:
        conn.execute(update(sweep_image_windows).where(sweep_image_windows.c.image_id == int(ids[0]))
                     .values(state=b"\x00" * 8))
    _close(close_trial, store, "a", 3, ids, rng.random(N_IMAGES), rng)
    assert assert_summaries_match(url) == N_IMAGES
    store.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_closing_trials_of_one_sweep_at_once_lose_no_update(close_trial, backend, tmp_path,
                                                                    request) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database("summaries_race")
    store, ids = _store(url)
    store.dispose()
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        own = Store(url)
        rng = np.random.default_rng(10 + k)
        try:
            for number in range(6):
                _close(close_trial, own, "a", 100 * k + number, ids, rng.random(N_IMAGES), rng)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert assert_summaries_match(url) == N_IMAGES
    assert {s["trials"] for s in stored_summaries(url).values()} == {18}
