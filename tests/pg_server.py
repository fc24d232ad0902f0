"""A throwaway PostgreSQL server for tests, on 127.0.0.1, a free port, trust authentication.

Uses the server binaries of the machine (Debian's `postgresql` package puts them in
/usr/lib/postgresql/<version>/bin; `$SEGSWEEP_PG_BIN` names another folder). Where they are
absent, `require_system("PostgreSQL")` skips the test locally and fails it in CI (.ci/run
installs the package). `initdb` refuses to run as root, so as root the cluster belongs to the
`postgres` system user (or `nobody`), in a temporary folder chowned to it.

The server is our child process: it is stopped, and its folder removed, when the `with` block
or the fixture ends, whether the test passed, failed or raised.

    from tests.pg_server import postgres  # noqa: F401  (the session fixture)

    def test_x(postgres):
        url = postgres.create_database("mytest")   # postgresql+psycopg://postgres@127.0.0.1:PORT/mytest
"""
from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require_system

SUPERUSER = "postgres"


def find_bin_dir() -> Path | None:
    """The folder holding initdb and postgres: $SEGSWEEP_PG_BIN, the newest Debian version, or PATH."""
    given = os.environ.get("SEGSWEEP_PG_BIN")
    candidates = [Path(given)] if given else []
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0], reverse=True)
    candidates += versions
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster in a temporary folder, served by a child `postgres` process."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.base: Path | None = None
        self._user: dict = {}
        if os.geteuid() == 0:  # initdb and postgres refuse root
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._user = {"user": pw.pw_uid, "group": pw.pw_gid}
                break
            else:
                raise RuntimeError("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL")

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> "PostgresServer":
        self.base = Path(tempfile.mkdtemp(prefix="segsweep-pg-"))
        atexit.register(self.stop)  # even if the caller forgets, or the session ends abnormally
        if self._user:
            os.chown(self.base, self._user["user"], self._user["group"])
        data = self.base / "data"
        init = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
             "--no-locale", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, cwd=self.base, **self._user)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {(init.stderr or init.stdout).strip()[-2000:]}")
        last_error = ""
        for _ in range(3):  # the free port may be taken between free_port() and bind
            self.port = free_port()
            log = open(self.base / "server.log", "ab")
            self.proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.base}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=60", "-c", "shared_buffers=32MB", "-c", "logging_collector=off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True, **self._user)
            log.close()
            if self._wait_ready(timeout=60):
                return self
            last_error = (self.base / "server.log").read_text(errors="replace")[-2000:]
            self._stop_process()
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.2)
        return False

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()  # this pid only: the server we started
            proc.wait(timeout=15)

    def stop(self) -> None:
        """Stop the server and remove its folder; safe to call twice."""
        with contextlib.suppress(Exception):
            self._stop_process()
        base, self.base = self.base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL of a database of this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database (dropped first if it exists); returns its SQLAlchemy URL."""
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"use a lower-case identifier as database name, got {name!r}")
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed on exit; skips (fails in CI) without the binaries."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        require_system("PostgreSQL")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway server for the test session; tests take fresh databases with create_database."""
    with postgres_server() as server:
        yield server
