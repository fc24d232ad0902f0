"""A schema-v3 results store, for the upgrade tests: a genuine v2 store (tests.v2_store) with v3's per-image
summaries, then every v4, v5 and v6 change taken away again (its columns dropped, its tables removed, v6's renames
undone, version 3).

v3 added only the two summary tables to v2, so this is v3's shape exactly; the frozen V3 tables below
name what a v3 store holds, for comparing rows before and after an upgrade.
"""
from __future__ import annotations

from sqlalchemy import MetaData, Table, select, text

from core.data.dataset import PreparedDataset
from core.store.db import Store, make_engine
from core.store.schema import ADDED_IN, RENAMED_IN, SUMMARY_METRICS, SUMMARY_STATS, MODE_COLUMNS
from tests.store_renames import current_value, undo_v6
from tests.v2_store import V2_TABLES, V2Store, build_v2_store

V4_TABLES = ("truth_masks", "reviews", "sweep_image_votes")
V4_COLUMNS = {"datasets": ("layout",), "images": ("group_name", "path"),
              "sweep_images": ("label_suspicion", "consensus_dice", "agreement", "contradiction")}
V6_COLUMNS = {"trials": ADDED_IN[6]["trials"]}
V3_SUMMARY_COLUMNS = ("sweep", "image_id", "trials", "top_mode", *MODE_COLUMNS.values(), *RENAMED_IN[6]["sweep_images"],
                      *(f"{m}_{s}" for m in SUMMARY_METRICS for s in SUMMARY_STATS))


def build_v3_store(url: str, data: PreparedDataset, seed: int = 0) -> V2Store:
    """A v3 store over `data`: the v2 store's rows plus the summaries of its sweeps, at version 3."""
    v2 = build_v2_store(url, data, seed)
    Store(url, log=lambda _msg: None).dispose()  # v2 -> current: builds the summaries
    engine = make_engine(url)
    with engine.begin() as conn:
        undo_v6(conn)
        for table in V4_TABLES:
            conn.execute(text(f"DROP TABLE {table}"))
        for table, columns in (*V4_COLUMNS.items(), ("sweep_images", ("image_evidence",))):  # and v5's
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE schema_info SET value = '3' WHERE key = 'schema_version'"))
    engine.dispose()
    return v2


def dump_v3(url: str) -> dict[str, list[tuple]]:
    """Every row of every v3 table, v3 columns only, in key order."""
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            found = MetaData()
            tables = [Table(t.name, found, autoload_with=conn) for t in V2_TABLES if t.name != "schema_info"]
            tables += [Table(name, found, autoload_with=conn) for name in ("sweep_images", "sweep_image_windows")]
            out = {}
            for t in tables:
                keep = [c for c in t.c if t.name != "sweep_images" or c.name in V3_SUMMARY_COLUMNS]
                keep = [c for c in keep if c.name not in (*V4_COLUMNS.get(t.name, ()), *V6_COLUMNS.get(t.name, ()))]
                out[t.name] = [tuple(current_value(v) for v in r) for r in conn.execute(select(*keep).order_by(*t.primary_key.columns)).all()]
            return out
    finally:
        engine.dispose()
