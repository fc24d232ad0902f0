"""The results store: schema, atomic per-trial writes, SQLite concurrency settings."""
from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, select, text, update

from core.store import db as st
from core.store.db import ImageResults, SchemaVersionError, Store, StoreError, decode_mask, encode_mask


@dataclass
class Info:
    name: str
    split: str = "test"
    breed: str = "Abyssinian"
    species: str = "cat"
    width: int = 500
    height: int = 375
    brightness: float = 0.4
    fg_fraction: float = 0.3


def _trial(store: Store, number: int = 0) -> int:
    return store.start_trial(sweep="s", study="s/unet", arch="unet", number=number, params={"lr": 1e-3},
                             device="cpu", dataset="oxford-pets/x", image_size=64)


def test_schema_has_the_documented_tables_and_columns(db_url: str) -> None:
    store = Store(db_url)
    cols = {t: {c["name"] for c in inspect(store.engine).get_columns(t)} for t in
            ("trials", "epochs", "images", "image_results", "masks", "datasets", "schema_info")}
    assert {"id", "study", "arch", "number", "state", "params", "val_dice", "test_dice", "epochs_run", "started_at",
            "finished_at", "device", "dataset", "image_size", "error"} <= cols["trials"]
    assert {"trial_id", "epoch", "train_loss", "val_loss", "train_dice", "val_dice", "lr", "seconds",
            "images_per_s"} <= cols["epochs"]
    assert {"id", "dataset", "name", "split", "breed", "species", "width", "height", "brightness",
            "fg_fraction"} <= cols["images"]
    assert {"trial_id", "image_id", "dice", "iou", "dice_no_border"} <= cols["image_results"]
    assert {"trial_id", "image_id", "png"} <= cols["masks"]
    index_cols = [tuple(i["column_names"]) for i in inspect(store.engine).get_indexes("image_results")]
    assert ("trial_id", "dice") in index_cols and ("image_id",) in index_cols


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 60000


def test_register_dataset_is_idempotent_and_returns_ids(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    ids = store.register_dataset("oxford-pets/x", "oxford-pets", tmp_path, [Info("a"), Info("b")])
    again = store.register_dataset("oxford-pets/x", "oxford-pets", tmp_path, [Info("a"), Info("b"), Info("c")])
    assert set(ids) == {"a", "b"} and {k: again[k] for k in ids} == ids and "c" in again
    assert store.count(st.images) == 3


def test_finish_trial_writes_results_and_masks_and_test_dice_is_their_mean(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    ids = store.register_dataset("oxford-pets/x", "oxford-pets", tmp_path, [Info("a"), Info("b"), Info("c")])
    tid = _trial(store)
    store.record_epoch(tid, 0, train_loss=0.5, val_loss=0.4, train_dice=0.6, val_dice=0.7, lr=1e-3, seconds=1.0,
                       images_per_s=10.0)
    mask = np.zeros((64, 64), bool)
    mask[10:40, 20:50] = True
    results = ImageResults(np.array([ids["a"], ids["b"], ids["c"]]), np.array([0.9, 0.5, 0.1]),
                           np.array([0.8, 0.4, 0.05]), np.array([0.95, 0.6, 0.2]), masks=[mask, mask, ~mask])
    test_dice = store.finish_trial(tid, state="complete", val_dice=0.7, results=results)
    row = store.trial(tid)
    assert test_dice == pytest.approx(0.5) and row["test_dice"] == pytest.approx(0.5)
    assert row["state"] == "complete" and row["epochs_run"] == 1 and row["finished_at"] is not None
    assert store.count(st.image_results, trial_id=tid) == 3 and store.count(st.masks, trial_id=tid) == 3
    with store.engine.connect() as conn:
        png = conn.execute(select(st.masks.c.png).where(st.masks.c.image_id == ids["c"])).scalar()
    assert np.array_equal(decode_mask(png), ~mask)


def test_a_failed_write_leaves_no_partial_results(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    ids = store.register_dataset("oxford-pets/x", "oxford-pets", tmp_path, [Info("a")])
    tid = _trial(store)
    bad = ImageResults(np.array([ids["a"], ids["a"]]), np.array([0.9, 0.8]), np.array([0.8, 0.7]),
                       np.array([0.9, 0.8]))  # duplicate image: the second insert violates the key
    with pytest.raises(Exception):
        store.finish_trial(tid, state="complete", results=bad)
    assert store.count(st.image_results) == 0
    assert store.trial(tid)["state"] == "running"


def test_masks_decode_alike_through_the_own_layout_and_through_pil_whole_or_on_the_vote_grid() -> None:
    import io

    from PIL import Image

    from core.store.mask_png import _decode_own

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (3, 17), (64, 64), (65, 65), (33, 250), (256, 256)):
        mask = rng.random(shape) < 0.4
        own = encode_mask(mask)
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG", optimize=True)  # another writer: rows filtered or not
        assert _decode_own(own) is not None  # encode_mask's own layout: unpacked without PIL
        for png in (own, buf.getvalue()):
            assert np.array_equal(decode_mask(png), mask)
            for step in (2, 4, 5):
                assert np.array_equal(decode_mask(png, step), mask[::step, ::step]), (shape, step)


def test_mask_png_is_small_at_256px() -> None:
    yy, xx = np.mgrid[:256, :256]
    blob = (xx - 128) ** 2 / 90**2 + (yy - 140) ** 2 / 70**2 < 1
    assert len(encode_mask(blob)) < 1024


def _silence(store: Store, trial_id: int, seconds: float) -> None:
    """The trial's last heartbeat `seconds` ago, as if its worker had died then."""
    beat = st.utc_now() - dt.timedelta(seconds=seconds)
    with store.engine.begin() as conn:
        conn.execute(update(st.trials).where(st.trials.c.id == trial_id).values(heartbeat_at=beat))


def test_claim_stale_fails_only_running_trials_silent_for_longer_than_the_grace(db_url: str) -> None:
    store = Store(db_url)
    silent, fresh, done = _trial(store, 0), _trial(store, 1), _trial(store, 2)
    _silence(store, silent, 60)
    _silence(store, done, 60)
    store.finish_trial(done, state="complete")
    assert store.stale_studies(30) == ["s/unet"] and store.stale_studies(90) == []
    assert [r["id"] for r in store.claim_stale("s/unet", 30, "worker died")] == [silent]
    assert store.claim_stale("s/unet", 30, "worker died") == []  # claimed once only
    assert (store.trial(silent)["state"], store.trial(silent)["error"]) == ("failed", "worker died")
    assert [store.trial(t)["state"] for t in (fresh, done)] == ["running", "complete"]
    assert store.stale_studies(30) == []


def test_a_trial_lost_before_its_row_is_recorded_once_and_its_worker_cannot_start_it_late(db_url: str) -> None:
    store = Store(db_url)
    lost = dict(sweep="s", study="s/unet", arch="unet", number=0, started_at=st.utc_now() - dt.timedelta(seconds=60),
                dataset="oxford-pets/x", image_size=64, error="worker died")
    assert store.record_lost(**lost) is True
    assert store.record_lost(**lost) is False  # another worker noticing the same loss
    with pytest.raises(st.TrialExistsError, match="already has a trial"):
        _trial(store, 0)  # the trial's own worker, had it only been slow
    [row] = store.study_trials("s/unet")
    assert (row["state"], row["error"], row["params"], row["epochs_run"]) == ("failed", "worker died", {}, 0)
    assert row["finished_at"] > row["started_at"]
    _trial(store, 1)
    assert store.record_lost(**{**lost, "number": 1}) is False  # a row written by its worker is never replaced
    assert store.study_trials("s/unet")[1]["state"] == "running"


def test_read_only_store_cannot_write(db_url: str) -> None:
    Store(db_url)
    ro = Store(db_url, read_only=True)
    with pytest.raises(Exception):
        _trial(ro)


def test_other_schema_version_is_refused_with_advice(db_url: str, tmp_path: Path) -> None:
    Store(db_url)
    con = sqlite3.connect(tmp_path / "results.db")
    con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(SchemaVersionError, match="version 99.*new"):
        Store(db_url, read_only=True)
    with pytest.raises(SchemaVersionError):
        Store(db_url)


def test_a_store_with_trials_but_no_schema_version_is_refused_by_writers_and_readers_alike(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE trials (id INTEGER PRIMARY KEY, note TEXT)")
    con.execute("INSERT INTO trials (note) VALUES ('written by something else')")
    con.commit()
    con.close()
    for read_only in (True, False):
        with pytest.raises(SchemaVersionError, match="version 0"):
            Store(f"sqlite:///{path}", read_only=read_only)
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"trials"} and con.execute("SELECT note FROM trials").fetchall() == [("written by something else",)]
    con.close()


def test_plain_paths_are_sqlite_urls(tmp_path: Path) -> None:
    assert st.normalize_url(tmp_path / "r.db") == f"sqlite:///{tmp_path / 'r.db'}"
    assert st.normalize_url("postgresql://u@localhost/db") == "postgresql://u@localhost/db"


def test_database_in_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope" / "results.db")


def test_unreachable_server_is_a_one_line_error() -> None:
    with pytest.raises(StoreError, match="cannot open database") as info:
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert "\n" not in str(info.value)


def test_a_trial_already_closed_is_not_overwritten(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    ids = store.register_dataset("oxford-pets/x", "oxford-pets", tmp_path, [Info("a")])
    tid = _trial(store)
    _silence(store, tid, 60)
    assert len(store.claim_stale("s/unet", 30, "worker died")) == 1
    late = ImageResults(np.array([ids["a"]]), np.array([0.9]), np.array([0.8]), np.array([0.9]))
    with pytest.raises(st.TrialClosedError):
        store.finish_trial(tid, state="complete", results=late)
    assert store.trial(tid)["state"] == "failed" and store.count(st.image_results) == 0
