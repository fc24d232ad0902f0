"""Older stores in the upgrade tests, seen through schema v6's renames (schema.RENAMED_IN): a dump reads each
column under whichever name the store has and maps renamed values, so "every row kept" compares a store
before and after an upgrade; `undo_v6` takes v6's changes away from an upgraded store, for the builders of
v3 and v4 stores (which upgrade a genuine v2 store to the current version, then strip what came later)."""
from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import Connection, MetaData, Table, inspect, select, text, update

from core.store import schema as st
from core.store.db import make_engine

RENAMED = st.RENAMED_IN[6]
NEW_VALUE = RENAMED["values"]


def current_value(value: Any) -> Any:
    """A stored value as v6 writes it ('missed pet' -> 'missed object')."""
    return NEW_VALUE.get(value, value) if isinstance(value, str) else value


def dump_tables(url: str, tables: Iterable[tuple[str, Iterable[str] | None]]) -> dict[str, list[tuple]]:
    """Every row of each (table, columns) in key order; columns given by any version's name (None: all the store
    has), read under the name the store has, values as v6 writes them."""
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            found = MetaData()
            out = {}
            for name, columns in tables:
                t = Table(name, found, autoload_with=conn)
                pick = t.c if columns is None else [_either(t, c) for c in columns]
                rows = conn.execute(select(*pick).order_by(*t.primary_key.columns)).all()
                out[name] = [tuple(current_value(v) for v in r) for r in rows]
            return out
    finally:
        engine.dispose()


def _either(t: Table, column: str) -> Any:
    """`column` of `t`, under its old or its new name, whichever the store has."""
    renames = RENAMED.get(t.name, {})
    other = {**renames, **{new: old for old, new in renames.items()}}
    return t.c[column] if column in t.c else t.c[other[column]]


def undo_v6(conn: Connection) -> None:
    """A v6 store back to v5's shape and words, in the caller's transaction (schema_info left to the caller)."""
    quote = conn.dialect.identifier_preparer.quote
    for column in st.ADDED_IN[6]["trials"] or ():
        conn.execute(text(f"ALTER TABLE trials DROP COLUMN {quote(column)}"))
    for table in ("image_results", "sweep_images"):
        if not inspect(conn).has_table(table):
            continue
        for old, new in RENAMED[table].items():
            conn.execute(text(f"ALTER TABLE {quote(table)} RENAME COLUMN {quote(new)} TO {quote(old)}"))
    old_value = {new: old for old, new in NEW_VALUE.items()}
    for table, column in (("image_results", "failure_mode"), ("sweep_images", "top_mode")):
        t = Table(table, MetaData(), autoload_with=conn)
        for new, old in old_value.items():
            conn.execute(update(t).where(t.c[column] == new).values({column: old}))
