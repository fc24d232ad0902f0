"""Schema upgrades in place, on SQLite and PostgreSQL: a genuine v1 store (tests/v1_store.py) row for row,
its old trials backfilled from their masks and the real sample's trimaps; a genuine v2 store
(tests/v2_store.py) row for row; both given the v3 per-image summaries of every sweep."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import inspect, select, text

from core.data.dataset import PreparedDataset, prepare_dataset
from core.metrics import NOT_COMPUTED, failure_modes, mask_diagnostics
from core.store import db as st
from core.store import summaries
from core.store.db import Store, decode_mask
from jobs import upgrade as upgrade_job
from tests.pg_server import PostgresServer, postgres  # noqa: F401  (session fixture)
from tests.test_summaries import assert_summaries_match
from tests.v1_store import V1Store, build_v1_store, dump_v1
from tests.v2_store import build_v2_store, dump_v2

V2_COLUMNS = ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95", "fp_blobs", "object_missed", "entropy",
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
    """Every v1 row unchanged, version 3, each old trial's diagnostics equal to an evaluation's on its masks,
    and the per-image summaries equal to those computed from image_results."""
    assert dump_v1(v1.url) == before
    store = Store(v1.url, read_only=True)
    assert store.schema_version == st.SCHEMA_VERSION == 6
    with store.engine.connect() as conn:
        assert conn.execute(select(st.schema_info.c.value).where(st.schema_info.c.key == "schema_version")).scalar() == "6"
        assert set(V2_COLUMNS) <= {c["name"] for c in inspect(conn).get_columns("image_results")}
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("image_results")}
        assert indexes["ix_image_results_trial_mode"] == ["trial_id", "failure_mode"]
        assert indexes["ix_image_results_trial_dice"] == ["trial_id", "dice"]  # v1's kept
    store.dispose()
    n_rows = len(before["image_results"])
    assert len(messages) == 1 and f"{n_rows} per-image results of {len(v1.trial_ids)} trials backfilled" in messages[0]
    assert "0 not computed" in messages[0] and "entropy is not computed" in messages[0]
    assert "from schema version 1 to 6 in place" in messages[0]
    assert f"per-image summaries of 1 sweep built ({len(v1.image_ids)} images, from {n_rows} per-image results)" \
        in messages[0]
    assert assert_summaries_match(v1.url) == len(v1.image_ids)
    order = np.argsort(v1.image_ids)
    for tid in v1.trial_ids:
        got = _v2_rows(v1.url, tid)
        expected = mask_diagnostics(v1.preds[tid][order], v1.truths[order])
        assert got["image_id"].tolist() == sorted(v1.image_ids)
        for name in ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95"):
            assert got[name].astype(float) == pytest.approx(getattr(expected, name), abs=1e-9), name
        assert got["fp_blobs"].astype(int).tolist() == expected.fp_blobs.tolist()
        assert got["object_missed"].astype(bool).tolist() == expected.object_missed.tolist()
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
    assert assert_summaries_match(v1.url) == len(v1.image_ids)  # dice and IoU summarised; diagnostics count 0


def open_twice_at_once(url: str) -> tuple[list[str], list[BaseException]]:
    """Two workers open the store at the same moment: what they logged, and what they raised."""
    messages: list[str] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(url, log=messages.append).dispose()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return messages, errors


def test_two_workers_opening_a_v1_store_at_once_upgrade_it_once(pets64, tmp_path: Path) -> None:
    v1 = build_v1_store(f"sqlite:///{tmp_path / 'old.db'}", pets64)
    before = dump_v1(v1.url)
    messages, errors = open_twice_at_once(v1.url)
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
    assert "from schema version 1 to 6 in place" in out and "per-image results by failure mode:" in out
    assert upgrade_job.main(["--db", v1.url]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_the_upgrade_command_on_a_missing_folder_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        upgrade_job.main(["--db", str(tmp_path / "nope" / "r.db")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and "does not exist" in err


def test_a_new_store_is_version_5_with_the_diagnostic_columns_and_the_summary_tables(db_url: str) -> None:
    store = Store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM schema_info WHERE key = 'schema_version'")).scalar() == "6"
        assert set(V2_COLUMNS) <= {c["name"] for c in inspect(conn).get_columns("image_results")}
        assert {"sweep_images", "sweep_image_windows"} <= set(inspect(conn).get_table_names())
    store.dispose()


# -- v2 -> v3 ---------------------------------------------------------------------------------------

def assert_upgraded_from_v2(url: str, before: dict[str, list[tuple]], messages: list[str], images: int) -> None:
    """Every v2 row unchanged, version 3, one line, and the summaries equal to those computed from image_results."""
    assert dump_v2(url) == before
    store = Store(url, read_only=True)
    assert store.schema_version == st.SCHEMA_VERSION == 6
    store.dispose()
    complete = {t[0] for t in before["trials"] if t[5] == "complete"}
    results = sum(1 for r in before["image_results"] if r[0] in complete)
    truths = len({r[1] for r in before["image_results"] if r[0] in complete})  # one per image at the trials' size
    assert messages == [f"upgraded results store {st.display_url(url)} from schema version 2 to 6 in place: "
                        f"per-image summaries of 2 sweeps built ({images} images, from {results} per-image results); "
                        f"{truths} ground truths rebuilt from trimaps for the suspect-label score; "
                        f"{truths} images as scored stored for its image evidence; "
                        f"renamed image_results.pet_missed -> object_missed (docs/store.md)"]
    assert assert_summaries_match(url) == images


def test_a_v2_sqlite_store_is_upgraded_in_place_row_for_row_with_its_summaries(pets64, tmp_path: Path) -> None:
    v2 = build_v2_store(f"sqlite:///{tmp_path / 'v2.db'}", pets64)
    before = dump_v2(v2.url)
    assert len(before["trials"]) == 7 and {r[-1] for r in before["image_results"]} >= {"not computed", "ok"}
    messages: list[str] = []
    Store(v2.url, log=messages.append).dispose()
    images = len(v2.image_ids) + 20  # sweep "old" scored every test image, sweep "other" the first 20
    assert_upgraded_from_v2(v2.url, before, messages, images)
    again: list[str] = []
    Store(v2.url, log=again.append).dispose()  # a v3 store is left alone
    assert again == [] and dump_v2(v2.url) == before


def test_a_v2_postgres_store_is_upgraded_in_place_row_for_row_with_its_summaries(pets64,
                                                                              postgres: PostgresServer) -> None:
    v2 = build_v2_store(postgres.create_database("v2_upgrade"), pets64)
    before = dump_v2(v2.url)
    messages: list[str] = []
    Store(v2.url, log=messages.append).dispose()
    assert_upgraded_from_v2(v2.url, before, messages, len(v2.image_ids) + 20)


def test_an_upgrade_that_fails_leaves_the_v2_store_as_it_was(pets64, tmp_path: Path, monkeypatch) -> None:
    v2 = build_v2_store(f"sqlite:///{tmp_path / 'v2.db'}", pets64)
    before = dump_v2(v2.url)
    build = summaries.build

    def build_then_fail(conn):
        build(conn)
        raise OSError("disk full")

    monkeypatch.setattr(summaries, "build", build_then_fail)
    with pytest.raises(OSError, match="disk full"):
        Store(v2.url, log=lambda _m: None)
    reader = Store(v2.url, read_only=True)
    assert reader.schema_version == 2
    with reader.engine.connect() as conn:
        assert not {"sweep_images", "sweep_image_windows"} & set(inspect(conn).get_table_names())
    reader.dispose()
    assert dump_v2(v2.url) == before
    monkeypatch.setattr(summaries, "build", build)
    messages: list[str] = []
    Store(v2.url, log=messages.append).dispose()  # the next writer upgrades it
    assert_upgraded_from_v2(v2.url, before, messages, len(v2.image_ids) + 20)


def test_two_workers_opening_a_v2_store_at_once_upgrade_it_once(pets64, tmp_path: Path) -> None:
    v2 = build_v2_store(f"sqlite:///{tmp_path / 'v2.db'}", pets64)
    before = dump_v2(v2.url)
    messages, errors = open_twice_at_once(v2.url)
    assert errors == []
    assert_upgraded_from_v2(v2.url, before, messages, len(v2.image_ids) + 20)


def test_trials_closing_after_the_upgrade_keep_the_summaries_exact(pets64, tmp_path: Path) -> None:
    v2 = build_v2_store(f"sqlite:///{tmp_path / 'v2.db'}", pets64)
    store = Store(v2.url, log=lambda _m: None)
    rng = np.random.default_rng(0)
    ids = np.array(v2.image_ids)
    for number in range(3, 3 + summaries.WINDOW + 4):  # past the window: its upgraded windows are used, then moved
        tid = store.start_trial(sweep="old", study="old/unet", arch="unet", number=number, params={}, device="cpu",
                                dataset=pets64.name, image_size=64)
        dice = rng.random(len(ids))
        store.finish_trial(tid, state="complete", val_dice=0.5, results=st.ImageResults(ids, dice, dice, dice))
    store.dispose()
    assert assert_summaries_match(v2.url) == len(ids) + 20


def test_the_upgrade_command_upgrades_a_v2_store(pets64, tmp_path: Path, capsys) -> None:
    build_v2_store(f"sqlite:///{tmp_path / 'v2.db'}", pets64)
    assert upgrade_job.main(["--db", str(tmp_path / "v2.db")]) == 0
    out = capsys.readouterr().out
    assert "from schema version 2 to 6 in place: per-image summaries of 2 sweeps built" in out


# -- v3 -> v4 ---------------------------------------------------------------------------------------

def test_a_v3_store_is_upgraded_in_place_row_for_row_with_the_v4_columns_and_tables(pets64, tmp_path: Path) -> None:
    from tests.v3_store import V4_COLUMNS, V4_TABLES, build_v3_store, dump_v3

    url = f"sqlite:///{tmp_path / 'v3.db'}"
    build_v3_store(url, pets64)
    before = dump_v3(url)
    assert len(before["trials"]) == 7 and len(before["sweep_images"]) == len(before["sweep_image_windows"]) > 0
    assert Store(url, read_only=True).schema_version == 3  # a reader leaves it as it is
    messages: list[str] = []
    Store(url, log=messages.append).dispose()
    assert len(messages) == 1 and "from schema version 3 to 6 in place" in messages[0]
    assert dump_v3(url) == before
    store = Store(url, read_only=True)
    assert store.schema_version == st.SCHEMA_VERSION == 6
    with store.engine.connect() as conn:
        assert set(V4_TABLES) <= set(inspect(conn).get_table_names())
        for table, columns in V4_COLUMNS.items():
            assert set(columns) <= {c["name"] for c in inspect(conn).get_columns(table)}
        assert conn.execute(text("SELECT count(*) FROM images WHERE group_name IS NOT NULL")).scalar() == 0
    store.dispose()


def _entropy_medians(conn, sweep: str):
    """sweep_images.entropy_median per image id: the models' certainty the score weighs."""
    from core.store.schema import sweep_images as s

    rows = conn.execute(select(s.c.image_id, s.c.entropy_median).where(s.c.sweep == sweep)).all()
    return pd.Series({i: np.nan if e is None else e for i, e in rows}, dtype=float)


def test_a_v3_store_gets_its_suspect_label_scores_from_its_masks_and_the_trimaps(pets64, pets_root: Path,
                                                                                   tmp_path: Path) -> None:
    import shutil

    from PIL import Image

    from core.data.layout import TRIMAP_BACKGROUND, trimap_path
    from core.labels import label_parts
    from core.store import queries, suspicion
    from tests.v3_store import build_v3_store

    url = f"sqlite:///{tmp_path / 'v3.db'}"
    v3 = build_v3_store(url, pets64)
    # the dataset's root now holds one wrong trimap: the second test image's pet erased (tests/v2_store.py predicts
    # it holed, with a blob, right and shifted: never empty)
    root = tmp_path / "pets"
    shutil.copytree(pets_root / "annotations", root / "annotations")
    test = pets64.indices("test")
    erased = pets64.infos[test[1]].name
    shape = np.asarray(Image.open(trimap_path(root, erased))).shape
    Image.fromarray(np.full(shape, TRIMAP_BACKGROUND, np.uint8)).save(trimap_path(root, erased))
    engine = st.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE datasets SET root = :root"), {"root": str(root)})
    engine.dispose()

    messages: list[str] = []
    Store(url, log=messages.append).dispose()
    assert f"{len(v3.image_ids)} ground truths rebuilt from trimaps" in messages[0]
    truths = pets64.masks[test].astype(bool)
    truths[1] = False
    store = Store(url, read_only=True)
    with store.engine.connect() as conn:
        ranked = queries.suspects(conn, "old").set_index("image_id")  # four complete trials
        entropy = _entropy_medians(conn, "old").reindex(ranked.index)
        typical = float(np.median(entropy.dropna()))
        for k, image_id in enumerate(v3.image_ids):
            assert queries.truth_mask(conn, image_id, 64).tolist() == truths[k].tolist()
            masks = conn.execute(select(st.masks.c.png).join(st.trials, st.trials.c.id == st.masks.c.trial_id)
                                 .where(st.trials.c.sweep == "old", st.trials.c.state == "complete",
                                        st.masks.c.image_id == image_id)).scalars().all()
            row = ranked.loc[image_id]
            votes = np.sum([decode_mask(bytes(m)) for m in masks], axis=0)
            expected = label_parts(votes[None], len(masks), truths[k][None], np.array([entropy[image_id]]),
                                   np.array([row["dice_median"]]), typical=typical)
            for column in suspicion.LABEL_COLUMNS:
                assert row[column] == pytest.approx(float(getattr(expected, column)[0])), column
            np.testing.assert_allclose(queries.consensus(conn, "old", image_id), votes / len(masks))
        # the models stand against the erased mask (its stored dice are against the trimap as it was then)
        assert ranked.loc[v3.image_ids[1], "contradiction"] > 0.5 and ranked.loc[v3.image_ids[1], "label_suspicion"] > 0
        assert (ranked.drop(index=v3.image_ids[1])["contradiction"] < 0.2).all()
        other = queries.suspects(conn, "other")  # one complete trial: too few votes for a score
        assert len(other) == 20 and other["label_suspicion"].isna().all()
    store.dispose()


def _move_dataset_away(url: str, tmp_path: Path) -> None:
    """The store's datasets now name a root that is gone."""
    engine = st.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE datasets SET root = :gone"), {"gone": str(tmp_path / "moved-away")})
    engine.dispose()


def test_a_v3_store_whose_dataset_root_is_gone_keeps_null_label_scores(pets64, tmp_path: Path) -> None:
    from tests.v3_store import build_v3_store

    url = f"sqlite:///{tmp_path / 'v3.db'}"
    build_v3_store(url, pets64)
    _move_dataset_away(url, tmp_path)
    Store(url, log=lambda _msg: None).dispose()
    store = Store(url, read_only=True)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM truth_masks")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM sweep_image_votes")).scalar() > 0  # the votes are kept
        assert conn.execute(text("SELECT count(*) FROM sweep_images WHERE label_suspicion IS NOT NULL")).scalar() == 0
    store.dispose()


# -- v4 -> v5 ---------------------------------------------------------------------------------------

def _scores(url: str) -> dict[tuple[str, int], tuple[float | None, float | None]]:
    """(sweep, image id) -> (label_suspicion, image_evidence) of a v5 store."""
    from core.store.schema import sweep_images as s

    store = Store(url, read_only=True)
    with store.engine.connect() as conn:
        rows = conn.execute(select(s.c.sweep, s.c.image_id, s.c.label_suspicion, s.c.image_evidence)).all()
    store.dispose()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def test_a_v4_store_is_upgraded_in_place_row_for_row_and_its_scores_gain_the_image_evidence(pets64, tmp_path: Path
                                                                                           ) -> None:
    from core.labels import on_grid
    from core.store.mask_png import decode_image
    from tests.v4_store import build_v4_store, dump_v4

    url = f"sqlite:///{tmp_path / 'v4.db'}"
    v4 = build_v4_store(url, pets64)
    before = dump_v4(url)
    rows = dump_v4(url, leave_out=("label_suspicion",))
    assert Store(url, read_only=True).schema_version == 4  # a reader leaves it as it is
    messages: list[str] = []
    Store(url, log=messages.append).dispose()
    truths = len(before["truth_masks"])
    assert len(messages) == 1 and "from schema version 4 to 6 in place" in messages[0]
    assert f"{truths} images as scored stored for its image evidence" in messages[0]
    assert dump_v4(url, leave_out=("label_suspicion",)) == rows  # every v4 row as it was, but the scores
    store = Store(url, read_only=True)
    with store.engine.connect() as conn:
        images = dict(conn.execute(select(st.truth_masks.c.image_id, st.truth_masks.c.image)).all())
    store.dispose()
    test = pets64.indices("test")
    by_id = dict(zip(v4.image_ids, test))
    assert len(images) == truths and all(decode_image(images[i]).tolist() == on_grid(pets64.images[by_id[i]]).tolist()
                                         for i in images)
    scores = _scores(url)
    old = [(key, value) for key, value in scores.items() if key[0] == "old"]
    assert old and all(evidence is not None for _, (_, evidence) in old)
    v4_scores = _v4_scores(before)
    for key, (score, evidence) in old:  # every other part is as it was: the score is v4's times the evidence
        assert score == pytest.approx(v4_scores[key] * evidence)
    assert any(evidence != 1.0 for _, (_, evidence) in old)


def _v4_scores(dump: dict[str, list[tuple]]) -> dict[tuple[str, int], float]:
    """(sweep, image id) -> label_suspicion of a v4 dump's sweep_images rows (its column order: the schema's)."""
    from core.store.schema import sweep_images as s

    columns = [c.name for c in s.columns if c.name != "image_evidence"]
    at = columns.index("label_suspicion")
    return {(r[0], r[1]): r[at] for r in dump["sweep_images"]}


def test_a_v4_store_whose_images_are_gone_keeps_its_v4_scores(pets64, tmp_path: Path) -> None:
    from tests.v4_store import build_v4_store, dump_v4

    url = f"sqlite:///{tmp_path / 'v4.db'}"
    build_v4_store(url, pets64)
    _move_dataset_away(url, tmp_path)
    before = dump_v4(url)
    messages: list[str] = []
    Store(url, log=messages.append).dispose()
    assert "images as scored" not in messages[0]
    assert dump_v4(url) == before  # every row as it was, the scores too: no image, no evidence (counted as 1)
    assert all(evidence is None for _, evidence in _scores(url).values())


def test_each_versions_tables_and_columns_are_what_schema_holds_says(pets64, tmp_path: Path) -> None:
    """schema.ADDED_IN and RENAMED_IN are how a reader knows an older store's columns from its version alone:
    check them against a real store of every version."""
    from core.store.schema import holds, metadata, stored_name
    from tests.v3_store import build_v3_store
    from tests.v4_store import build_v4_store

    builders = {1: lambda url: build_v1_store(url, pets64), 2: lambda url: build_v2_store(url, pets64),
                3: lambda url: build_v3_store(url, pets64), 4: lambda url: build_v4_store(url, pets64),
                5: lambda url: Path(url.removeprefix("sqlite:///")).write_bytes(V5_FIXTURE.read_bytes()),
                6: lambda url: Store(url).dispose()}
    for version, build in builders.items():
        url = f"sqlite:///{tmp_path / f'v{version}.db'}"
        build(url)
        store = Store(url, read_only=True)
        assert store.schema_version == version
        with store.engine.connect() as conn:
            inspector = inspect(conn)
            for table in metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)} if inspector.has_table(table.name) else set()
                assert holds(version, table.name) == bool(present), (version, table.name)
                for column in table.columns if present else ():
                    name = stored_name(version, table.name, column.name)
                    assert holds(version, table.name, column.name) == (name in present), (version, table.name, name)
        store.dispose()


# -- v5 -> v6 ---------------------------------------------------------------------------------------

V5_FIXTURE = Path(__file__).parent / "fixtures" / "v5_store.sqlite"  # made by the v5 code (commit 6750b48):
# a jobs.sweep of unet on the pet sample at 32 px (1 complete, 4 pruned trials) and two jobs.train runs


def _v5_copy(tmp_path: Path) -> str:
    path = tmp_path / "v5.sqlite"
    path.write_bytes(V5_FIXTURE.read_bytes())
    return f"sqlite:///{path}"


def _v5_dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every table of the genuine v5 store, its v5 columns only, under whichever name the store has."""
    from tests.store_renames import dump_tables

    with sqlite3.connect(f"file:{V5_FIXTURE}?immutable=1", uri=True) as fixture:  # the file itself stays untouched
        tables = [t for (t,) in fixture.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if t != "schema_info"]
        v5 = {t: [row[1] for row in fixture.execute(f"PRAGMA table_info({t})")] for t in tables}
    return dump_tables(url, v5.items())


def test_a_genuine_v5_store_is_upgraded_in_place_every_row_kept_under_the_neutral_names(tmp_path: Path) -> None:
    url = _v5_copy(tmp_path)
    before = _v5_dump(url)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
        assert raw.execute("SELECT count(*) FROM image_results WHERE failure_mode = 'missed pet'").fetchone()[0] == 43
        missed_pet = raw.execute("SELECT sum(n_missed_pet) FROM sweep_images").fetchone()[0]
    assert Store(url, read_only=True).schema_version == 5
    messages: list[str] = []
    Store(url, log=messages.append).dispose()
    assert messages == [f"upgraded results store {st.display_url(url)} from schema version 5 to 6 in place: "
                        "per-image summaries of 2 sweeps built (120 images, from 180 per-image results); "
                        "renamed image_results.pet_missed -> object_missed, sweep_images.n_missed_pet -> "
                        "n_missed_object (docs/store.md)"]
    assert _v5_dump(url) == before  # every v5 row, 'missed pet' read as 'missed object'
    store = Store(url, read_only=True)
    assert store.schema_version == 6
    with store.engine.connect() as conn:
        modes = dict(conn.execute(text("SELECT failure_mode, count(*) FROM image_results GROUP BY 1")).all())
        assert modes["missed object"] == 43 and "missed pet" not in modes
        assert conn.execute(text("SELECT sum(n_missed_object) FROM sweep_images")).scalar() == missed_pet
        assert conn.execute(text("SELECT count(*) FROM sweep_images WHERE top_mode = 'missed pet'")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM trials WHERE encoder_weights IS NOT NULL "
                                 "OR checkpoint_sha256 IS NOT NULL")).scalar() == 0  # unknown before v6: NULL
    store.dispose()
    assert assert_summaries_match(url) == 120


def test_the_dashboard_reads_a_v5_store_as_it_is_in_the_current_words(tmp_path: Path) -> None:
    from core.store import queries as q

    url = _v5_copy(tmp_path)
    store = Store(url, read_only=True)  # a reader does not upgrade
    try:
        assert store.schema_version == 5
        sweeps = q.sweeps(store.engine)["sweep"].tolist()
        assert sorted(sweeps) == ["oxford-pets-sample-32px", "v5-fixture"]
        best = q.best_trials(store.engine, "v5-fixture")
        assert best["arch"].tolist() == ["resnet34_unet", "unet"] and best["encoder_weights"].isna().all()  # v6's: NULL
        trial_ids = best["id"].tolist()
        counts = q.failure_mode_counts(store.engine, trial_ids)
        assert "missed object" in set(counts["failure_mode"]) and "missed pet" not in set(counts["failure_mode"])
        medians = q.image_medians(store.engine, "v5-fixture")
        assert len(medians) == 60 and "missed object" in set(medians["mode"]) and "missed pet" not in set(medians["mode"])
        missed = q.image_medians(store.engine, "v5-fixture", q.ImageFilter(modes=("missed object",)))
        assert 0 < len(missed) < 60
        hardest = q.hardest_images(store.engine, trial_ids[0], q.ImageFilter(modes=("missed object",)), limit=100)
        assert len(hardest) and set(hardest["failure_mode"]) == {"missed object"}
        assert "missed object" in q.filter_options(store.engine, trial_ids)["modes"]
    finally:
        store.dispose()
    with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:  # and left it as it was
        assert raw.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()[0] == "5"
