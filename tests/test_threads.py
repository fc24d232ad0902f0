"""--threads and --workers-here: each worker takes its share of this machine's cores."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jobs import cli
from jobs import sweep as sweep_job
from jobs import train as train_job


@pytest.mark.parametrize("argv, is_job", [
    (["/venv/bin/python", "-m", "jobs.sweep", "--trials", "3"], True),
    (["python3", "-m", "jobs.train"], True),
    (["python", "jobs/sweep.py", "--db", "x.db"], True),
    (["python", "/repo/jobs/train.py"], True),
    (["python", "-m", "pytest", "tests/test_sweep.py"], False),
    (["grep", "jobs.sweep"], False),
    (["/usr/bin/time", "-f", "%e", "python", "-m", "jobs.sweep"], False),  # a wrapper: its python child counts
    (["nohup", "python3", "-m", "jobs.train"], False),
    (["python", "-m", "jobs.budget"], False),
    ([""], False),
])
def test_a_segsweep_job_is_recognised_by_its_command_line(argv: list[str], is_job: bool) -> None:
    assert cli._is_job(argv) is is_job


def fake_process(proc: Path, pid: int, argv: list[str], parent: int) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    (proc / str(pid) / "stat").write_text(f"{pid} (python3 (x)) S {parent} {pid} {pid} 0 -1\n")


def test_worker_pids_counts_each_job_once_not_its_forked_children(tmp_path: Path) -> None:
    fake_process(tmp_path, 100, ["python", "-m", "jobs.sweep", "--db", "r.db"], parent=1)
    fake_process(tmp_path, 101, ["python", "-m", "jobs.sweep", "--db", "r.db"], parent=100)  # its DataLoader worker
    fake_process(tmp_path, 200, ["python", "-m", "jobs.train"], parent=1)
    fake_process(tmp_path, 300, ["python", "-m", "pytest", "tests"], parent=1)
    (tmp_path / "self").mkdir()  # not a pid
    (tmp_path / "400").mkdir()  # exited while being read: no files
    assert cli.worker_pids(tmp_path) == {100, 200}
    assert cli.worker_pids(tmp_path / "absent") == set()


def test_worker_pids_finds_a_running_job_in_the_real_proc() -> None:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("no /proc here")
    # a stand-in worker: its command line carries `-m jobs.sweep`, but it only sleeps
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "jobs.sweep"])
    try:
        deadline = time.monotonic() + 30
        while proc.pid not in cli.worker_pids():
            assert time.monotonic() < deadline, "the running stand-in was never found in /proc"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in cli.worker_pids()


def args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"threads": None, "workers_here": None, **given})


@pytest.fixture
def eight_cores_three_other_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cores", lambda: 8)
    monkeypatch.setattr(cli, "worker_pids", lambda: {11, 12, 13, os.getpid()})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_default_threads_are_the_cores_shared_among_the_workers_here(eight_cores_three_other_workers) -> None:
    assert cli.choose_threads(args()) == (2, "8 cores / 4 SegSweep workers here")


def test_the_default_is_at_least_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "usable_cores", lambda: 2)
    monkeypatch.setattr(cli, "worker_pids", lambda: {11, 12, 13, 14, 15})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.choose_threads(args()) == (1, "2 cores / 6 SegSweep workers here")


def test_an_explicit_count_beats_the_environment_which_beats_counting(
        eight_cores_three_other_workers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.choose_threads(args()) == (3, "$OMP_NUM_THREADS")
    assert cli.choose_threads(args(workers_here=2)) == (4, "8 cores / 2 workers (--workers-here)")
    assert cli.choose_threads(args(threads=5, workers_here=2)) == (5, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a count: ignored
    assert cli.choose_threads(args()) == (2, "8 cores / 4 SegSweep workers here")


def test_apply_threads_sets_torchs_thread_count_and_records_it() -> None:
    before = torch.get_num_threads()
    given = args(threads=1)
    try:
        assert cli.apply_threads(given) == "1 torch thread (--threads)"
        assert torch.get_num_threads() == 1 and given.threads == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("job", [train_job, sweep_job])
def test_both_jobs_take_threads_and_workers_here(job, capsys) -> None:
    parsed = job.parse_args(["--threads", "2", "--workers-here", "3"])
    assert (parsed.threads, parsed.workers_here) == (2, 3)
    for bad, fragment in ((["--threads", "0"], "argument --threads: must be >= 1, got 0"),
                          (["--workers-here", "two"], "argument --workers-here: not a whole number: 'two'")):
        with pytest.raises(SystemExit) as info:
            job.parse_args(bad)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err == f"{job.PROG}: error: {fragment}\n"
