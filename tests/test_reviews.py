"""Review marks: written (upsert, removal) and read on SQLite and PostgreSQL while a worker closes trials,
refused on a read-only store, exported as CSV with the sweep's suspect-label score."""
from __future__ import annotations

import csv
import io
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.store import reviews
from core.store.db import ImageResults, Store, StoreError
from core.store.schema import REVIEW_MARKS
from tests.pg_server import PostgresServer, postgres  # noqa: F401  (session fixture)

DATASET = "synthetic/r"
N = 8
S = 16


def _setup(url: str, root: Path) -> tuple[Store, dict[str, int]]:
    store = Store(url)
    infos = [SimpleNamespace(name=f"im{k}", split="test", breed="b", species="cat", width=S, height=S,
                             brightness=0.5, fg_fraction=0.3, path=f"scans/im {k}.png" if k == 1 else None)
             for k in range(N)]
    return store, store.register_dataset(DATASET, "synthetic", root, infos)


def _worker(url: str, ids: dict[str, int], trials: int, stop: threading.Event, errors: list) -> None:
    """A sweep worker of its own (its own engine), closing trials with masks as fast as it can."""
    store = Store(url)
    image_ids = np.array([ids[f"im{k}"] for k in range(N)])
    truth = np.zeros((N, S, S), bool)
    truth[:, 4:12, 4:12] = True
    try:
        store.record_truths(image_ids, S, truth)
        for number in range(trials):
            tid = store.start_trial(sweep="s", study="s/unet", arch="unet", number=number, params={}, device="cpu",
                                    dataset=DATASET, image_size=S)
            pred = truth.copy()
            pred[2] = False  # every model: im2 holds no object, its mask says otherwise
            dice = np.where(np.arange(N) == 2, 0.0, 1.0)  # as the models score against the masks
            store.finish_trial(tid, state="complete", val_dice=0.5,
                               results=ImageResults(image_ids, dice, dice, dice, masks=pred))
    except BaseException as exc:  # reported by the test
        errors.append(exc)
    finally:
        stop.set()
        store.dispose()


def _marks_beside_a_worker(url: str, root: Path) -> None:
    store, ids = _setup(url, root)
    stop, errors = threading.Event(), []
    worker = threading.Thread(target=_worker, args=(url, ids, 6, stop, errors))
    worker.start()
    dashboard = Store(url)  # the dashboard's own engine
    written = 0
    while not stop.is_set() or written < 3 * N:
        k = written % N
        reviews.mark(dashboard, DATASET, f"im{k}", REVIEW_MARKS[written % 3], note=f"pass {written // N}")
        written += 1
    worker.join()
    assert not errors, errors
    got = reviews.marks(dashboard, DATASET).set_index("image")
    assert len(got) == N  # an upsert: one row per image, the latest mark
    last = {f"im{(written - 1 - j) % N}": written - 1 - j for j in range(N)}
    for image, w in last.items():
        assert got.loc[image, "mark"] == REVIEW_MARKS[w % 3] and got.loc[image, "note"] == f"pass {w // N}"
    assert store.count(reviews.st.trials, state="complete") == 6

    reviews.mark(dashboard, DATASET, "im2", "label error", note="  no lesion here  ")
    reviews.mark(dashboard, DATASET, "im3", None)  # removed
    reviews.mark(dashboard, DATASET, "im3", None)  # removing what is not there is no error
    rows = list(csv.DictReader(io.StringIO(reviews.export_csv(Store(url, read_only=True), DATASET, sweep="s"))))
    assert [r["name"] for r in rows] == sorted(f"im{k}" for k in range(N) if k != 3)
    by_name = {r["name"]: r for r in rows}
    assert by_name["im2"]["mark"] == "label error" and by_name["im2"]["note"] == "no lesion here"
    assert float(by_name["im2"]["score"]) > 0.9 and float(by_name["im0"]["score"]) == 0.0
    assert by_name["im1"]["path"] == "scans/im 1.png" and by_name["im0"]["path"] == "images/im0.jpg"
    plain = reviews.export_csv(dashboard, DATASET).splitlines()
    assert plain[0] == "name,path,mark,note,score" and all(line.endswith(",") for line in plain[1:])
    dashboard.dispose()
    store.dispose()


def test_marks_are_written_and_read_on_sqlite_while_a_worker_closes_trials(tmp_path: Path) -> None:
    _marks_beside_a_worker(f"sqlite:///{tmp_path / 'r.db'}", tmp_path)


def test_marks_are_written_and_read_on_postgres_while_a_worker_closes_trials(postgres: PostgresServer,  # noqa: F811
                                                                             tmp_path: Path) -> None:
    _marks_beside_a_worker(postgres.create_database("reviews"), tmp_path)


def test_an_unknown_mark_and_a_read_only_store_are_refused_with_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store, _ = _setup(url, tmp_path)
    with pytest.raises(ValueError, match="unknown review mark 'wrong'; choose from label error, hard image, fine"):
        reviews.mark(store, DATASET, "im0", "wrong")
    with pytest.raises(StoreError, match="read-only"):
        reviews.mark(Store(url, read_only=True), DATASET, "im0", "fine")
    assert reviews.marks(store, DATASET).empty
    reviews.mark(store.engine, DATASET, "im0", "hard image")  # an Engine works as a Store does
    assert reviews.marks(store, DATASET)["mark"].tolist() == ["hard image"]
    assert reviews.marks(store, "other/dataset").empty
    store.dispose()
