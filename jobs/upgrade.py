"""`python -m jobs.upgrade --db URL`: bring a results store to the current schema, in place.

A v1 store gains the v2 per-image diagnostics, backfilled for its existing trials from their stored
masks and the dataset's trimaps; a v1 or v2 store gains the v3 per-image summaries of every sweep,
built from its results (see core.store.upgrade). jobs.train and jobs.sweep do the same when they
open an older store; this command does only that, for a store the dashboard is reading.
"""
from __future__ import annotations

import sys

from sqlalchemy.exc import DBAPIError

from core.store.db import SCHEMA_VERSION, Store, StoreError, display_url
from core.store.upgrade import backfill_counts
from jobs import cli

PROG = "jobs.upgrade"


def main(argv: list[str] | None = None) -> int:
    p = cli.OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="SQLAlchemy URL or SQLite file path of the results store")
    args = p.parse_args(argv)
    messages: list[str] = []
    try:
        store = Store(args.db, log=messages.append)
    except StoreError as exc:
        cli.user_error(PROG, str(exc).splitlines()[0])
    try:
        with store.engine.connect() as conn:
            counts = backfill_counts(conn)  # a writable Store has created any missing tables
    except DBAPIError as exc:
        cli.user_error(PROG, cli.db_error(args.db, exc))
    finally:
        store.dispose()
    for message in messages:
        print(f"{PROG}: {message}")
    if not messages:
        print(f"{PROG}: {display_url(store.url)} is at schema version {SCHEMA_VERSION} already; nothing to do")
    if counts:
        shown = ", ".join(f"{mode} {n}" for mode, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"{PROG}: per-image results by failure mode: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
