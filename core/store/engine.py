"""Opening a results store: any SQLAlchemy URL or plain file path, as an engine set up for many workers.

SQLite gets WAL mode and a busy timeout so a dashboard can read while a sweep writes, and several
workers can share a file. Problems the user can fix come out as StoreError with a one-line message.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

DEFAULT_URL = "sqlite:///results.db"


class StoreError(Exception):
    """A store problem the user can fix (bad URL, unreachable server, unwritable file)."""


def normalize_url(url_or_path: str | os.PathLike[str]) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as SQLite)."""
    text = os.fspath(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser()}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 60000")
    cur.execute("PRAGMA foreign_keys = ON")
    try:
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
    except Exception:  # read-only connections cannot switch the journal mode
        pass
    cur.close()


def make_engine(url: str, read_only: bool = False) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets WAL, a busy timeout and read-only mode on request."""
    try:
        parsed = make_url(normalize_url(url))
    except ArgumentError as exc:
        raise StoreError(f"not a database URL or path: {url!r}") from exc
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:":
            path = Path(db).expanduser().resolve()
            if read_only:
                parsed = parsed.set(database=f"file:{path}?mode=ro", query={"uri": "true"})
            else:
                if not path.parent.is_dir():
                    raise StoreError(f"cannot create database {path}: folder {path.parent} does not exist")
                parsed = parsed.set(database=str(path))
        kwargs = {"connect_args": {"timeout": 60}}
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(parsed, **kwargs)
    except (ImportError, ModuleNotFoundError) as exc:
        raise StoreError(f"no driver for {parsed.get_backend_name()}: {exc}") from exc
    except NoSuchModuleError as exc:
        raise StoreError(f"unknown kind of database {parsed.drivername!r} in {url!r}; "
                         f"use sqlite:///FILE, postgresql+psycopg://USER@HOST/DB or a file path") from exc


T = TypeVar("T")


def retry_schema_race(create: Callable[[], T], attempts: int = 5) -> T:
    """Run `create` (CREATE TABLE ...), retrying when another worker created the same schema at once.

    SQLAlchemy's create_all checks which tables exist, then creates the others: two workers
    starting together on a new database both decide to create, and the loser gets "already
    exists" (SQLite) or a duplicate key in pg_type (PostgreSQL). On retry the tables are there.
    """
    for attempt in range(attempts):
        try:
            return create()
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            detail = str(exc.orig if exc.orig is not None else exc).lower()
            if attempt == attempts - 1 or not ("already exists" in detail or "duplicate key" in detail):
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def display_url(url: str) -> str:
    """The URL for messages and logs: any password replaced by ***."""
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, else None."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def error_detail(exc: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy wraps it with SQL and a link)."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def one_line_db_error(url: str, exc: DBAPIError) -> str:
    return f"cannot open database {display_url(url)}: {error_detail(exc)}"


def executemany_columns(conn: Connection, stmt: Any, columns: dict[str, list[Any]]) -> None:
    """Run `stmt` once per row of `columns` (bind name -> values) through the driver's executemany.

    SQLAlchemy's own executemany builds each row's parameters in Python, which for a few thousand
    rows of 60 columns costs more than the database's work; the values here are plain Python
    floats, ints, strings, bytes and None, which every driver takes as they are.
    """
    compiled = stmt.compile(dialect=conn.dialect)
    if compiled.positional:
        params: list[Any] = list(zip(*(columns[name] for name in compiled.positiontup)))
    else:
        params = [dict(zip(columns, row)) for row in zip(*columns.values())]
    conn.exec_driver_sql(compiled.string, params)


@contextmanager
def connect(source: Any) -> Iterator[Connection]:
    """A connection from what a reader is given: a Connection (used as it is), an Engine, or a Store (its
    engine; duck-typed, since core.store.db imports this module)."""
    if isinstance(source, Connection):
        yield source
        return
    engine: Engine = source if isinstance(source, Engine) else source.engine
    with engine.connect() as conn:
        yield conn
