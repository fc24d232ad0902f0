"""PostgreSQL: the same code path as SQLite, only the URL differs.

A real server (tests/pg_server.py: Debian's binaries, 127.0.0.1, a free port, trust auth) holds
both the results and Optuna's journal. Locally the tests skip without the binaries; in CI
(.ci/run installs them) they fail instead.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect, text

from core.store import queries
from core.store import db as st
from core.store.optuna_storage import load_study
from core.store.db import Store, decode_mask
from jobs import budget
from tests.pg_server import PostgresServer, postgres  # noqa: F401  (session fixture)
from tests.test_reliability import (  # noqa: F401  (module fixtures: the data, one torch thread)
    REPO, STUDY, _one_thread, assert_consistent, data_root, job_env, open_together, rerun_after_a_kill_before_the_row,
    rerun_right_after_a_kill, sweep_argv,
)


def test_two_workers_sweep_into_postgres_and_the_dashboard_reads_it(postgres: PostgresServer, data_root: Path,
                                                                    tmp_path: Path) -> None:
    url = postgres.create_database("two_workers")
    cmd = [sys.executable, "-m", "jobs.sweep", *sweep_argv(data_root, url, 4, refit=True)]
    env = job_env(PYTHONPATH=str(REPO))  # run from tmp_path: checkpoints of a server database go to ./checkpoints
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err, err
        assert f"-> postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/two_workers" in out
    rows = assert_consistent(url, STUDY, 4)
    reported = [int(line.split()[2]) for out, _ in outs for line in out.splitlines()
                if line.strip().startswith("unet trial")]
    assert sorted(reported) == sorted(r["number"] for r in rows)
    assert all(Path(r["checkpoint"]).is_file() for r in rows if r["checkpoint"])
    assert all(Path(r["checkpoint"]).is_relative_to(tmp_path / "checkpoints") for r in rows if r["checkpoint"])

    # Optuna's state is in the same database, as a journal; its relational tables are not there
    store = Store(url, read_only=True)
    with store.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        assert {"trials", "epochs", "images", "image_results", "masks", "optuna_journal"} <= tables
        assert not {"studies", "trial_values", "trial_params", "version_info"} & tables
        assert conn.execute(text("SELECT count(*) FROM optuna_journal")).scalar() > 0
    assert len(budget.counted(load_study(url, STUDY).get_trials())) == 4
    assert len([r for r in rows if "refit_of" in r["params"]]) == 1  # one refit, whichever worker ran it

    # the dashboard's queries read it like a SQLite store
    [sweep] = queries.sweeps(store).to_dict("records")
    assert sweep["sweep"] == "t" and sweep["trials"] == len(rows) and sweep["running"] == 0
    assert sweep["complete"] + sweep["pruned"] + sweep["failed"] == len(rows)
    assert len(queries.sweep_trials(store, "t")) == len(rows)
    best = queries.best_trials(store, "t")
    if len(best):  # at least the baseline completes unless pruned
        trial_id = int(best["id"].iloc[0])
        hardest = queries.hardest_images(store, trial_id, limit=5)
        assert len(hardest) == 5 and list(hardest["dice"]) == sorted(hardest["dice"])
        pngs = queries.mask_pngs(store, [trial_id], [int(i) for i in hardest["image_id"]])
        assert len(pngs) == 5 and all(decode_mask(p).shape == (32, 32) for p in pngs.values())
    store.dispose()


def test_a_rerun_right_after_a_kill_retries_the_trial_on_postgres(postgres: PostgresServer, data_root: Path,
                                                                 tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # a server database's checkpoints go to ./checkpoints
    rerun_right_after_a_kill(postgres.create_database("killed"), data_root, monkeypatch, capsys)
    assert (tmp_path / "checkpoints" / "t" / "unet").is_dir()


def test_a_worker_killed_before_writing_its_trial_row_is_retried_on_postgres(
        postgres: PostgresServer, data_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    rerun_after_a_kill_before_the_row(postgres.create_database("killed_early"), data_root, monkeypatch, capsys)


def test_workers_starting_together_on_a_new_postgres_database_all_get_the_schema(postgres: PostgresServer) -> None:
    url = postgres.create_database("race")
    assert open_together(url, 4) == []
    assert Store(url, read_only=True).count(st.schema_info) == 1
