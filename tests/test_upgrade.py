"""Schema v1 -> v2: a genuine v1 store (tests/v1_store.py) upgraded in place, row for row, its old trials
backfilled from their masks and the real sample's trimaps, on SQLite and PostgreSQL."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, select, text

from core.data.dataset import PreparedDataset, prepare_dataset
from core.metrics import NOT_COMPUTED, failure_modes, mask_diagnostics
from core.store import db as st
from core.store.db import Store
from jobs import upgrade as upgrade_job
from tests.pg_server import PostgresServer, postgres  # noqa: F401  (session fixture)
from tests.v1_store import V1Store, build_v1_store, dump_v1

V2_COLUMNS = ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95", "fp_blobs", "pet_missed", "entropy",
              "failure_mode")


@pytest.fixture(scope="module")
def pets64(pets_root: Path) -> PreparedDataset:
    return prepare_dataset(pets_root, 64, log=lambda _msg: None)


def _v2_rows(url: str, trial_id: int) -> dict[str, np.ndarray]:
    store = Store(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(st.image_results.c.image_id, *(st.image_results.c[c] for c in V2_COLUMNS))
                                .where(st.image_results.c.trial_id == trial_id)
                                .order_by(st.image_results.c.image_id)).all()
    finally:
        store.dispose()
    cols = list(zip(*rows))
    return {name: np.array(values, dtype=object) for name, values in zip(("image_id", *V2_COLUMNS), cols)}


def assert_upgraded(v1: V1Store, before: dict[str, list[tuple]], messages: list[str]) -> None:
    """Every v1 row unchanged, version 2, and each old trial's diagnostics equal to an evaluation's on its masks."""
    assert dump_v1(v1.url) == before
    store = Store(v1.url, read_only=True)
    assert store.schema_version == 2
    with store.engine.connect() as conn:
        assert conn.execute(select(st.schema_info.c.value).where(st.schema_info.c.key == "schema_version")).scalar() == "2"
        assert set(V2_COLUMNS) <= {c["name"] for c in inspect(conn).get_columns("image_results")}
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("image_results")}
        assert indexes["ix_image_results_trial_mode"] == ["trial_id", "failure_mode"]
        assert indexes["ix_image_results_trial_dice"] == ["trial_id", "dice"]  # v1's kept
    store.dispose()
    n_rows = len(before["image_results"])
    assert len(messages) == 1 and f"{n_rows} per-image results of {len(v1.trial_ids)} trials backfilled" in messages[0]
    assert "0 not computed" in messages[0] and "entropy is not computed" in messages[0]
    order = np.argsort(v1.image_ids)
    for tid in v1.trial_ids:
        got = _v2_rows(v1.url, tid)
        expected = mask_diagnostics(v1.preds[tid][order], v1.truths[order])
        assert got["image_id"].tolist() == sorted(v1.image_ids)
        for name in ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95"):
            assert got[name].astype(float) == pytest.approx(getattr(expected, name), abs=1e-9), name
        assert got["fp_blobs"].astype(int).tolist() == expected.fp_blobs.tolist()
        assert got["pet_missed"].astype(bool).tolist() == expected.pet_missed.tolist()
        assert all(v is None for v in got["entropy"])  # a 1-bit mask has no probabilities
        dice = np.array([r[2] for r in sorted(r for r in before["image_results"] if r[0] == tid)])
        modes = failure_modes(dice, expected.precision, expected.recall, expected.boundary_iou)
        assert got["failure_mode"].tolist() == modes.tolist()
        assert {"ok", "empty prediction"} <= set(modes)  # the fixture's perfect and empty predictions


def test_a_v1_sqlite_store_is_upgraded_in_place_row_for_row_and_backfilled(pets64, tmp_path: Path) -> None:
    v1 = build_v1_store(f"sqlite:///{tmp_path / 'old.db'}", pets64)
    before = dump_v1(v1.url)
    assert len(before["image_results"]) == 2 * len(v1.image_ids) and len(before["trials"]) == 3
    messages: list[str] = []
    Store(v1.url, log=messages.append).dispose()
    assert_upgraded(v1, before, messages)
    again: list[str] = []
    Store(v1.url, log=again.append).dispose()  # a v2 store is left alone
    assert again == [] and dump_v1(v1.url) == before


def test_a_v1_postgres_store_is_upgraded_in_place_row_for_row_and_backfilled(pets64,
                                                                            postgres: PostgresServer) -> None:
    v1 = build_v1_store(postgres.create_database("v1_upgrade"), pets64)
    before = dump_v1(v1.url)
    messages: list[str] = []
    Store(v1.url, log=messages.append).dispose()
    assert_upgraded(v1, before, messages)


def test_an_unreachable_dataset_root_leaves_old_rows_not_computed(pets64, tmp_path: Path) -> None:
    v1 = build_v1_store(f"sqlite:///{tmp_path / 'old.db'}", pets64)
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("UPDATE datasets SET root = ?", (str(tmp_path / "moved-away"),))
    before = dump_v1(v1.url)
    messages: list[str] = []
    Store(v1.url, log=messages.append).dispose()
    assert dump_v1(v1.url) == before
    n = len(before["image_results"])
    assert f"0 per-image results of 2 trials backfilled from their masks and trimaps, {n} not computed " \
           f"({n} dataset root {tmp_path / 'moved-away'} not found)" in messages[0], messages
    for tid in v1.trial_ids:
        got = _v2_rows(v1.url, tid)
        assert set(got["failure_mode"]) == {NOT_COMPUTED}
        assert all(v is None for name in V2_COLUMNS[:-1] for v in got[name])


def test_two_workers_opening_a_v1_store_at_once_upgrade_it_once(pets64, tmp_path: Path) -> None:
    v1 = build_v1_store(f"sqlite:///{tmp_path / 'old.db'}", pets64)
    before = dump_v1(v1.url)
    messages: list[str] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(v1.url, log=messages.append).dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(messages) == 1
    assert_upgraded(v1, before, messages)


def test_a_reader_leaves_a_v1_store_as_it_is(pets64, tmp_path: Path) -> None:
    v1 = build_v1_store(f"sqlite:///{tmp_path / 'old.db'}", pets64, n_trials=1)
    before = (tmp_path / "old.db").read_bytes()
    store = Store(v1.url, read_only=True)
    assert store.schema_version == 1
    with store.engine.connect() as conn:
        assert "failure_mode" not in {c["name"] for c in inspect(conn).get_columns("image_results")}
    store.dispose()
    assert (tmp_path / "old.db").read_bytes() == before


def test_the_upgrade_command_upgrades_once_then_has_nothing_to_do(pets64, tmp_path: Path, capsys) -> None:
    v1 = build_v1_store(f"sqlite:///{tmp_path / 'old.db'}", pets64, n_trials=1)
    assert upgrade_job.main(["--db", str(tmp_path / "old.db")]) == 0
    out = capsys.readouterr().out
    assert "from schema version 1 to 2 in place" in out and "per-image results by failure mode:" in out
    assert upgrade_job.main(["--db", v1.url]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_the_upgrade_command_on_a_missing_folder_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        upgrade_job.main(["--db", str(tmp_path / "nope" / "r.db")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and "does not exist" in err


def test_a_new_store_is_version_2_with_the_diagnostic_columns(db_url: str) -> None:
    store = Store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM schema_info WHERE key = 'schema_version'")).scalar() == "2"
        assert set(V2_COLUMNS) <= {c["name"] for c in inspect(conn).get_columns("image_results")}
    store.dispose()
