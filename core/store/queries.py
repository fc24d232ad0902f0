"""The read side of the results store: SQL queries that return pandas DataFrames.

The dashboard (and any job that wants a summary) reads through these functions; each takes a
`Store`, an Engine or an open Connection, lets SQL do the filtering, ordering and limiting,
and returns a DataFrame or a small Python value. They only ever SELECT, so they work on a
`Store(url, read_only=True)`. Everything is SQLAlchemy Core, so SQLite and PostgreSQL both
work (best_trials uses a window function: SQLite >= 3.25).

Speed matters on large stores (a million `image_results` rows): the per-trial queries walk
`ix_image_results_trial_dice` in dice order and stop at LIMIT, the per-image ones use
`ix_image_results_image`. The sweep-wide ranking (`image_medians`) reads the per-image summaries
that closing a trial keeps up to date (schema v3); only on an older store does it read every row of
the sweep (a median needs them).

Older stores (v1-v5) are read as they are: a column a later version added (images.group_name and
path, datasets.layout, sweep_images' label-suspicion parts) reads as NULL there, a table it
added (reviews, truth_masks) as empty, and a column or value a later version renamed (schema.RENAMED_IN)
reads under its current name.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import (Float, String, Table, and_, case, distinct, exists, false, func, inspect, literal,
                        literal_column, or_, select)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement, Select

from core.labels import LIKELY_LABEL_ERROR
from core.metrics import FAILURE_MODES, NOT_COMPUTED, SEVERITY, spread
from core.store import selection, summaries
from core.store.db import Store
from core.store.engine import connect
from core.store.mask_png import decode_mask
from core.store.suspicion import LABEL_COLUMNS, readable_mask
from core.store.schema import (
    MODE_COLUMNS,
    REVIEW_MARKS,
    datasets,
    epochs,
    image_results,
    images,
    masks,
    reviews,
    sweep_images,
    trials,
    truth_masks,
    holds,
    stored_name,
    stored_values,
    stored_version,
)

Source = Store | Engine | Connection
V1_METRICS = ("dice", "dice_no_border", "iou")
# v2 (core.metrics diagnostics); NULL where not computed, so means and charts leave those rows out
V2_METRICS = ("precision", "recall", "fp_area", "fn_area", "boundary_iou", "hd95", "fp_blobs", "entropy")
METRICS = V1_METRICS + V2_METRICS
LOWER_IS_BETTER = frozenset({"fp_area", "fn_area", "hd95", "fp_blobs", "entropy"})  # worst = highest
UNIT_RANGE = frozenset(METRICS) - {"hd95", "fp_blobs"}  # metrics in [0, 1]
V2_COLUMNS = (*V2_METRICS, "object_missed", "failure_mode")
IMAGE_COLUMNS = ("name", "dataset", "split", "breed", "species", "width", "height", "brightness", "fg_fraction",
                 "group_name", "path")  # the last two: v4, NULL on older stores
NO_GROUP = "(no group)"  # ImageFilter.groups' name for images without a group, where others have one
UNMARKED = "unmarked"    # ImageFilter.marks' name for images nobody has marked
# "Hard for every model" leaves out likely label errors on request: a label_suspicion at or above
# core.labels.LIKELY_LABEL_ERROR, or a person's 'label error' mark; a 'hard image' or 'fine' mark keeps the
# image whatever its score
TRIAL_COLUMNS = ("id", "sweep", "study", "arch", "number", "state", "val_dice", "test_dice", "epochs_run",
                 "started_at", "finished_at", "device", "dataset", "image_size", "error", "checkpoint", "params",
                 "checkpoint_sha256", "encoder_weights", "encoder_sha256")  # the last three: v6, NULL on older stores


def _frame(src: Source, stmt: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
    with connect(src) as conn:
        result = conn.execute(stmt, params or {})
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _metric(metric: str) -> ColumnElement:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return image_results.c[metric]


def _stored(conn: Connection, table: Table, name: str) -> ColumnElement:
    """table.name as this store spells it: a column a later version renamed is read under its old name."""
    old = stored_name(stored_version(conn), table.name, name)
    if old == name:
        return table.c[name]
    quote = conn.dialect.identifier_preparer.quote
    return literal_column(f"{quote(table.name)}.{quote(old)}", table.c[name].type)


def _mode(conn: Connection, column: ColumnElement) -> ColumnElement:
    """A stored failure-mode column (image_results.failure_mode, sweep_images.top_mode) with this store's
    renamed values read as today's (schema.RENAMED_IN: a v5 store's reads 'missed object'); any other column as it is."""
    old = stored_values(stored_version(conn))
    if not old or column.name != "failure_mode" and column.name != "top_mode":
        return column
    return case(*((column == o, literal(n)) for o, n in old.items()), else_=column)


def _current_modes(conn: Connection, values: Iterable[str | None]) -> list[str | None]:
    """Failure-mode values read from this store, as today's names."""
    old = stored_values(stored_version(conn))
    return [old.get(v, v) if v is not None else None for v in values]


def _worst_first(metric: str, mode: ColumnElement = image_results.c.failure_mode) -> list[ColumnElement]:
    """ORDER BY terms putting an image's worst value of `metric` first and not-computed (NULL) rows last.

    metric "failure_mode" orders `mode` by SEVERITY (not computed last), then by dice within a mode.
    """
    if metric == "failure_mode":
        rank = case(*((mode == name, k) for k, name in enumerate(SEVERITY)),
                    else_=len(SEVERITY))
        return [rank, image_results.c.dice]
    m = _metric(metric)
    return [(m.desc() if metric in LOWER_IS_BETTER else m.asc()).nulls_last()]


def has_diagnostics(src: Source) -> bool:
    """True when image_results has the v2 diagnostic columns (a v1 store read as it is has not)."""
    with connect(src) as conn:
        return _has_column(conn, image_results, "failure_mode")


def _v2(conn: Connection) -> list[ColumnElement]:
    """The v2 image_results columns when the store has them, else none."""
    if not has_diagnostics(conn):
        return []
    return [_mode(conn, image_results.c.failure_mode).label(c) if c == "failure_mode"
            else _stored(conn, image_results, c).label(c) for c in V2_COLUMNS]


def _ids(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


def _has_column(conn: Connection, table: Table, column: str) -> bool:
    """Whether this store's `table` has `column`: an older store lacks the later versions' columns, and its
    version (schema.stored_version, one small read) says which (schema.holds)."""
    return holds(stored_version(conn), table.name, column)


def _columns(conn: Connection, table: Table, names: Iterable[str]) -> list[ColumnElement]:
    """table's columns by name; a column this store predates reads as NULL under its name."""
    version = stored_version(conn)
    return [table.c[n] if holds(version, table.name, n) else literal(None, String).label(n) for n in names]


def _has_table(conn: Connection, table: Table) -> bool:
    return holds(stored_version(conn), table.name)


# -- sweeps and trials ----------------------------------------------------------------------

def has_results_tables(src: Source) -> bool:
    """True when the database holds the results schema (a sweep or train job has written to it)."""
    with connect(src) as conn:
        return "trials" in set(inspect(conn).get_table_names())


def sweeps(src: Source) -> pd.DataFrame:
    """One row per sweep, most recently active first: dataset, trial counts by state, times."""
    def n(state: str) -> ColumnElement:
        return func.sum(case((trials.c.state == state, 1), else_=0)).label(state)

    last = func.max(func.coalesce(trials.c.finished_at, trials.c.started_at)).label("last_activity")
    stmt = (select(trials.c.sweep, func.min(trials.c.dataset).label("dataset"), func.count().label("trials"),
                   n("running"), n("complete"), n("pruned"), n("failed"),
                   func.count(distinct(trials.c.arch)).label("archs"),
                   func.min(trials.c.started_at).label("started_at"), last)
            .group_by(trials.c.sweep).order_by(last.desc(), trials.c.sweep))
    return _frame(src, stmt)


def sweep_trials(src: Source, sweep: str) -> pd.DataFrame:
    """Every trial of a sweep (params as a dict), ordered by architecture and trial number."""
    with connect(src) as conn:
        stmt = (select(*_columns(conn, trials, TRIAL_COLUMNS)).where(trials.c.sweep == sweep)
                .order_by(trials.c.arch, trials.c.number))
        return _frame(conn, stmt)


def best_trials(src: Source, sweep: str) -> pd.DataFrame:
    """Each architecture's result (core.store.selection: its refit once complete, else the
    complete trial with the highest validation dice), one row per architecture."""
    with connect(src) as conn:
        stmt = (select(*_columns(conn, trials, TRIAL_COLUMNS))
                .where(trials.c.sweep == sweep, trials.c.state == "complete", trials.c.val_dice.is_not(None))
                .order_by(trials.c.arch, trials.c.number))
        frame = _frame(conn, stmt)
    if frame.empty:
        return frame
    rows = frame.to_dict("records")
    chosen = [selection.best_trial([r for r in rows if r["arch"] == arch]) for arch in sorted(frame["arch"].unique())]
    return pd.DataFrame([r for r in chosen if r is not None], columns=frame.columns).reset_index(drop=True)


def running_progress(src: Source, sweep: str) -> pd.DataFrame:
    """Trials still running with their latest recorded epoch (none yet: NaN epoch) and the worker's last
    heartbeat (a stale one hints at a dead worker)."""
    last = (select(epochs.c.trial_id, func.max(epochs.c.epoch).label("epoch"))
            .group_by(epochs.c.trial_id).subquery())
    with connect(src) as conn:
        stmt = (select(trials.c.id, trials.c.arch, trials.c.number, trials.c.started_at, trials.c.heartbeat_at,
                       trials.c.params, last.c.epoch, epochs.c.train_loss, epochs.c.val_loss, epochs.c.val_dice, epochs.c.seconds)
                .select_from(trials)
                .outerjoin(last, last.c.trial_id == trials.c.id)
                .outerjoin(epochs, and_(epochs.c.trial_id == last.c.trial_id, epochs.c.epoch == last.c.epoch))
                .where(trials.c.sweep == sweep, trials.c.state == "running")
                .order_by(trials.c.arch, trials.c.number))
        return _frame(conn, stmt)


def dataset_summary(src: Source, name: str) -> dict[str, Any] | None:
    """A dataset's source, root, creation time and layout with its image count per split and per group, or None."""
    with connect(src) as conn:
        row = conn.execute(select(*_columns(conn, datasets, [c.name for c in datasets.c]))
                           .where(datasets.c.name == name)).mappings().first()
        if row is None:
            return None
        splits = dict(conn.execute(select(images.c.split, func.count()).where(images.c.dataset == name)
                                   .group_by(images.c.split)).all())
        groups: dict[str, int] = {}
        if _has_column(conn, images, "group_name"):  # v4: images per group
            group = images.c.group_name
            groups = dict(conn.execute(select(group, func.count()).where(images.c.dataset == name, group.is_not(None))
                                       .group_by(group)).all())
    return {**dict(row), "splits": {k: int(v) for k, v in splits.items()},
            "groups": {k: int(v) for k, v in sorted(groups.items())}}


def dataset_roots(src: Source) -> dict[str, str]:
    """Dataset name -> the root folder its images were read from (the only place images are served from)."""
    with connect(src) as conn:
        return {name: root for name, root in conn.execute(select(datasets.c.name, datasets.c.root)).all()}


def dataset_kinds(src: Source) -> dict[str, dict[str, Any]]:
    """Dataset name -> its source, layout (NULL before v4) and root: what tells a page whether the data has
    breeds and species and an ignore band (core.data.layout.has_breeds, has_ignore_band)."""
    with connect(src) as conn:
        stmt = select(*_columns(conn, datasets, ("name", "source", "layout", "root")))
        return {r["name"]: dict(r) for r in conn.execute(stmt).mappings().all()}


def epoch_curves(src: Source, trial_ids: Sequence[int]) -> pd.DataFrame:
    """Learning-curve rows of the given trials, with each trial's arch, number and state."""
    stmt = (select(epochs, trials.c.arch, trials.c.number, trials.c.state)
            .join_from(epochs, trials, trials.c.id == epochs.c.trial_id)
            .where(epochs.c.trial_id.in_(_ids(trial_ids)))
            .order_by(trials.c.arch, trials.c.number, epochs.c.epoch))
    return _frame(src, stmt)


# -- per-image results -------------------------------------------------------------------

def image_scores(src: Source, trial_ids: Sequence[int]) -> pd.DataFrame:
    """Every per-image test result of the given trials (v2 diagnostics too, when stored), with the
    image's name and attributes."""
    with connect(src) as conn:
        stmt = (select(image_results.c.trial_id, image_results.c.image_id, image_results.c.dice,
                       image_results.c.iou, image_results.c.dice_no_border, *_v2(conn),
                       *(images.c[c] for c in ("name", "breed", "species", "split", "brightness", "fg_fraction")),
                       *_columns(conn, images, ["group_name"]))
                .join_from(image_results, images, images.c.id == image_results.c.image_id)
                .where(image_results.c.trial_id.in_(_ids(trial_ids)))
                .order_by(image_results.c.trial_id, image_results.c.image_id))
        return _frame(conn, stmt)


def paired_scores(src: Source, trial_a: int, trial_b: int) -> pd.DataFrame:
    """Per-image scores of two trials on the images both evaluated: columns `<metric>_a`, `<metric>_b`."""
    a, b = image_results.alias("a"), image_results.alias("b")
    with connect(src) as conn:
        shown = METRICS + ("failure_mode",) if has_diagnostics(conn) else V1_METRICS
        stmt = (select(a.c.image_id, images.c.name, images.c.breed, images.c.species,
                       *_columns(conn, images, ["group_name"]), *(_mode(conn, a.c[m]).label(f"{m}_a") for m in shown),
                       *(_mode(conn, b.c[m]).label(f"{m}_b") for m in shown))
                .join_from(a, b, b.c.image_id == a.c.image_id)
                .join(images, images.c.id == a.c.image_id)
                .where(a.c.trial_id == int(trial_a), b.c.trial_id == int(trial_b))
                .order_by(a.c.image_id))
        return _frame(conn, stmt)


@dataclass(frozen=True)
class ImageFilter:
    """Which images the failure explorer shows. None means "any"; an empty tuple matches nothing."""

    metric: str = "dice"                          # any of METRICS (or "failure_mode" to rank): ranks, range-filters
    score: tuple[float, float] = (0.0, 1.0)       # inclusive range of the metric
    breeds: tuple[str, ...] | None = None
    species: tuple[str, ...] | None = None
    splits: tuple[str, ...] | None = None
    brightness: tuple[float, float] | None = None  # inclusive, 0..1 mean luma
    fg_fraction: tuple[float, float] | None = None  # inclusive, foreground pixels / all pixels
    # failure modes (v2 stores); None: any. Per trial: the image's mode in that trial; over a sweep
    # (image_medians): its most common mode over the sweep's complete trials
    modes: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None  # v4 images.group_name; NO_GROUP names the images without one
    marks: tuple[str, ...] | None = None   # v4 review marks (REVIEW_MARKS), UNMARKED for images nobody marked
    # image_medians on a v4 store: leave out likely label errors (LIKELY_LABEL_ERROR, or marked 'label error')
    skip_label_errors: bool = False

    def image_conditions(self) -> list[ColumnElement]:
        conds: list[ColumnElement] = []
        for column, values in (("breed", self.breeds), ("species", self.species), ("split", self.splits)):
            if values is not None:
                conds.append(images.c[column].in_(list(values)) if values else false())
        for column, bounds in (("brightness", self.brightness), ("fg_fraction", self.fg_fraction)):
            if bounds is not None:
                conds.append(images.c[column].between(float(bounds[0]), float(bounds[1])))
        if self.groups is not None:
            named = [g for g in self.groups if g != NO_GROUP]
            either = [images.c.group_name.in_(named)] if named else []
            if NO_GROUP in self.groups:
                either.append(images.c.group_name.is_(None))
            conds.append(or_(*either) if either else false())
        if self.marks is not None:
            conds.append(marked(self.marks))
        return conds

    def score_is_filtered(self) -> bool:
        return tuple(self.score) != (0.0, 1.0)


def marked(marks: Sequence[str]) -> ColumnElement:
    """Images whose review mark (v4 reviews, by dataset and name) is one of `marks`; UNMARKED: nobody marked it."""
    named = [m for m in marks if m != UNMARKED]
    review = select(reviews.c.image).where(reviews.c.dataset == images.c.dataset, reviews.c.image == images.c.name)
    either = [exists(review.where(reviews.c.mark.in_(named)))] if named else []
    if UNMARKED in marks:
        either.append(~exists(review))
    return or_(*either) if either else false()


def _image_columns(conn: Connection) -> list[ColumnElement]:
    return _columns(conn, images, IMAGE_COLUMNS)


def _trial_images(conn: Connection, trial_id: int, flt: ImageFilter, v2: list[ColumnElement],
                  image_cols: list[ColumnElement]) -> Select:
    m = _metric("dice" if flt.metric == "failure_mode" else flt.metric)
    stmt = (select(image_results.c.image_id, image_results.c.dice, image_results.c.iou,
                   image_results.c.dice_no_border, *v2, *image_cols)
            .join_from(image_results, images, images.c.id == image_results.c.image_id)
            .where(image_results.c.trial_id == int(trial_id), *flt.image_conditions()))
    if flt.score_is_filtered():
        stmt = stmt.where(m.between(float(flt.score[0]), float(flt.score[1])))
    if flt.modes is not None:
        stmt = stmt.where(_mode(conn, image_results.c.failure_mode).in_(list(flt.modes)) if flt.modes else false())
    return stmt


def _check_v2(conn: Connection, flt: ImageFilter) -> list[ColumnElement]:
    v2 = _v2(conn)
    if not v2 and (flt.metric not in V1_METRICS or flt.modes is not None):
        raise ValueError(f"this store has schema version 1: no {flt.metric if flt.metric not in V1_METRICS else 'failure mode'}"
                         f" yet; upgrade it with python -m jobs.upgrade --db URL")
    return v2


def hardest_images(src: Source, trial_id: int, flt: ImageFilter = ImageFilter(), limit: int = 12,
                   offset: int = 0) -> pd.DataFrame:
    """A trial's images matching the filter, worst first by flt.metric (not-computed last), one page of them."""
    with connect(src) as conn:
        stmt = (_trial_images(conn, trial_id, flt, _check_v2(conn, flt), _image_columns(conn))
                .order_by(*_worst_first(flt.metric, _mode(conn, image_results.c.failure_mode)),
                          image_results.c.image_id)
                .limit(int(limit)).offset(int(offset)))
        return _frame(conn, stmt)


def count_images(src: Source, trial_id: int, flt: ImageFilter = ImageFilter()) -> int:
    """How many of a trial's images match the filter (the gallery's total)."""
    with connect(src) as conn:
        _check_v2(conn, flt)
        sub = _trial_images(conn, trial_id, flt, [], [images.c.id]).subquery()
        return int(conn.execute(select(func.count()).select_from(sub)).scalar() or 0)


MEDIAN_COLUMNS = ["image_id", "median", "mean", "min", "max", "trials"]
MODE_SUMMARY_COLUMNS = ["mode", "mode_trials", "evaluated"]  # with the v2 diagnostics


def has_summaries(src: Source) -> bool:
    """True when the store keeps per-image summaries of each sweep (schema v3: sweep_images)."""
    with connect(src) as conn:
        return _has_table(conn, sweep_images)


def image_medians(src: Source, sweep: str, flt: ImageFilter = ImageFilter()) -> pd.DataFrame:
    """Per image matching the filter: median, mean, min and max of flt.metric over the sweep's
    complete trials and how many trials have a value (`trials`), hardest (lowest median; highest for
    an error metric) first; flt.score filters on the median. Not-computed (NULL) values are left out.
    With the v2 diagnostics also the image's most common failure mode over those trials (`mode`, ties
    going to the worse mode), in how many of them (`mode_trials`) of how many (`evaluated`);
    flt.modes then keeps the images whose most common mode is one of them. On a v4 store also each
    image's `label_suspicion` (NULL before), and flt.skip_label_errors leaves out likely label errors
    (likely_label_error).

    Reads the sweep's per-image summaries (sweep_images, one row per image) where the store has them,
    else every per-image result of the sweep (image_medians_from_results; no label suspicion there).
    """
    _metric(flt.metric)
    with connect(src) as conn:
        if not has_summaries(conn):
            return image_medians_from_results(conn, sweep, flt)
        s = sweep_images
        median = s.c[f"{flt.metric}_median"]
        top_mode = _mode(conn, s.c.top_mode)
        mode_trials = case(*((top_mode == mode, _stored(conn, s, column)) for mode, column in MODE_COLUMNS.items()),
                           else_=0)
        stmt = (select(s.c.image_id, median.label("median"), s.c[f"{flt.metric}_mean"].label("mean"),
                       s.c[f"{flt.metric}_min"].label("min"), s.c[f"{flt.metric}_max"].label("max"),
                       s.c[f"{flt.metric}_trials"].label("trials"), top_mode.label("mode"),
                       mode_trials.label("mode_trials"), s.c.trials.label("evaluated"),
                       *_columns(conn, s, ["label_suspicion"]))
                .where(s.c.sweep == sweep, s.c[f"{flt.metric}_trials"] > 0))
        conds = flt.image_conditions()
        if conds:
            stmt = stmt.where(s.c.image_id.in_(select(images.c.id).where(*conds)))
        if flt.score_is_filtered():
            stmt = stmt.where(median.between(float(flt.score[0]), float(flt.score[1])))
        if flt.modes is not None:
            stmt = stmt.where(top_mode.in_(list(flt.modes)) if flt.modes else false())
        if flt.skip_label_errors and _has_column(conn, s, "label_suspicion"):
            stmt = stmt.where(~likely_label_error(s.c.image_id, s.c.label_suspicion))
        worst = median.desc() if flt.metric in LOWER_IS_BETTER else median.asc()
        out = _frame(conn, stmt.order_by(worst, s.c.image_id))
    return out if len(out) else pd.DataFrame(columns=MEDIAN_COLUMNS + MODE_SUMMARY_COLUMNS)


def likely_label_error(image_id: ColumnElement, suspicion: ColumnElement) -> ColumnElement:
    """True for an image a person marked 'label error', or whose label suspicion is at least LIKELY_LABEL_ERROR
    unless a person marked it 'hard image' or 'fine' (a review overrides the score). v4 stores only."""
    def of(marks: tuple[str, ...]) -> ColumnElement:
        return image_id.in_(select(images.c.id).where(marked(marks)))
    return or_(of(("label error",)), and_(func.coalesce(suspicion, 0.0) >= LIKELY_LABEL_ERROR,
                                          ~of(("hard image", "fine"))))


def image_medians_from_results(src: Source, sweep: str, flt: ImageFilter = ImageFilter()) -> pd.DataFrame:
    """image_medians computed from every per-image result of the sweep: for a store without the
    per-image summaries (schema v1 or v2, read as it is). Seconds on a million results.

    SQL selects the rows (sweep, state and image filters); the per-image median is computed in
    numpy, because SQLite has no median and its window functions take seconds on a million rows.
    """
    m = _metric(flt.metric)
    stmt = (select(image_results.c.image_id, m)
            .join_from(image_results, trials, trials.c.id == image_results.c.trial_id)
            .where(trials.c.sweep == sweep, trials.c.state == "complete"))
    if flt.metric not in V1_METRICS:  # v2 columns may be NULL (not computed)
        stmt = stmt.where(m.is_not(None))
    conds = flt.image_conditions()
    if conds:  # images first, as a subquery: SQLite then probes each trial's primary key for just those
        stmt = stmt.where(image_results.c.image_id.in_(select(images.c.id).where(*conds)))
    with connect(src) as conn:
        v2 = bool(_check_v2(conn, flt))  # a v1 store has no diagnostics: refuses their metrics and modes
        result = conn.execute(stmt)
        try:  # the DB-API's plain tuples: wrapping a million rows as SQLAlchemy Rows doubles the fetch
            rows = result.cursor.fetchall()
        finally:
            result.close()
        modes = _mode_counts(conn, sweep, conds) if v2 and rows else None
    columns = MEDIAN_COLUMNS + (MODE_SUMMARY_COLUMNS if v2 else [])
    if not rows:
        return pd.DataFrame(columns=columns)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=2 * len(rows))
    ids, values = flat[0::2].astype(np.int64), flat[1::2]
    order = np.lexsort((values, ids))
    ids, values = ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    counts = np.diff(np.r_[starts, len(ids)])
    median = (values[starts + (counts - 1) // 2] + values[starts + counts // 2]) / 2
    out = pd.DataFrame({"image_id": ids[starts], "median": median,
                        "mean": np.add.reduceat(values, starts) / counts, "min": values[starts],
                        "max": values[starts + counts - 1], "trials": counts})
    if modes is not None:
        out = out.merge(modes, on="image_id", how="left")
        if flt.modes is not None:
            out = out[out["mode"].isin(list(flt.modes))]
    if flt.score_is_filtered():
        out = out[out["median"].between(float(flt.score[0]), float(flt.score[1]))]
    if flt.metric in LOWER_IS_BETTER:  # hardest = highest error first
        return out.sort_values(["median", "image_id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out.sort_values(["median", "image_id"], kind="stable").reset_index(drop=True)


def _mode_counts(conn: Connection, sweep: str, conds: list[ColumnElement]) -> pd.DataFrame:
    """Per image of the sweep's complete trials: its most common failure mode (core.store.summaries.top_modes),
    in how many trials, of how many."""
    mode = image_results.c.failure_mode
    stmt = (select(image_results.c.image_id, mode, func.count())
            .join_from(image_results, trials, trials.c.id == image_results.c.trial_id)
            .where(trials.c.sweep == sweep, trials.c.state == "complete")
            .group_by(image_results.c.image_id, mode))
    if conds:
        stmt = stmt.where(image_results.c.image_id.in_(select(images.c.id).where(*conds)))
    rows = conn.execute(stmt).all()
    ids, pos = np.unique(np.array([r[0] for r in rows], dtype=np.int64), return_inverse=True)
    counts = np.zeros((len(ids), len(summaries.MODES)), dtype=np.int64)
    np.add.at(counts, (pos, summaries.mode_codes(_current_modes(conn, [r[1] for r in rows]))),
              np.array([r[2] for r in rows], np.int64))
    top = summaries.top_modes(counts)
    codes = summaries.mode_codes(top)
    return pd.DataFrame({"image_id": ids, "mode": top, "mode_trials": counts[np.arange(len(ids)), codes],
                         "evaluated": counts.sum(axis=1)})


def sweep_top_modes(src: Source, sweep: str) -> list[str]:
    """The failure modes that are the most common one of at least one image of the sweep, in
    FAILURE_MODES order (not computed last); none on a v1 store."""
    with connect(src) as conn:
        if has_summaries(conn):
            found = set(_current_modes(conn, conn.execute(select(sweep_images.c.top_mode).distinct()
                                                          .where(sweep_images.c.sweep == sweep)).scalars()))
        elif has_diagnostics(conn):
            found = set(image_medians_from_results(conn, sweep)["mode"])
        else:
            found = set()
    return [m for m in FAILURE_MODES + (NOT_COMPUTED,) if m in found]


def images_by_id(src: Source, image_ids: Sequence[int]) -> pd.DataFrame:
    """Attributes of the given images, in the order given."""
    ids = _ids(image_ids)
    with connect(src) as conn:
        stmt = select(images.c.id.label("image_id"), *_image_columns(conn)).where(images.c.id.in_(ids))
        found = _frame(conn, stmt).set_index("image_id")
    return found.reindex([i for i in ids if i in found.index]).reset_index()


def hard_for_every_model(src: Source, sweep: str, flt: ImageFilter = ImageFilter(), limit: int = 12,
                         offset: int = 0) -> pd.DataFrame:
    """One page of images ranked by median score over all complete trials of a sweep, hardest first."""
    page = image_medians(src, sweep, flt).iloc[int(offset):int(offset) + int(limit)]
    return page.merge(images_by_id(src, page["image_id"].tolist()), on="image_id", how="left")


def filter_options(src: Source, trial_ids: Sequence[int]) -> dict[str, Any]:
    """Values the explorer's filters can take over the images these trials evaluated.

    Breeds and species leave out '' (the user's own data has none: no empty filter); groups list the
    named groups, with NO_GROUP when some images have none beside others that have one; marks are the
    review marks and UNMARKED on a store that keeps them (v4), else none.
    """
    evaluated = select(image_results.c.image_id).where(image_results.c.trial_id.in_(_ids(trial_ids)))
    where = images.c.id.in_(evaluated)
    with connect(src) as conn:
        def values(column: ColumnElement) -> list[str]:
            return sorted(conn.execute(select(column).where(where, column.is_not(None), column != "")
                                       .distinct()).scalars())

        groups: list[str] = []
        if _has_column(conn, images, "group_name"):
            groups = values(images.c.group_name)
            if groups and conn.execute(select(images.c.id).where(where, images.c.group_name.is_(None))
                                       .limit(1)).first() is not None:
                groups.append(NO_GROUP)
        marks = [UNMARKED, *REVIEW_MARKS] if _has_table(conn, reviews) else []

        lo_b, hi_b, lo_f, hi_f = conn.execute(select(
            func.min(images.c.brightness), func.max(images.c.brightness),
            func.min(images.c.fg_fraction), func.max(images.c.fg_fraction)).where(where)).one()
        modes: list[str] = []
        if has_diagnostics(conn):
            found = set(_current_modes(conn, conn.execute(select(image_results.c.failure_mode).distinct()
                                                          .where(image_results.c.trial_id.in_(_ids(trial_ids)))).scalars()))
            modes = [m for m in FAILURE_MODES + (NOT_COMPUTED,) if m in found]
        return {"breeds": values(images.c.breed), "species": values(images.c.species), "splits": values(images.c.split),
                "brightness": (lo_b, hi_b), "fg_fraction": (lo_f, hi_f), "modes": modes, "groups": groups,
                "marks": marks}


def image_row(src: Source, image_id: int) -> dict[str, Any] | None:
    """One image's attributes with its dataset's root folder."""
    with connect(src) as conn:
        stmt = (select(images.c.id, *_image_columns(conn), datasets.c.root)
                .join_from(images, datasets, datasets.c.name == images.c.dataset).where(images.c.id == int(image_id)))
        row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def image_across_trials(src: Source, image_id: int, sweep: str | None = None) -> pd.DataFrame:
    """One image's result in every trial (of a sweep, or of the whole store), best trial first per arch."""
    with connect(src) as conn:
        stmt = (select(trials.c.id.label("trial_id"), trials.c.sweep, trials.c.arch, trials.c.number, trials.c.state,
                       trials.c.val_dice, trials.c.image_size, image_results.c.dice, image_results.c.iou,
                       image_results.c.dice_no_border, *_v2(conn))
                .join_from(image_results, trials, trials.c.id == image_results.c.trial_id)
                .where(image_results.c.image_id == int(image_id)))
        if sweep is not None:
            stmt = stmt.where(trials.c.sweep == sweep)
        stmt = stmt.order_by(trials.c.arch, trials.c.val_dice.desc().nulls_last(), trials.c.number)
        return _frame(conn, stmt)


def mask_pngs(src: Source, trial_ids: Sequence[int], image_ids: Sequence[int]) -> dict[tuple[int, int], bytes]:
    """Predicted-mask PNGs, keyed by (trial_id, image_id), for every stored pair of the given ids."""
    if not trial_ids or not image_ids:
        return {}
    stmt = select(masks.c.trial_id, masks.c.image_id, masks.c.png).where(
        masks.c.trial_id.in_(_ids(trial_ids)), masks.c.image_id.in_(_ids(image_ids)))
    with connect(src) as conn:
        return {(int(t), int(i)): bytes(png) for t, i, png in conn.execute(stmt).all()}


def truth_pngs(src: Source, image_ids: Sequence[int], image_size: int, column: str = "png") -> dict[int, bytes]:
    """The ground truth exactly as scored at `image_size` (v4 truth_masks, 1-bit PNGs) by image id, for the
    given images that have one; empty on an older store (the gallery then rebuilds it from the dataset's files).
    column="image": the images as scored, on the vote grid (v5 truth_masks.image), where stored."""
    if not image_ids:
        return {}
    with connect(src) as conn:
        if not _has_table(conn, truth_masks) or not _has_column(conn, truth_masks, column):
            return {}
        stmt = select(truth_masks.c.image_id, truth_masks.c[column]).where(
            truth_masks.c.image_id.in_(_ids(image_ids)), truth_masks.c.image_size == int(image_size),
            truth_masks.c[column].is_not(None))
        return {int(i): bytes(png) for i, png in conn.execute(stmt).all()}


def has_reviews(src: Source) -> bool:
    """True when the store keeps review marks (schema v4: reviews)."""
    with connect(src) as conn:
        return _has_table(conn, reviews)


def has_label_suspicion(src: Source) -> bool:
    """True when the sweep summaries carry the suspect-label score (schema v4: sweep_images.label_suspicion)."""
    with connect(src) as conn:
        return _has_table(conn, sweep_images) and _has_column(conn, sweep_images, "label_suspicion")


def reviews_version(src: Source) -> tuple[int, str]:
    """(marks, latest marked_at): changes whenever a person marks an image; (0, '') without the reviews table."""
    with connect(src) as conn:
        if not _has_table(conn, reviews):
            return 0, ""
        n, last = conn.execute(select(func.count(), func.max(reviews.c.marked_at))).one()
    return int(n or 0), str(last or "")


# -- failure modes ---------------------------------------------------------------------------

def failure_mode_counts(src: Source, trial_ids: Sequence[int]) -> pd.DataFrame:
    """Images per (trial, failure mode) of the given trials; empty on a v1 store. NULL counts as not computed."""
    cols = ["trial_id", "failure_mode", "images"]
    with connect(src) as conn:
        if not has_diagnostics(conn):
            return pd.DataFrame(columns=cols)
        # grouped on the bare column so ix_image_results_trial_mode covers the query: no table reads
        mode = image_results.c.failure_mode
        stmt = (select(image_results.c.trial_id, mode, func.count().label("images"))
                .where(image_results.c.trial_id.in_(_ids(trial_ids)))
                .group_by(image_results.c.trial_id, mode).order_by(image_results.c.trial_id, mode))
        frame = _frame(conn, stmt)
        frame["failure_mode"] = _current_modes(conn, frame["failure_mode"])
    frame["failure_mode"] = frame["failure_mode"].fillna(NOT_COMPUTED)
    return frame.groupby(["trial_id", "failure_mode"], as_index=False, sort=True)["images"].sum()


def sweep_failure_shares(src: Source, sweep: str) -> pd.DataFrame:
    """Per complete trial of a sweep: arch, number, val dice, params, images, and the share of its
    images in each failure mode (one column per mode present). Empty on a v1 store."""
    with connect(src) as conn:
        done = _frame(conn, select(trials.c.id.label("trial_id"), trials.c.arch, trials.c.number, trials.c.val_dice,
                                   trials.c.params)
                      .where(trials.c.sweep == sweep, trials.c.state == "complete")
                      .order_by(trials.c.arch, trials.c.number))
        counts = failure_mode_counts(conn, done["trial_id"].tolist()) if len(done) else pd.DataFrame()
    if counts.empty:
        return pd.DataFrame(columns=["trial_id", "arch", "number", "val_dice", "params", "images"])
    wide = counts.pivot_table(index="trial_id", columns="failure_mode", values="images", fill_value=0)
    total = wide.sum(axis=1)
    shares = wide.div(total, axis=0)
    order = [m for m in FAILURE_MODES + (NOT_COMPUTED,) if m in shares.columns]
    shares = shares[order].reset_index()
    shares.columns.name = None
    shares.insert(1, "images", total.to_numpy().astype(int))
    return done.merge(shares, on="trial_id", how="inner")


# -- sweep insights ----------------------------------------------------------------------

def trial_tail_scores(src: Source, sweep: str, metric: str = "dice", fraction: float = 0.1) -> pd.DataFrame:
    """Per complete trial of a sweep: mean score, the mean of its worst 10% images, the 10th percentile
    and the worst, all on the metric's bad side (the highest values where lower is better).

    The worst 10% are the ceil(n/10) worst images; p10 and worst are core.metrics.spread's, the
    summary every job prints, so the page and the jobs agree on a trial's tail.
    """
    m = _metric(metric)
    lower = metric in LOWER_IS_BETTER
    cols = ["trial_id", "arch", "number", "val_dice", "params", "images", "mean", "worst10_mean", "p10", "worst"]
    with connect(src) as conn:
        done = conn.execute(select(trials.c.id, trials.c.arch, trials.c.number, trials.c.val_dice, trials.c.params)
                            .where(trials.c.sweep == sweep, trials.c.state == "complete")
                            .order_by(trials.c.arch, trials.c.number)).all()
        ids = [int(r[0]) for r in done]
        if not ids:
            return pd.DataFrame(columns=cols)
        values = pd.DataFrame(conn.execute(select(image_results.c.trial_id, m).where(
            image_results.c.trial_id.in_(ids), m.is_not(None))).all(), columns=["trial_id", "value"])
    by_trial = {int(t): np.sort(g["value"].to_numpy(np.float64)) for t, g in values.groupby("trial_id")}
    out = []
    for tid, arch, number, val_dice, params in done:
        v = by_trial.get(int(tid))
        if v is None or not len(v):
            continue
        k = max(1, math.ceil(len(v) * fraction))
        tail = spread(v, lower_is_better=lower)
        worst_k = v[-k:] if lower else v[:k]
        out.append((int(tid), arch, number, val_dice, params, len(v), tail["mean"], float(worst_k.mean()),
                    tail["p10"], tail["worst"]))
    return pd.DataFrame(out, columns=cols)


# -- suspect labels (core.store.suspicion keeps them; v4 and later) ----------------------------

SUSPECT_COLUMNS = ("image_id", "name", "path", "group_name", "split", *LABEL_COLUMNS, "image_evidence", "dice_median",
                   "trials")


def suspects(src: Source, sweep: str, limit: int | None = None) -> pd.DataFrame:
    """The sweep's test images, most suspect label first (NULL scores last, then worst median dice)."""
    s, i = sweep_images, images
    with connect(src) as conn:
        # the image evidence is a part from v5 on; a v4 store's reads as NULL (the score counted it as 1)
        evidence = s.c.image_evidence if _has_column(conn, s, "image_evidence") \
            else literal(None, Float).label("image_evidence")
        stmt = (select(s.c.image_id, i.c.name, i.c.path, i.c.group_name, i.c.split, *(s.c[c] for c in LABEL_COLUMNS),
                       evidence, s.c.dice_median, s.c.trials)
                .join_from(s, i, i.c.id == s.c.image_id)
                .where(s.c.sweep == sweep)
                .order_by(case((s.c.label_suspicion.is_(None), 1), else_=0), s.c.label_suspicion.desc(),
                          s.c.dice_median, s.c.image_id))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        result = conn.execute(stmt)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for column in (*LABEL_COLUMNS, "image_evidence", "dice_median"):
        frame[column] = frame[column].astype(np.float64)
    return frame


def consensus(src: Source, sweep: str, image_id: int) -> np.ndarray | None:
    """The models' vote share per pixel of one image at its mask size, (S, S) float in [0, 1]: the mean of the
    sweep's complete trials' stored masks of the size of the latest one (the stored votes are on the coarser
    vote grid, too blocky to show); None if none is stored. Reads one mask per trial: for the few shown cards."""
    stmt = (select(masks.c.png).join_from(masks, trials, trials.c.id == masks.c.trial_id)
            .where(trials.c.sweep == sweep, trials.c.state == "complete", masks.c.image_id == int(image_id))
            .order_by(trials.c.finished_at.desc(), trials.c.id.desc()))
    with connect(src) as conn:
        pngs = conn.execute(stmt).scalars().all()
    found = [mask for mask in map(readable_mask, pngs) if mask is not None]
    found = [mask for mask in found if mask.shape == found[0].shape]
    return np.mean(found, axis=0) if found else None


def truth_mask(src: Source, image_id: int, image_size: int) -> np.ndarray | None:
    """An image's ground truth exactly as scored at `image_size`, (S, S) bool; None if not stored."""
    png = truth_pngs(src, [image_id], image_size).get(int(image_id))
    return None if png is None else decode_mask(png)
