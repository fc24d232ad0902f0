"""A schema-v4 results store, for the upgrade tests: a genuine v2 store (tests.v2_store) brought to the current
version (its truths rebuilt from the trimaps, its summaries and mask votes built), then every v5 and v6 change taken
away again (columns dropped, v6's renames undone, version 4) and its label scores recomputed as v4 computed them (no image
evidence).
"""
from __future__ import annotations

from sqlalchemy import MetaData, Table, select, text

from core.data.dataset import PreparedDataset
from core.store.db import Store, make_engine
from core.store.schema import ADDED_IN
from tests.store_renames import current_value, undo_v6
from tests.v2_store import V2Store, build_v2_store

V5_COLUMNS = {"truth_masks": ("image",), "sweep_images": ("image_evidence",)}
V6_COLUMNS = {"trials": ADDED_IN[6]["trials"]}
V4_TABLES = ("datasets", "images", "trials", "epochs", "image_results", "masks", "sweep_images", "sweep_image_windows",
             "sweep_image_votes", "truth_masks", "reviews")


def build_v4_store(url: str, data: PreparedDataset, seed: int = 0) -> V2Store:
    """A v4 store over `data`: the v2 store's rows with v4's truths, summaries and votes, at version 4."""
    v2 = build_v2_store(url, data, seed)
    Store(url, log=lambda _msg: None).dispose()  # v2 -> current
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE truth_masks SET image = NULL"))  # v4 kept no images: its scores had no evidence
        from core.store import summaries, suspicion

        summaries.build(conn)
        suspicion.build(conn)
        undo_v6(conn)
        for table, columns in V5_COLUMNS.items():
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE schema_info SET value = '4' WHERE key = 'schema_version'"))
    engine.dispose()
    return v2


def dump_v4(url: str, leave_out: tuple[str, ...] = ()) -> dict[str, list[tuple]]:
    """Every row of every v4 table, v4 columns only (less `leave_out`, and v6's), in key order, values as v6
    writes them."""
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            found = MetaData()
            out = {}
            for name in V4_TABLES:
                t = Table(name, found, autoload_with=conn)
                keep = [c for c in t.c if c.name not in (*V5_COLUMNS.get(name, ()), *V6_COLUMNS.get(name, ()), *leave_out)]
                out[name] = [tuple(current_value(v) for v in r)
                             for r in conn.execute(select(*keep).order_by(*t.primary_key.columns)).all()]
            return out
    finally:
        engine.dispose()
