"""Optuna's storage, kept inside the results database.

Optuna's relational storage has a table named `trials`, which is also the name of the
results store's public `trials` table, so both cannot share one database. Optuna's journal
storage can: its whole state is an append-only log, kept here in the table `optuna_journal`
of the same database (SQLite or PostgreSQL). One file or one server holds everything.

Workers append log entries in one transaction each; appends are serialised (SQLite has one
writer; PostgreSQL takes a table lock) so every reader sees entries in the same order.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from sqlalchemy import Column, Integer, MetaData, Table, Text, insert, select, text
from sqlalchemy.engine import Engine

from core.store.engine import make_engine, normalize_url

_meta = MetaData()
journal = Table(
    "optuna_journal", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("log", Text, nullable=False),  # one JSON-encoded journal entry
)


class SQLJournalBackend(BaseJournalBackend):
    """Optuna journal entries as rows of `optuna_journal`, in insertion order."""

    def __init__(self, engine: Engine, read_only: bool = False):
        self.engine = engine
        if not read_only:
            _meta.create_all(engine)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        if not self._exists():
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(select(journal.c.log).order_by(journal.c.id).offset(log_number_from)).scalars().all()
        return [json.loads(r) for r in rows]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        rows = [{"log": json.dumps(log)} for log in logs]
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # commit in id order, so no reader skips an entry
                conn.execute(text("LOCK TABLE optuna_journal IN EXCLUSIVE MODE"))
            conn.execute(insert(journal), rows)

    def _exists(self) -> bool:
        with self.engine.connect() as conn:
            return self.engine.dialect.has_table(conn, "optuna_journal")


def optuna_storage(url: str, read_only: bool = False, engine: Engine | None = None) -> JournalStorage:
    """The Optuna storage of the results database at `url` (a SQLAlchemy URL or file path)."""
    engine = engine or make_engine(normalize_url(url), read_only=read_only)
    return JournalStorage(SQLJournalBackend(engine, read_only=read_only))


def study_names(storage: JournalStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def load_study(url: str, name: str, read_only: bool = True) -> optuna.Study:
    """A study of the results database, for reading (the dashboard) or continuing (the sweep)."""
    return optuna.load_study(study_name=name, storage=optuna_storage(url, read_only=read_only))
