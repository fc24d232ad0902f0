"""What a job's closing line and the dashboard tell users to run next: commands that work as typed
after README's install, and never one that would point a job at a file that is not a store."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import common
from jobs.cli import dashboard_command

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.mark.parametrize("url, shown", [
    ("sqlite:////runs/results.db", "RESULTS_DB=/runs/results.db .venv/bin/python -m streamlit run dashboard/Home.py"),
    ("sqlite:////my runs/results.db",
     "RESULTS_DB='/my runs/results.db' .venv/bin/python -m streamlit run dashboard/Home.py"),
    ("postgresql+psycopg://me:s3cret@db.lan/sweeps",
     "RESULTS_DB='postgresql+psycopg://me:***@db.lan/sweeps' .venv/bin/python -m streamlit run dashboard/Home.py"
     "  (password hidden: put yours in place of ***)"),
    ("postgresql+psycopg://me@db.lan/sweeps",
     "RESULTS_DB=postgresql+psycopg://me@db.lan/sweeps .venv/bin/python -m streamlit run dashboard/Home.py"),
])
def test_the_dashboard_command_runs_streamlit_from_the_jobs_own_interpreter_and_hides_passwords(
        url: str, shown: str) -> None:
    assert dashboard_command(url, python=VENV_PYTHON, cwd=REPO) == shown


def test_an_interpreter_outside_the_folder_is_shown_absolute_and_quoted(tmp_path: Path) -> None:
    python = tmp_path / "py 3" / "bin" / "python3"
    assert dashboard_command("sqlite:////r.db", python=str(python), cwd=REPO) == \
        f"RESULTS_DB=/r.db '{python}' -m streamlit run dashboard/Home.py"


def test_by_default_the_command_names_the_running_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.executable", VENV_PYTHON)
    assert dashboard_command("sqlite:////r.db").endswith(" .venv/bin/python -m streamlit run dashboard/Home.py")


def test_a_fresh_store_name_never_names_an_existing_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    assert common.fresh_path(notes) == tmp_path / "results.db"
    (tmp_path / "results.db").write_text("taken")
    (tmp_path / "results-2.db").write_text("taken")
    assert common.fresh_path(notes) == tmp_path / "results-3.db"


def test_the_dashboard_on_a_file_that_is_no_database_suggests_a_new_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a database\n" * 100)
    monkeypatch.setenv("RESULTS_DB", str(notes))
    at = AppTest.from_file(str(REPO / "dashboard" / "Home.py"), default_timeout=90)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "file is not a database" in at.error[0].value
    help_text = at.info[0].value
    assert f"python -m jobs.sweep --db {tmp_path / 'results.db'}" in help_text
    assert str(notes) not in help_text
    assert notes.read_text().startswith("these are my notes")
