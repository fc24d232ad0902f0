"""Per-image summaries of a sweep's complete trials (schema v3): what the "hard for every model"
ranking reads instead of every per-image result of the sweep.

`sweep_images` holds, per sweep and image, each metric's median, mean, min, max and count over the
sweep's complete trials, and how many of those trials put the image in each failure mode. It is
updated in the transaction in which `Store.finish_trial` closes a trial as complete (and built from
image_results by the upgrade), so it never disagrees with image_results.

The medians stay exact without reading the sweep's results again at every close:
`sweep_image_windows` keeps, per image and metric, the count, sum, min and max of the values and a
window of at most WINDOW of them, sorted, around the median, with how many sorted values lie below
it. A new value below the window shifts it up one rank, one above it changes nothing, any other one
(inside it, or beyond an end with no value past that end) joins it; the window is then trimmed back
to WINDOW values, on the side farther from the median. While a sweep has at most WINDOW complete
trials the window holds every value. Only when the median's ranks leave the window (after a run of
values on one side of it) is that image's state recomputed from image_results, in the same
transaction; `add_trial` returns how many images that took.

Store.finish_trial then adds the trial's masks to the sweep's mask votes and rescores its images' labels
(core.store.suspicion.add_trial) in the same transaction, under the lock `add_trial` took; the upgrade
follows `build` with suspicion.build, which refills the votes from every stored mask.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.engine import Connection

from core.metrics import NOT_COMPUTED, SEVERITY
from core.store import schema as st
from core.store.engine import executemany_columns

WINDOW = 16                   # values kept around each median
_LEFT = (WINDOW - 2) // 2     # of them below the lower median rank when a window is (re)built
MODES = tuple(st.MODE_COLUMNS)  # failure-mode count order in STATE and in sweep_images' n_* columns
# ties for the most common mode go to the worse one (core.metrics.SEVERITY), not computed last
_TIE_ORDER = np.array([MODES.index(m) for m in (*SEVERITY, NOT_COMPUTED)])
_MODE_CODE = {mode: k for k, mode in enumerate(MODES)}

METRIC_STATE = np.dtype([("n", "<i8"), ("below", "<i8"), ("sum", "<f8"), ("min", "<f8"), ("max", "<f8"),
                         ("window", "<f8", (WINDOW,))])
STATE = np.dtype([("metrics", METRIC_STATE, (len(st.SUMMARY_METRICS),)), ("modes", "<i8", (len(MODES),))])


def top_modes(counts: np.ndarray) -> np.ndarray:
    """Each row's most common failure mode from (images, len(MODES)) counts; ties go to the worse mode."""
    counts = np.asarray(counts).reshape(-1, len(MODES))
    return np.array(MODES, dtype=object)[_TIE_ORDER[np.argmax(counts[:, _TIE_ORDER], axis=1)]]


def mode_codes(modes: Sequence[Any]) -> np.ndarray:
    """Index into MODES of each failure_mode value (NULL counts as not computed)."""
    other = _MODE_CODE[NOT_COMPUTED]
    return np.array([_MODE_CODE.get(m, other) for m in modes], dtype=np.int64)


def _empty(k: int) -> np.ndarray:
    state = np.zeros(k, STATE)
    metrics = state["metrics"]
    metrics["min"], metrics["max"], metrics["window"] = np.inf, -np.inf, np.nan
    return state


def _lock(conn: Connection, sweep: str) -> None:
    """Serialise writers of one sweep's summaries until the transaction ends.

    SQLite has one writer at a time already (finish_trial and the upgrade write before they get here);
    on PostgreSQL two workers closing trials of a sweep at once would otherwise both read the same
    windows and one update would be lost.
    """
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(f"segsweep sweep_images {sweep}".encode(), digest_size=8).digest()
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int.from_bytes(digest, "big", signed=True)})


# -- from image_results --------------------------------------------------------------------------------

def _states(ids: np.ndarray, values: np.ndarray, modes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """States of every image among `ids` from all its values ((rows, metrics), NaN = NULL) and mode codes."""
    images, pos = np.unique(ids, return_inverse=True)
    k = len(images)
    state = _empty(k)
    state["modes"] = np.bincount(pos * len(MODES) + modes, minlength=k * len(MODES)).reshape(k, len(MODES))
    slots = np.arange(WINDOW)
    for j in range(len(st.SUMMARY_METRICS)):
        keep = ~np.isnan(values[:, j])
        p, x = pos[keep], values[keep, j]
        order = np.lexsort((x, p))
        p, x = p[order], x[order]
        counts = np.bincount(p, minlength=k)
        starts = np.cumsum(counts) - counts
        has = counts > 0
        m = state["metrics"][:, j]
        m["n"] = counts
        m["sum"] = np.bincount(p, weights=x, minlength=k)
        if not len(x):
            continue
        m["min"] = np.where(has, x[np.minimum(starts, len(x) - 1)], np.inf)
        m["max"] = np.where(has, x[np.clip(starts + counts - 1, 0, len(x) - 1)], -np.inf)
        below = np.clip((counts - 1) // 2 - _LEFT, 0, np.maximum(counts - WINDOW, 0))
        m["below"] = below
        index = np.minimum(starts[:, None] + below[:, None] + slots, len(x) - 1)
        m["window"] = np.where(slots < np.minimum(counts, WINDOW)[:, None], x[index], np.nan)
    return images, state


def _from_results(conn: Connection, sweep: str,
                  image_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(image ids, states, results read) of the sweep's images, or of the given ones, from every result of
    the sweep's complete trials."""
    r = st.image_results
    stmt = (select(r.c.image_id, *(r.c[m] for m in st.SUMMARY_METRICS), r.c.failure_mode)
            .join_from(r, st.trials, st.trials.c.id == r.c.trial_id)
            .where(st.trials.c.sweep == sweep, st.trials.c.state == "complete"))
    if image_ids is not None and len(image_ids) <= 500:  # a few images: their rows only (ix_image_results_image)
        stmt = stmt.where(r.c.image_id.in_([int(i) for i in image_ids]))
    wanted = None if image_ids is None else np.asarray(image_ids, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    result = conn.execute(stmt)
    try:  # the DB-API's plain tuples, a batch at a time: a million rows as Python objects would take GBs
        while rows := result.cursor.fetchmany(50_000):
            frame = pd.DataFrame.from_records(rows, columns=["image_id", *st.SUMMARY_METRICS, "failure_mode"])
            if wanted is not None:
                frame = frame[frame["image_id"].isin(wanted)]
            parts.append((frame["image_id"].to_numpy(np.int64), frame[list(st.SUMMARY_METRICS)].to_numpy(np.float64),
                          mode_codes(frame["failure_mode"].tolist())))
    finally:
        result.close()
    if not parts:
        parts.append((np.zeros(0, np.int64), np.zeros((0, len(st.SUMMARY_METRICS))), np.zeros(0, np.int64)))
    ids, values, modes = (np.concatenate(p) for p in zip(*parts))
    images, state = _states(ids, values, modes)
    return images, state, len(ids)


# -- one more trial ------------------------------------------------------------------------------------

def _add(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Add one value per image (NaN: none) to one metric's states `m` in place; True where the median's
    ranks left the window (those images must be recomputed)."""
    n, below, window = m["n"], m["below"], m["window"]
    rows = np.arange(len(v))
    has = ~np.isnan(v)
    held = np.count_nonzero(~np.isnan(window), axis=1)
    # a value beyond an end of the window joins it when no value lies beyond that end, else it only counts
    under = has & (held > 0) & (v < window[:, 0]) & (below > 0)
    over = has & (held > 0) & (v > window[rows, np.maximum(held - 1, 0)]) & (below + held < n)
    inside = has & ~under & ~over
    grown = np.concatenate([window, np.where(inside, v, np.nan)[:, None]], axis=1)
    grown.sort(axis=1)  # NaN last
    held = held + inside
    n = n + has
    below = below + under
    lo, hi = (n - 1) // 2 - below, n // 2 - below  # the median's ranks inside the window
    drop_first = (held > WINDOW) & (lo > held - 1 - hi)  # trim the side farther from the median
    window = np.where(drop_first[:, None], grown[:, 1:], grown[:, :WINDOW])
    below, lo, hi = below + drop_first, lo - drop_first, hi - drop_first
    held = np.minimum(held, WINDOW)
    m["n"], m["below"], m["window"] = n, below, window
    m["sum"] = m["sum"] + np.where(has, v, 0.0)
    m["min"], m["max"] = np.fmin(m["min"], v), np.fmax(m["max"], v)
    return has & ((lo < 0) | (hi >= held))


def add_trial(conn: Connection, sweep: str, rows: Sequence[dict[str, Any]]) -> int:
    """Add a trial of `sweep` closing as complete (its image_results rows, already inserted in this transaction)
    to the sweep's per-image summaries, under the sweep's lock (held to the transaction's end); returns how many
    images had to be recomputed from image_results."""
    if not rows:
        return 0
    _lock(conn, sweep)
    ids = np.array([int(r["image_id"]) for r in rows], dtype=np.int64)
    values = np.stack([np.array([r.get(m) for r in rows], dtype=np.float64) for m in st.SUMMARY_METRICS], axis=1)
    w = st.sweep_image_windows
    stored = {int(i): bytes(b) for i, b in conn.execute(select(w.c.image_id, w.c.state).where(w.c.sweep == sweep))}
    existing = np.array([int(i) in stored for i in ids.tolist()], dtype=bool)
    known = existing & np.array([len(stored.get(int(i), b"")) == STATE.itemsize for i in ids.tolist()], dtype=bool)
    state = _empty(len(ids))
    if known.any():
        state[known] = np.frombuffer(b"".join(stored[int(i)] for i in ids[known].tolist()), dtype=STATE)
    np.add.at(state["modes"], (np.arange(len(ids)), mode_codes([r.get("failure_mode") for r in rows])), 1)
    lost = existing & ~known  # a state of another layout than STATE: recomputed
    for j in range(len(st.SUMMARY_METRICS)):
        lost |= _add(state["metrics"][:, j], values[:, j])
    if lost.any():
        where = np.flatnonzero(lost)
        fresh_ids, fresh, _ = _from_results(conn, sweep, ids[where])
        state[where] = fresh[np.searchsorted(fresh_ids, ids[where])]  # every one has this trial's row at least
    _write(conn, sweep, ids, state, existing)
    return int(lost.sum())


# -- writing -------------------------------------------------------------------------------------------

def summary_columns(sweep: str, ids: np.ndarray, state: np.ndarray) -> dict[str, list[Any]]:
    """The sweep_images columns of these images' states, column name -> values."""
    k = len(ids)
    columns: dict[str, list[Any]] = {"sweep": [sweep] * k, "image_id": ids.tolist()}
    counts = state["modes"]
    columns["trials"] = counts.sum(axis=1).tolist()
    columns["top_mode"] = top_modes(counts).tolist() if k else []
    for c, column in enumerate(st.MODE_COLUMNS.values()):
        columns[column] = counts[:, c].tolist()
    rows = np.arange(k)
    for j, metric in enumerate(st.SUMMARY_METRICS):
        m = state["metrics"][:, j]
        n, window = m["n"], m["window"]
        some = n > 0
        lo = np.where(some, (n - 1) // 2 - m["below"], 0)
        hi = np.where(some, n // 2 - m["below"], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats = {"median": (window[rows, lo] + window[rows, hi]) / 2, "mean": m["sum"] / np.maximum(n, 1),
                     "min": m["min"], "max": m["max"]}
        for name, values in stats.items():
            columns[f"{metric}_{name}"] = (values.tolist() if some.all() else
                                           [v if s else None for v, s in zip(values.tolist(), some.tolist())])
        columns[f"{metric}_trials"] = n.tolist()
    return columns


def _write(conn: Connection, sweep: str, ids: np.ndarray, state: np.ndarray, existing: np.ndarray) -> None:
    raw, size = state.tobytes(), STATE.itemsize
    tables = ((st.sweep_images, summary_columns(sweep, ids, state)),
              (st.sweep_image_windows, {"sweep": [sweep] * len(ids), "image_id": ids.tolist(),
                                        "state": [raw[k * size:(k + 1) * size] for k in range(len(ids))]}))
    for rows, old in ((existing, True), (~existing, False)):
        if not rows.any():
            continue
        for table, columns in tables:
            part = columns if rows.all() else {n: list(itertools.compress(v, rows.tolist())) for n, v in columns.items()}
            if old:
                stmt = (update(table)
                        .where(table.c.sweep == bindparam("key_sweep"), table.c.image_id == bindparam("key_image"))
                        .values({n: bindparam(n) for n in part if n not in ("sweep", "image_id")}))
                part = {**part, "key_sweep": part["sweep"], "key_image": part["image_id"]}
            else:
                stmt = insert(table).values({n: bindparam(n) for n in part})
            executemany_columns(conn, stmt, part)


def rebuild(conn: Connection, sweep: str) -> tuple[int, int]:
    """Recompute one sweep's summaries from image_results (their label columns NULL until suspicion.rebuild);
    returns (images, results read)."""
    _lock(conn, sweep)
    ids, state, n_results = _from_results(conn, sweep)
    for table in (st.sweep_images, st.sweep_image_windows):  # the votes are suspicion.rebuild's
        conn.execute(delete(table).where(table.c.sweep == sweep))
    _write(conn, sweep, ids, state, np.zeros(len(ids), dtype=bool))
    return len(ids), n_results


def complete_sweeps(conn: Connection) -> list[str]:
    """The sweeps with a complete trial, by name: those the upgrade's builds fill."""
    return list(conn.execute(select(st.trials.c.sweep).distinct().where(st.trials.c.state == "complete")
                             .order_by(st.trials.c.sweep)).scalars())


def build(conn: Connection) -> tuple[int, int, int]:
    """Create the summary tables if missing and fill them for every sweep; returns (sweeps, images, results)."""
    for table in st.SUMMARY_TABLES:
        table.create(conn, checkfirst=True)
    sweeps = complete_sweeps(conn)
    images = results = 0
    for sweep in sweeps:
        n_images, n_results = rebuild(conn, sweep)
        images, results = images + n_images, results + n_results
    return len(sweeps), images, results
