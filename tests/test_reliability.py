"""Faults, bad input and concurrent workers. The store never lies and never loses what it has.

Covered here: a worker SIGKILLed mid-trial (and killed at the awkward moments around it),
three workers on one SQLite file, diverging trials, and the bad-input matrix (data, flags,
database, checkpoints) that docs/troubleshooting.md's "What you may see, and what to do" table
documents. PostgreSQL runs in tests/test_postgres.py with the same checks.

Everything trains tiny models on a 40-image synthetic set with one CPU thread per process (the
CI machine has 2 cores and several processes; more threads only make them fight).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image
from sqlalchemy import func, select, update

from core.store import db as st
from core.store.optuna_storage import load_study, optuna_storage
from core.store.db import ImageResults, Store
from core.training import trial as trial_module
from core.training.abandoned import abandoned_error
from core.data.synthetic import SYNTHETIC_MARKER, generate_synthetic
from jobs import budget, lifecycle
from jobs import sweep as sweep_job
from jobs import train as train_job

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--width", "0.125", "--batch-size", "8", "--no-progress"]
STUDY = "t/unet"
OPTUNA_STATE = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


# -- fixtures and helpers ------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread here and in the jobs' main() run in this process (they follow $OMP_NUM_THREADS)."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("reldata") / "synthetic", n_images=40, image_size=64, seed=1)


def job_env(**extra: str) -> dict[str, str]:
    """Environment of a job started as a subprocess: one thread, heartbeat every 0.5 s, stale after 3 s."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SEGSWEEP_HEARTBEAT_S="0.5",
               SEGSWEEP_STALE_AFTER_S="3")
    env.update(extra)
    return env


def sweep_argv(root: Path, db: str, trials: int, *extra: str, epochs: int = 2, data: str = "synthetic",
               refit: bool = False) -> list[str]:
    """A tiny sweep; without the refit unless asked, so the search's own guarantees are what is pinned."""
    return ["--data", data, "--data-root", str(root), "--db", db, "--name", "t", "--archs", "unet",
            "--trials", str(trials), "--epochs", str(epochs), *TINY, *(() if refit else ("--refit-share", "0")),
            *extra]


def train_argv(root: Path, db: str, *extra: str, data: str = "oxford-pets") -> list[str]:
    return ["--data", data, "--data-root", str(root), "--db", db, "--arch", "unet", "--epochs", "1", *TINY, *extra]


def quick_liveness(monkeypatch: pytest.MonkeyPatch, heartbeat_s: float, stale_after_s: float) -> None:
    """In-process jobs beat every `heartbeat_s` and take a trial silent for `stale_after_s` for dead
    (core.training.trial's settings, read when used, as SEGSWEEP_HEARTBEAT_S / _STALE_AFTER_S set them)."""
    monkeypatch.setattr(trial_module, "HEARTBEAT_S", heartbeat_s)
    monkeypatch.setattr(trial_module, "STALE_AFTER_S", stale_after_s)


def one_line_error(err: str, prog: str, *fragments: str) -> str:
    """stderr is exactly one line `prog: error: ...` holding every fragment, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    return lines[0]


def run_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A job's main() in this process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(url: str, skip_trials: tuple[int, ...] = ()) -> dict[str, list[str]]:
    """Every row of every results table (JSON, masks included), to prove nothing was lost or changed.

    `skip_trials`: trials rows left out (one still running, whose row is meant to change).
    """
    store = Store(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            return {table.name: sorted(json.dumps(dict(row), sort_keys=True, default=repr)
                                       for row in conn.execute(select(table)).mappings()
                                       if not (table is st.trials and row["id"] in skip_trials))
                    for table in (st.datasets, st.images, st.trials, st.epochs, st.image_results, st.masks)}
    finally:
        store.dispose()


def assert_kept(before: dict[str, list[str]], after: dict[str, list[str]]) -> None:
    for table, rows in before.items():
        missing = set(rows) - set(after[table])
        assert not missing, f"{table}: {len(missing)} rows lost or changed"


def assert_consistent(url: str, study: str, trials_budget: int) -> list[dict]:
    """The store and Optuna agree, and the store never lies.

    No trial is left running; no (study, number) twice; a complete trial has one result and one
    mask for every test image and test_dice is their mean; any other trial has none; Optuna counts
    exactly the budget, all finished, and each counted trial has the store row of the same state.
    """
    store = Store(url, read_only=True)
    try:
        rows = store.study_trials(study)
        with store.engine.connect() as conn:
            twice = conn.execute(select(st.trials.c.study, st.trials.c.number).group_by(
                st.trials.c.study, st.trials.c.number).having(func.count() > 1)).all()
            results = dict(conn.execute(select(st.image_results.c.trial_id, func.count())
                                        .group_by(st.image_results.c.trial_id)).all())
            masks = dict(conn.execute(select(st.masks.c.trial_id, func.count()).group_by(st.masks.c.trial_id)).all())
            trial_ids = set(conn.execute(select(st.trials.c.id)).scalars())
        assert twice == []
        assert set(results) <= trial_ids and set(masks) <= trial_ids
        assert [r["number"] for r in rows if r["state"] == "running"] == []
        for r in rows:
            if r["state"] == "complete":
                n_test = store.count(st.images, dataset=r["dataset"], split="test")
                assert results.get(r["id"]) == masks.get(r["id"]) == n_test > 0, r["number"]
                assert r["test_dice"] == pytest.approx(store.test_dice_of(r["id"]).mean())
            else:
                assert r["id"] not in results and r["id"] not in masks, r["number"]
    finally:
        store.dispose()
    trials = load_study(url, study).get_trials()
    counted = budget.counted(trials)
    assert len(counted) == trials_budget
    assert all(t.state.is_finished() for t in trials), [(t.number, t.state) for t in trials]
    by_number = {r["number"]: r for r in rows}
    for t in counted:
        assert t.number in by_number and OPTUNA_STATE[by_number[t.number]["state"]] == t.state, t.number
    assert not {t.number for t in trials if t.user_attrs.get(budget.SURPLUS)} & set(by_number)
    return rows


def read_only_rows(db_path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Poll a SQLite store from outside without writing to it (the job is still running)."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error:  # not created yet, or busy
        return []
    finally:
        conn.close()


@pytest.fixture(scope="module")
def seeded_db(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store that already holds one finished run: every failing run below must leave it intact."""
    path = tmp_path_factory.mktemp("seed") / "results.db"
    assert train_job.main(train_argv(data_root, str(path), "--name", "before", data="synthetic")) == 0
    return path


@pytest.fixture
def db_copy(seeded_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    with sqlite3.connect(seeded_db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)  # consistent even while the seed's engine keeps the WAL open
    return path


def pets_copy(data_root: Path, tmp_path: Path) -> Path:
    """A copy of the small set in the official layout (no synthetic marker): safe to break."""
    root = tmp_path / "pets"
    shutil.copytree(data_root, root)
    (root / SYNTHETIC_MARKER).unlink()
    return root


def names(root: Path, split_file: str) -> list[str]:
    return [line.split()[0] for line in (root / "annotations" / split_file).read_text().splitlines() if line.strip()]


# -- a worker killed in the middle of a trial ------------------------------------------------

def test_a_sigkilled_worker_costs_only_the_trial_it_hit(data_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    # every checkpoint kept: pruning to the best (the default) may rightly clear a finished trial's
    # checkpoint column once a later trial beats it, which is not a lost row
    cmd = [sys.executable, "-m", "jobs.sweep", *sweep_argv(data_root, str(db), 3, "--pruner", "none",
                                                           "--keep-checkpoints", "all", epochs=4)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        victim = []
        while not victim:  # trial 1 running, with at least one epoch recorded and more to come
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.05)
            victim = read_only_rows(db, "SELECT id, number FROM trials WHERE study = ? AND number = 1 "
                                        "AND state = 'running' AND epochs_run >= 1", (STUDY,))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    [(killed_id, _)] = victim
    finished_before = [r for r in Store(db, read_only=True).study_trials(STUDY) if r["state"] != "running"]
    assert [r["number"] for r in finished_before] == [0]
    before = snapshot(f"sqlite:///{db}", skip_trials=(killed_id,))

    rerun = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr and "locked" not in rerun.stderr.lower()
    assert "unet trial 1 lost its worker; queued again" in rerun.stdout

    rows = assert_consistent(f"sqlite:///{db}", STUDY, 3)
    by_number = {r["number"]: r for r in rows}
    killed = by_number[1]
    assert killed["id"] == killed_id and killed["state"] == "failed" and killed["epochs_run"] >= 1
    assert killed["error"] == lifecycle.DEAD_WORKER
    store = Store(db, read_only=True)
    assert store.count(st.image_results, trial_id=killed_id) == store.count(st.masks, trial_id=killed_id) == 0
    assert store.count(st.epochs, trial_id=killed_id) == killed["epochs_run"]  # its curve up to the kill is kept
    # the retry: a new trial number with the killed trial's parameters, complete
    trials = load_study(f"sqlite:///{db}", STUDY).get_trials()
    assert trials[1].state == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.params == trials[1].params and retry.state == TrialState.COMPLETE
    assert by_number[retry.number]["state"] == "complete"
    assert by_number[retry.number]["params"] == killed["params"]
    # what was finished before the kill is untouched, and exactly the budget ran
    assert_kept(before, snapshot(f"sqlite:///{db}"))
    assert sorted(r["state"] for r in rows) == ["complete", "complete", "complete", "failed"]
    assert not list((tmp_path / "checkpoints").rglob("trial-1.pt*"))


def _kill_scenario_first_run(url: str, data_root: Path, capsys) -> tuple[optuna.Study, Store, dict]:
    """One finished trial, then the state a worker leaves when killed right after starting trial 1."""
    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, url, 1), capsys)
    assert code == 0, err
    study = load_study(url, STUDY, read_only=False)
    store = Store(url)
    [first] = store.study_trials(STUDY)
    return study, store, first


def rerun_right_after_a_kill(url: str, data_root: Path, monkeypatch, capsys) -> None:
    """Shared with tests/test_postgres.py: the same code path on any database."""
    quick_liveness(monkeypatch, heartbeat_s=0.5, stale_after_s=1.5)
    study, store, first = _kill_scenario_first_run(url, data_root, capsys)
    dead = study.ask()  # the killed worker's Optuna trial stays RUNNING ...
    dead_id = store.start_trial(sweep="t", study=STUDY, arch="unet", number=dead.number, params=first["params"],
                                device="cpu", dataset=first["dataset"], image_size=32)  # ... its row fresh
    store.dispose()
    # Nothing is left to start, and the dead trial's heartbeat is only a moment old: the worker must
    # not take it for a live worker's trial and stop, but wait until it is stale, then retry it.
    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, url, 2), capsys)
    assert code == 0, err
    assert f"unet trial {dead.number} lost its worker; queued again" in out
    rows = assert_consistent(url, STUDY, 2)
    assert [(r["id"], r["state"], r["error"]) for r in rows if r["number"] == dead.number] == \
        [(dead_id, "failed", lifecycle.DEAD_WORKER)]
    assert [r["state"] for r in rows] == ["complete", "failed", "complete"]


def test_a_rerun_started_right_after_a_kill_waits_for_the_silent_trial_and_retries_it(
        data_root: Path, db_url: str, monkeypatch, capsys) -> None:
    rerun_right_after_a_kill(db_url, data_root, monkeypatch, capsys)


def rerun_after_a_kill_before_the_row(url: str, data_root: Path, monkeypatch, capsys) -> None:
    """Shared with tests/test_postgres.py: a worker killed after Optuna created its trial but before
    it wrote the trial's store row. Optuna's journal says RUNNING, and no heartbeat exists to go
    stale; the next run must record the loss, retry the trial and spend the budget exactly."""
    quick_liveness(monkeypatch, heartbeat_s=0.5, stale_after_s=1.5)
    study, store, first = _kill_scenario_first_run(url, data_root, capsys)
    dead = study.ask()  # RUNNING in the journal; the worker died before anything reached the store
    store.dispose()
    assert [r["number"] for r in Store(url, read_only=True).study_trials(STUDY)] == [0]
    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, url, 2), capsys)
    assert code == 0, err
    assert f"unet trial {dead.number} lost its worker; queued again" in out
    rows = assert_consistent(url, STUDY, 2)
    assert [(r["number"], r["state"], r["error"]) for r in rows] == [
        (0, "complete", None), (dead.number, "failed", lifecycle.DEAD_WORKER), (dead.number + 1, "complete", None)]
    assert (rows[1]["epochs_run"], rows[1]["params"]) == (0, {})  # it never trained
    trials = load_study(url, STUDY).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].system_attrs["failed_trial"] == dead.number


def test_a_worker_killed_before_writing_its_trial_row_is_retried_and_the_budget_is_exact(
        data_root: Path, db_url: str, monkeypatch, capsys) -> None:
    rerun_after_a_kill_before_the_row(db_url, data_root, monkeypatch, capsys)


def test_a_worker_killed_after_recording_but_before_telling_optuna_is_synced(
        data_root: Path, db_url: str, monkeypatch, capsys) -> None:
    quick_liveness(monkeypatch, heartbeat_s=0.25, stale_after_s=1.0)
    study, store, first = _kill_scenario_first_run(db_url, data_root, capsys)
    orphan = study.ask()
    trial_id = store.start_trial(sweep="t", study=STUDY, arch="unet", number=orphan.number, params=first["params"],
                                 device="cpu", dataset=first["dataset"], image_size=32)
    test_ids = np.array(_test_image_ids(store, first["dataset"]))
    n = len(test_ids)
    store.finish_trial(trial_id, state="complete", val_dice=0.42, results=ImageResults(
        test_ids, np.full(n, 0.5), np.full(n, 0.4), np.full(n, 0.5), masks=np.zeros((n, 32, 32), bool)))
    with store.engine.begin() as conn:  # recorded a minute ago; then the worker died
        conn.execute(update(st.trials).where(st.trials.c.id == trial_id).values(
            finished_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=60)))
    store.dispose()
    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, db_url, 2), capsys)
    assert code == 0, err
    assert f"trial {orphan.number} was recorded as complete" in out
    rows = assert_consistent(db_url, STUDY, 2)
    assert len(rows) == 2  # nothing was re-run: the store's record was the truth
    synced = load_study(db_url, STUDY).get_trials()[orphan.number]
    assert synced.state == TrialState.COMPLETE and synced.value == pytest.approx(0.42)


def _test_image_ids(store: Store, dataset: str) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(st.images.c.id).where(st.images.c.dataset == dataset,
                                                               st.images.c.split == "test")).scalars())


def test_a_changed_heartbeat_period_takes_effect_in_the_next_trial(monkeypatch) -> None:
    class Beats:
        def __init__(self) -> None:
            self.count = 0

        def beat(self, trial_id: int) -> None:
            self.count += 1

    quick_liveness(monkeypatch, heartbeat_s=0.02, stale_after_s=1.0)
    store = Beats()
    with trial_module.Heartbeat(store, 1) as heartbeat:  # type: ignore[arg-type]
        time.sleep(0.3)
    assert heartbeat.interval_s == 0.02 and store.count >= 5  # at the import-time 5 s it would be 0


# -- a single run killed in the middle --------------------------------------------------------

def wait_until_stale(db: Path, trial_id: int, grace_s: float) -> None:
    """Until the trial's last heartbeat is more than grace_s old, as the next job will see it."""
    deadline = time.monotonic() + 60
    while True:
        [(beat,)] = read_only_rows(db, "SELECT heartbeat_at FROM trials WHERE id = ?", (trial_id,)) or [(None,)]
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        if beat is not None and (now - dt.datetime.fromisoformat(beat)).total_seconds() > grace_s + 0.5:
            return
        assert time.monotonic() < deadline, "the killed run's heartbeat never went stale"
        time.sleep(0.2)


def stale_sweep_trial(url: str, first: dict) -> int:
    """A sweep's trial whose worker died: it is the sweep's to retry, never a single run's to close."""
    optuna.create_study(storage=optuna_storage(url), study_name="s/unet", direction="maximize").ask()
    store = Store(url)
    trial_id = store.start_trial(sweep="s", study="s/unet", arch="unet", number=0, params=first["params"],
                                 device="cpu", dataset=first["dataset"], image_size=32)
    with store.engine.begin() as conn:
        conn.execute(update(st.trials).where(st.trials.c.id == trial_id).values(
            heartbeat_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=10)))
    store.dispose()
    return trial_id


def test_a_sigkilled_single_run_is_closed_as_failed_by_the_next_job(data_root: Path, db_copy: Path) -> None:
    url = f"sqlite:///{db_copy}"
    [first] = Store(db_copy, read_only=True).study_trials("before/unet")
    sweep_trial = stale_sweep_trial(url, first)
    cmd = [sys.executable, "-m", "jobs.train", *train_argv(data_root, str(db_copy), data="synthetic")]
    cmd[cmd.index("--epochs") + 1] = "50"  # still training when it is killed
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        victim = []
        while not victim:  # the run is training, with an epoch recorded
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never recorded an epoch"
            time.sleep(0.05)
            victim = read_only_rows(db_copy, "SELECT id, study FROM trials WHERE sweep LIKE 'train-%' "
                                             "AND state = 'running' AND epochs_run >= 1")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    [(killed_id, killed_study)] = victim
    assert killed_study.startswith("train-") and killed_study.endswith("/unet")
    before = snapshot(url, skip_trials=(killed_id,))
    wait_until_stale(db_copy, killed_id, grace_s=3)

    after = subprocess.run([sys.executable, "-m", "jobs.train", *train_argv(data_root, str(db_copy), "--name", "after",
                                                                             data="synthetic")],
                           cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    assert "Traceback" not in after.stderr
    assert f"closed run {killed_study} #0 (trial id {killed_id}) as failed: its job stopped mid-run " \
           f"(no heartbeat for 3 s)" in after.stdout
    store = Store(db_copy, read_only=True)
    killed = store.trial(killed_id)
    assert killed["state"] == "failed" and killed["finished_at"] is not None and killed["epochs_run"] >= 1
    assert killed["error"] == ("its job stopped mid-run (no heartbeat for 3 s, e.g. killed); "
                               "closed as failed by the next job on this database")
    assert store.count(st.epochs, trial_id=killed_id) == killed["epochs_run"]  # its curve up to the kill is kept
    assert store.count(st.image_results, trial_id=killed_id) == store.count(st.masks, trial_id=killed_id) == 0
    assert store.trial(sweep_trial)["state"] == "running"  # left to its sweep, which retries it
    assert [r["state"] for r in store.study_trials("after/unet")] == ["complete"]
    assert_kept(before, snapshot(url, skip_trials=(killed_id,)))


def test_a_sweep_also_closes_a_dead_single_run_and_keeps_its_own_dead_trial_for_retry(
        data_root: Path, db_copy: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{db_copy}"
    store = Store(url)
    [first] = store.study_trials("before/unet")
    dead = store.start_trial(sweep="train-20260101-000000", study="train-20260101-000000/unet", arch="unet",
                             number=0, params=first["params"], device="cpu", dataset=first["dataset"], image_size=32)
    live = store.start_trial(sweep="train-20260101-000001", study="train-20260101-000001/unet", arch="unet",
                             number=0, params=first["params"], device="cpu", dataset=first["dataset"], image_size=32)
    with store.engine.begin() as conn:
        conn.execute(update(st.trials).where(st.trials.c.id == dead).values(
            heartbeat_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=60)))
    store.dispose()
    sweep_trial = stale_sweep_trial(url, first)
    monkeypatch.setattr(trial_module, "STALE_AFTER_S", 30.0)
    before = snapshot(url, skip_trials=(dead,))

    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, url, 1, epochs=1), capsys)
    assert code == 0, err
    assert f"closed run train-20260101-000000/unet #0 (trial id {dead}) as failed" in out
    store = Store(url, read_only=True)
    assert (store.trial(dead)["state"], store.trial(dead)["error"]) == ("failed", abandoned_error(30.0))
    assert store.trial(live)["state"] == "running"  # its heartbeat is fresh: a live run, not touched
    assert store.trial(sweep_trial)["state"] == "running"
    assert_kept(before, snapshot(url, skip_trials=(dead,)))


# -- concurrent workers on one SQLite file ---------------------------------------------------

def test_three_workers_on_one_sqlite_file_share_one_budget(data_root: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'results.db'}"  # not created yet: the three also race to create the schema
    cmd = [sys.executable, "-m", "jobs.sweep", *sweep_argv(data_root, db, 5)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "locked" not in (out + err).lower() and "Traceback" not in err, err
    rows = assert_consistent(db, STUDY, 5)
    counted = budget.counted(load_study(db, STUDY).get_trials())
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in counted)
    # every trial was run and reported by exactly one worker
    reported = [int(line.split()[2]) for out, _ in outs for line in out.splitlines()
                if line.strip().startswith("unet trial")]
    assert sorted(reported) == sorted(r["number"] for r in rows)


def open_together(url: str, n: int) -> list[str]:
    """n workers open a new database at the same moment (schema and Optuna journal); their errors."""
    start, errors = threading.Barrier(n), []

    def open_store() -> None:
        start.wait()
        try:
            store = Store(url)
            sweep_job.retry_schema_race(lambda: optuna_storage(url, engine=store.engine))
            store.dispose()
        except Exception as exc:  # noqa: BLE001 - returned and asserted by the caller
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=open_store) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_workers_starting_together_on_a_new_sqlite_file_all_get_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert open_together(url, 4) == []
    assert Store(url, read_only=True).count(st.schema_info) == 1


# -- diverging trials ------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Fixed parameter lr")  # the baseline's lr 1e-4 lies outside this space
def test_diverging_trials_are_recorded_with_the_reason_and_the_sweep_goes_on(
        data_root: Path, db_url: str, tmp_path: Path, capsys) -> None:
    space = tmp_path / "space.toml"
    space.write_text("lr = { low = 1e8, high = 1e10, log = true }\n")  # every sampled lr blows up
    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, db_url, 3, "--space", str(space),
                                                         "--pruner", "none"), capsys)
    assert code == 0 and "Traceback" not in err
    rows = assert_consistent(db_url, STUDY, 3)
    assert [r["state"] for r in rows] == ["complete", "failed", "failed"]  # trial 0 is the reports' lr 1e-4
    for r in rows[1:]:
        assert r["error"].startswith("training diverged: non-finite loss") and f"lr {r['params']['lr']:g}" in r["error"]
    assert out.count("failed    val dice") == 2 and "training diverged" in out
    table = out.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("arch "))
    assert table[header + 1].split()[:2] == ["unet", "0"]  # the closing table's best trial is the baseline


def test_a_diverging_single_run_exits_1_and_is_recorded_failed(data_root: Path, db_url: str, capsys) -> None:
    code, out, err = run_main(train_job.main, train_argv(data_root, db_url, "--lr", "1e9", "--name", "boom",
                                                         data="synthetic"), capsys)
    assert code == 1 and "Traceback" not in err
    [row] = Store(db_url, read_only=True).study_trials("boom/unet")
    assert row["state"] == "failed" and "non-finite loss" in row["error"]
    assert f"trial {row['id']} failed: training diverged" in out


# -- bad input: data -------------------------------------------------------------------------

def _gif(path: Path) -> None:
    Image.open(path).convert("RGB").save(path, format="GIF")


def _png(path: Path) -> None:
    Image.open(path).convert("RGB").save(path, format="PNG")


def _gray(path: Path) -> None:
    Image.open(path).convert("L").save(path, format="JPEG")


def _rgba(path: Path) -> None:
    Image.open(path).convert("RGBA").save(path, format="PNG")


def _cmyk(path: Path) -> None:
    Image.open(path).convert("CMYK").save(path, format="JPEG")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _trimap(root: Path, name: str) -> Path:
    return root / "annotations" / "trimaps" / f"{name}.png"


def _wrong_size_trimap(root: Path, name: str) -> None:
    im = Image.open(_trimap(root, name))
    im.resize((im.width // 2, im.height // 2 + 3), Image.Resampling.NEAREST).save(_trimap(root, name))


# (id, damage(root, test image name), what happens to that image, fragment of the one 'skipped' line)
DATA_CASES = [
    ("split-file-names-absent-image",
     lambda root, name: (root / "annotations" / "test.txt").open("a").write("ghost_cat_7 1 1 1\n"),
     "kept", "images/ghost_cat_7.jpg (missing image)"),
    ("truncated-jpeg", lambda root, name: _truncate(root / "images" / f"{name}.jpg"),
     "skipped", "images/{name}.jpg (truncated or unreadable)"),
    ("gif-named-jpg", lambda root, name: _gif(root / "images" / f"{name}.jpg"), "kept", None),
    ("png-named-jpg", lambda root, name: _png(root / "images" / f"{name}.jpg"), "kept", None),
    ("missing-trimap", lambda root, name: _trimap(root, name).unlink(), "skipped",
     "annotations/trimaps/{name}.png (missing trimap)"),
    ("empty-trimap", lambda root, name: _trimap(root, name).write_bytes(b""), "skipped",
     "annotations/trimaps/{name}.png (empty trimap)"),
    ("wrong-size-trimap", _wrong_size_trimap, "kept", None),
    ("1-channel-image", lambda root, name: _gray(root / "images" / f"{name}.jpg"), "kept", None),
    ("4-channel-rgba-image", lambda root, name: _rgba(root / "images" / f"{name}.jpg"), "kept", None),
    ("4-channel-cmyk-jpeg", lambda root, name: _cmyk(root / "images" / f"{name}.jpg"), "kept", None),
]


@pytest.mark.parametrize("damage, fate, skipped", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_reported_in_one_line_and_the_run_goes_on(damage, fate: str, skipped: str | None,
                                                              data_root: Path, db_copy: Path, tmp_path: Path,
                                                              capsys) -> None:
    root = pets_copy(data_root, tmp_path)
    victim = names(root, "test.txt")[0]
    n_test = len(names(root, "test.txt"))
    damage(root, victim)
    before = snapshot(f"sqlite:///{db_copy}")
    code, out, err = run_main(train_job.main, train_argv(root, str(db_copy), "--name", "messy"), capsys)
    assert code == 0 and "Traceback" not in err, err
    skip_lines = [line for line in out.splitlines() if line.startswith("skipped ")]
    if skipped is None:
        assert skip_lines == []
    else:
        assert len(skip_lines) == 1 and skipped.format(name=victim) in skip_lines[0], out
    url = f"sqlite:///{db_copy}"
    [row] = assert_consistent_single(url, "messy/unet")
    store = Store(db_copy, read_only=True)
    with store.engine.connect() as conn:
        test_names = set(conn.execute(select(st.images.c.name).join(
            st.image_results, st.image_results.c.image_id == st.images.c.id).where(
            st.image_results.c.trial_id == row["id"])).scalars())
    assert (victim in test_names) == (fate == "kept")
    assert len(test_names) == n_test - (fate == "skipped")
    assert_kept(before, snapshot(url))


def assert_consistent_single(url: str, study: str) -> list[dict]:
    """A jobs.train run: one complete trial with a result and a mask for every test image."""
    store = Store(url, read_only=True)
    rows = store.study_trials(study)
    assert [r["state"] for r in rows] == ["complete"]
    n_test = store.count(st.images, dataset=rows[0]["dataset"], split="test")
    assert store.count(st.image_results, trial_id=rows[0]["id"]) == store.count(st.masks, trial_id=rows[0]["id"]) == n_test
    store.dispose()
    return rows


def test_a_sweep_over_a_set_with_every_defect_at_once_reports_them_in_one_line(
        data_root: Path, tmp_path: Path, capsys) -> None:
    root = pets_copy(data_root, tmp_path)
    victims = names(root, "trainval.txt")[: len(DATA_CASES)]
    for (_, damage, _, _), name in zip(DATA_CASES, victims):
        damage(root, name)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    code, out, err = run_main(sweep_job.main, sweep_argv(root, db, 1, data="oxford-pets"), capsys)
    assert code == 0 and "Traceback" not in err, err
    [line] = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert line.startswith("skipped 4 of 41 images: ")
    for (_, _, _, fragment), name in zip(DATA_CASES, victims):
        assert fragment is None or fragment.format(name=name) in line
    assert_consistent(db, STUDY, 1)


@pytest.mark.parametrize("case, damage, fragment", [
    ("empty-trainval", lambda root: (root / "annotations" / "trainval.txt").write_text(""),
     "trainval.txt lists no images"),
    ("empty-test-list", lambda root: (root / "annotations" / "test.txt").write_text("\n"), "test.txt lists no images"),
    ("split-file-missing", lambda root: (root / "annotations" / "test.txt").unlink(), "test.txt is missing"),
    ("only-absent-test-images", lambda root: (root / "annotations" / "test.txt").write_text("ghost_1 1 1 1\n"),
     "no usable test images"),
    ("data-root-is-a-file", lambda root: (shutil.rmtree(root), root.write_text("x")), "is a file, not a folder"),
])
def test_unusable_data_is_a_one_line_error_and_the_store_is_untouched(case: str, damage, fragment: str,
                                                                     data_root: Path, db_copy: Path,
                                                                     tmp_path: Path, capsys) -> None:
    root = pets_copy(data_root, tmp_path)
    damage(root)
    before = snapshot(f"sqlite:///{db_copy}")
    for job, argv in ((train_job, train_argv(root, str(db_copy))),
                      (sweep_job, sweep_argv(root, str(db_copy), 1, data="oxford-pets"))):
        code, out, err = run_main(job.main, argv, capsys)
        assert code == 1
        one_line_error(err, job.PROG, fragment)
    assert snapshot(f"sqlite:///{db_copy}") == before


@pytest.mark.parametrize("job", [train_job, sweep_job], ids=["train", "sweep"])
def test_a_missing_data_root_is_a_usage_error(job, tmp_path: Path, capsys) -> None:
    code, out, err = run_main(job.main, ["--data", "oxford-pets", "--data-root", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    one_line_error(err, job.PROG, f"--data-root {tmp_path / 'nowhere'} does not exist")


# -- bad input: flags ------------------------------------------------------------------------

SWEEP_FLAGS = [
    (["--trials", "0"], "argument --trials: must be >= 1"),
    (["--trials", "2.5"], "not a whole number"),
    (["--epochs", "-3"], "must be >= 1"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--image-size", "16"], "between 32 and 1024"),
    (["--image-size", "4096"], "between 32 and 1024"),
    (["--width", "0"], "must be > 0"),
    (["--width", "nan"], "not a finite number"),
    (["--timeout", "soon"], "not a number: 'soon'"),
    (["--timeout", "-5"], "must be > 0"),
    (["--archs", "vgg16"], "unknown architecture vgg16"),
    (["--archs", ","], "unknown architecture (none)"),
    (["--pruner", "bogus"], "invalid choice: 'bogus'"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--keep-checkpoints", "some"], "invalid choice: 'some'"),
    (["--data", "imagenet"], "invalid choice: 'imagenet'"),
    (["--seed", "x"], "invalid int value: 'x'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--amp", "fp8"], "invalid choice: 'fp8'"),
    (["--space", "/no/such/space.toml"], "cannot read search space"),
    (["--space", "BAD_TOML"], "is not valid TOML"),
    (["--space", "UNKNOWN_PARAM"], "unknown parameter 'momentum'"),
    (["--space", "EMPTY_RANGE"], "lr needs low < high"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]
TRAIN_FLAGS = [
    (["--lr", "inf"], "not a finite number"),
    (["--lr", "1e-3x"], "not a number"),
    (["--hflip", "-0.1"], "probability"),
    (["--rotate", "-5"], "must be >= 0"),
    (["--focal-weight", "heavy"], "not a number"),
    (["--arch", "vgg"], "unknown architecture 'vgg'"),
    (["--image-size", "2000"], "between 32 and 1024"),
    (["--device", "cuda:0" if not torch.cuda.is_available() else "tpu"],
     "CUDA is not available" if not torch.cuda.is_available() else "unknown device"),
]
SPACES = {"BAD_TOML": "lr = {", "UNKNOWN_PARAM": "momentum = 0.9", "EMPTY_RANGE": "lr = { low = 1e-2, high = 1e-3 }"}


@pytest.mark.parametrize("job, argv, fragment",
                         [(sweep_job, a, f) for a, f in SWEEP_FLAGS] + [(train_job, a, f) for a, f in TRAIN_FLAGS],
                         ids=[f"sweep {' '.join(a)}" for a, _ in SWEEP_FLAGS] + [f"train {' '.join(a)}" for a, _ in TRAIN_FLAGS])
def test_out_of_range_or_malformed_flags_exit_2_with_one_line(job, argv: list[str], fragment: str, tmp_path: Path,
                                                            capsys) -> None:
    argv = list(argv)
    if argv[-1] in SPACES:
        (tmp_path / "space.toml").write_text(SPACES[argv[-1]])
        argv[-1] = str(tmp_path / "space.toml")
    with pytest.raises(SystemExit) as info:
        job.parse_args(argv)
    assert info.value.code == 2
    one_line_error(capsys.readouterr().err, job.PROG, fragment)


def test_a_bad_flag_on_the_real_command_line_has_no_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "jobs.sweep", "--trials", "-1", "--device", "tpu"], cwd=REPO,
                          env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "jobs.sweep")


# -- bad input: the database -------------------------------------------------------------------

@pytest.mark.parametrize("job", [train_job, sweep_job], ids=["train", "sweep"])
@pytest.mark.parametrize("case, url, fragments", [
    ("unreachable-server", "postgresql+psycopg://x@127.0.0.1:1/db?connect_timeout=2",
     ["cannot open database postgresql+psycopg://x@127.0.0.1:1/db", "127.0.0.1", "port 1"]),
    ("password-not-shown", "postgresql+psycopg://x:s3cret@127.0.0.1:1/db?connect_timeout=2",
     ["cannot open database postgresql+psycopg://x:***@127.0.0.1:1/db"]),
    ("unknown-kind", "bogus://somewhere/db", ["unknown kind of database 'bogus'"]),
    ("folder-missing", "NOFOLDER", ["folder", "does not exist"]),
    ("not-a-database", "TEXTFILE", ["file is not a database"]),
    ("cannot-create-file", "sqlite:////proc/segsweep-results.db", ["unable to open database file"]),
])
def test_an_unusable_database_is_a_one_line_error(job, case: str, url: str, fragments: list[str], data_root: Path,
                                                  tmp_path: Path, capsys) -> None:
    if url == "NOFOLDER":
        url = str(tmp_path / "missing" / "results.db")
    elif url == "TEXTFILE":
        url = str(tmp_path / "notes.txt")
        Path(url).write_text("these are my notes, not a database\n" * 100)
    started = time.monotonic()
    argv = (train_argv(data_root, url, data="synthetic") if job is train_job else sweep_argv(data_root, url, 1))
    code, out, err = run_main(job.main, argv, capsys)
    assert code == 1
    line = one_line_error(err, job.PROG, *fragments)
    assert "s3cret" not in line + out
    assert time.monotonic() - started < 60


@pytest.fixture
def unwritable(db_copy: Path) -> Iterator[Path]:
    """The seeded store, made unwritable in a way that stops root too.

    Root ignores file modes, so as root the file is made immutable (chattr +i: no process may
    write it); otherwise it is chmod 444.
    """
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(db_copy)], capture_output=True).returncode != 0:
            pytest.skip("as root only an immutable file is unwritable, and chattr +i does not work here; "
                        "the /proc case of test_an_unusable_database_is_a_one_line_error covers root")
        try:
            yield db_copy
        finally:
            subprocess.run([chattr, "-i", str(db_copy)], check=True)
    else:
        db_copy.chmod(0o444)
        try:
            yield db_copy
        finally:
            db_copy.chmod(0o644)


@pytest.mark.parametrize("job", [train_job, sweep_job], ids=["train", "sweep"])
def test_a_database_file_that_cannot_be_written_is_a_one_line_error_and_keeps_its_rows(
        job, unwritable: Path, data_root: Path, capsys) -> None:
    before = snapshot(f"sqlite:///{unwritable}")
    argv = train_argv(data_root, str(unwritable), data="synthetic") if job is train_job else \
        sweep_argv(data_root, str(unwritable), 1)
    code, out, err = run_main(job.main, argv, capsys)
    assert code == 1
    one_line_error(err, job.PROG, f"database error on sqlite:///{unwritable}: attempt to write a readonly database")
    assert snapshot(f"sqlite:///{unwritable}") == before


# -- bad input: checkpoints --------------------------------------------------------------------

def test_a_checkpoint_folder_that_cannot_be_created_costs_the_checkpoint_not_the_results(
        data_root: Path, db_copy: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")  # stops root too
    before = snapshot(f"sqlite:///{db_copy}")
    code, out, err = run_main(train_job.main, train_argv(data_root, str(db_copy), "--name", "ck", "--checkpoint",
                                                         str(blocker / "best.pt"), data="synthetic"), capsys)
    assert code == 0 and "Traceback" not in err
    assert f"warning: checkpoint not saved to {blocker / 'best.pt'}: {blocker} is a file, not a folder;" in out
    [row] = assert_consistent_single(f"sqlite:///{db_copy}", "ck/unet")
    assert row["checkpoint"] is None
    assert_kept(before, snapshot(f"sqlite:///{db_copy}"))


def test_a_sweep_whose_checkpoint_folder_is_blocked_still_records_every_trial(
        data_root: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "checkpoints").write_text("a file where the sweep's checkpoint folder goes")
    db = f"sqlite:///{tmp_path / 'results.db'}"
    code, out, err = run_main(sweep_job.main, sweep_argv(data_root, db, 2, "--pruner", "none"), capsys)
    assert code == 0 and "Traceback" not in err
    assert out.count("warning: checkpoint not saved") == 2
    rows = assert_consistent(db, STUDY, 2)
    assert [(r["state"], r["checkpoint"]) for r in rows] == [("complete", None)] * 2


# Runs jobs.train in a process whose files may not grow past 1 MB: every write beyond fails with
# EFBIG, as on a full disk (SIGXFSZ ignored so write() fails instead of killing the process).
FULL_DISK = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); sys.argv[0] = 'jobs.train'; "
             "runpy.run_module('jobs.train', run_name='__main__')")


def test_a_full_disk_costs_the_checkpoint_not_the_results(data_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    ckpt = tmp_path / "ck" / "best.pt"  # ~2 MB of weights: cannot be written
    argv = train_argv(data_root, str(db), "--name", "full", "--checkpoint", str(ckpt), data="synthetic")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, *argv], cwd=REPO, env=job_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"warning: checkpoint not saved to {ckpt}" in proc.stdout and "disk full" in proc.stdout
    [row] = assert_consistent_single(f"sqlite:///{db}", "full/unet")
    assert row["checkpoint"] is None
    assert list(ckpt.parent.iterdir()) == []  # no half-written file left filling the disk
