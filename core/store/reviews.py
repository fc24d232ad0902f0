"""Review marks: a person's verdict on an image's label ('label error', 'hard image' or 'fine') and a note.

The dashboard's only write. A mark is kept per dataset and image name (the reviews table), so it outlives
sweeps and re-registrations. Each write is one short transaction, an upsert (SQLite and PostgreSQL: ON
CONFLICT; others: update, then insert), so it is safe beside workers writing trials: SQLite's WAL and
busy timeout (core.store.engine) queue it behind a closing trial, and two people marking the same image
at once leave the later mark.
"""
from __future__ import annotations

import csv
import io
from typing import Any

import pandas as pd
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from core.data.layout import image_rel
from core.store import schema as st
from core.store.engine import StoreError, connect
from core.store.queries import Source

EXPORT_COLUMNS = ("name", "path", "mark", "note", "score")


def _engine(store_or_engine: Any) -> Engine:
    if isinstance(store_or_engine, Engine):
        return store_or_engine
    if getattr(store_or_engine, "read_only", False):
        raise StoreError("this store was opened read-only; review marks are not written")
    return store_or_engine.engine


def _upsert(conn: Connection, row: dict[str, Any]) -> None:
    values = {k: row[k] for k in ("mark", "note", "marked_at")}
    r = st.reviews
    if conn.dialect.name in ("sqlite", "postgresql"):
        if conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        conn.execute(dialect_insert(r).values(row).on_conflict_do_update(index_elements=["dataset", "image"],
                                                                         set_=values))
        return
    key = and_(r.c.dataset == row["dataset"], r.c.image == row["image"])
    if conn.execute(update(r).where(key).values(values)).rowcount == 0:
        conn.execute(insert(r).values(row))


def mark(store_or_engine: Any, dataset: str, image: str, mark: str | None, note: str | None = None) -> None:
    """Mark an image of a dataset (replacing its mark), or remove its mark (mark=None).

    ValueError for a mark outside REVIEW_MARKS; StoreError on a store opened read-only.
    """
    if mark is not None and mark not in st.REVIEW_MARKS:
        raise ValueError(f"unknown review mark {mark!r}; choose from {', '.join(st.REVIEW_MARKS)}")
    note = (note or "").strip() or None
    with _engine(store_or_engine).begin() as conn:
        if mark is None:
            conn.execute(delete(st.reviews).where(st.reviews.c.dataset == dataset, st.reviews.c.image == image))
        else:
            _upsert(conn, {"dataset": dataset, "image": image, "mark": mark, "note": note, "marked_at": st.utc_now()})


def marks(source: Source, dataset: str) -> pd.DataFrame:
    """The dataset's review marks: image, mark, note, marked_at (newest first)."""
    r = st.reviews
    stmt = (select(r.c.image, r.c.mark, r.c.note, r.c.marked_at).where(r.c.dataset == dataset)
            .order_by(r.c.marked_at.desc(), r.c.image))
    with connect(source) as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def export_csv(source: Source, dataset: str, sweep: str | None = None) -> str:
    """The dataset's marked images as CSV text (header name,path,mark,note,score), for relabelling elsewhere.

    path is the image file relative to the dataset root (images.path; images/NAME.jpg for the layouts that
    keep none); score is the sweep's label_suspicion when a sweep is given, else empty.
    """
    r, i, s = st.reviews, st.images, st.sweep_images
    score = s.c.label_suspicion if sweep is not None else None
    columns = [r.c.image, i.c.path, r.c.mark, r.c.note]
    stmt = (select(*columns, *([score] if score is not None else []))
            .select_from(r.outerjoin(i, and_(i.c.dataset == r.c.dataset, i.c.name == r.c.image)))
            .where(r.c.dataset == dataset).order_by(r.c.image))
    if sweep is not None:
        stmt = stmt.outerjoin(s, and_(s.c.sweep == sweep, s.c.image_id == i.c.id))
    with connect(source) as conn:
        rows = conn.execute(stmt).all()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        name, path, verdict, note = row[:4]
        value = row[4] if sweep is not None else None
        writer.writerow([name, path or image_rel(name), verdict, note or "",
                         "" if value is None else f"{float(value):.6g}"])
    return out.getvalue()
