"""The results store: every trial, epoch and test image of every run, in one SQL database.

The tables are in core.store.schema (a public interface, documented in docs/store.md); this module
writes and reads them through one engine (core.store.engine). Writers create the tables on first
use and upgrade an older store in place (core.store.upgrade).
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from core.metrics import ImageDiagnostics
from core.store import summaries, suspicion
from core.store.engine import (  # noqa: F401 - the store's entry points stay importable from here
    DEFAULT_URL,
    StoreError,
    display_url,
    make_engine,
    normalize_url,
    one_line_db_error,
    retry_schema_race,
    sqlite_path,
)
from core.labels import on_grid
from core.store.mask_png import decode_mask, encode_image, encode_mask  # noqa: F401
from core.store.schema import (  # noqa: F401
    LAYOUTS,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    SUMMARY_TABLES,
    TRIAL_STATES,
    datasets,
    diagnostic_rows,
    ensure_v2_indexes,
    epochs,
    image_results,
    images,
    masks,
    metadata,
    schema_info,
    trials,
    truth_masks,
    utc_now,
)
from core.store.upgrade import upgrade


class TrialClosedError(StoreError):
    """A trial was finished (or failed as dead) already; a late finish must not overwrite it."""


class TrialExistsError(StoreError):
    """The trial's (study, number) is recorded already; starting it again would duplicate it."""


class SchemaVersionError(StoreError):
    """The database was written by a different schema version than this code reads."""


@dataclass
class ImageResults:
    """Per-image evaluation of one trial on the test split, aligned by position."""

    image_ids: np.ndarray       # (M,) int, ids from `images`
    dice: np.ndarray            # (M,) float
    iou: np.ndarray             # (M,) float
    dice_no_border: np.ndarray  # (M,) float
    masks: Sequence[np.ndarray] | None = None  # M predicted masks, (S, S) bool/uint8
    diagnostics: ImageDiagnostics | None = None  # why each image fails; None: stored as not computed


class Store:
    """Reads and writes the results schema through one engine.

    Writers create the tables on first use and upgrade a v1 or v2 store in place (core.store.upgrade;
    `log` gets its one-line summary, default stderr); readers (read_only=True) never write, read
    versions 1, 2 and 3 as they are (`schema_version` says which) and refuse any other.
    """

    def __init__(self, url: str | os.PathLike[str] = DEFAULT_URL, read_only: bool = False,
                 log: Callable[[str], None] | None = None):
        self.url = normalize_url(url)
        self.read_only = read_only
        self.schema_version = SCHEMA_VERSION
        self._log = log
        self.engine = make_engine(self.url, read_only=read_only)
        try:
            if read_only:
                self._check_version()
            else:
                self._create()
        except DBAPIError as exc:  # unreachable server, not a database file, unwritable file, ...
            self.engine.dispose()
            raise StoreError(one_line_db_error(self.url, exc)) from exc

    # -- schema ---------------------------------------------------------------
    def _create(self) -> None:
        # the v3 summary tables come after the version check: on an older store the upgrade creates and
        # fills them in its one transaction, so an interrupted upgrade leaves the store as it was
        with self.engine.connect() as conn:
            if _unversioned_results(conn):  # refused before anything is written into it
                raise SchemaVersionError(_version_message(self.url, 0))
        older = [t for t in metadata.sorted_tables if t not in SUMMARY_TABLES]
        retry_schema_race(lambda: metadata.create_all(self.engine, tables=older))
        with self.engine.begin() as conn:
            found = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar()
            if found is None:
                try:
                    conn.execute(insert(schema_info).values(key="schema_version", value=str(SCHEMA_VERSION)))
                except SQLAlchemyError:  # another worker wrote it first
                    pass
            elif int(found) not in READABLE_VERSIONS:
                raise SchemaVersionError(_version_message(self.url, int(found)))
        if found is not None and int(found) < SCHEMA_VERSION:
            self._upgrade()
        else:  # a new store gets the summary tables; one written before an index was added gets it (cheap if there)
            retry_schema_race(lambda: metadata.create_all(self.engine, tables=list(SUMMARY_TABLES)))
            retry_schema_race(lambda: ensure_v2_indexes(self.engine))

    def _upgrade(self) -> None:
        """v1 or v2 -> v3 in one transaction: old trials backfilled, every sweep summarised (core.store.upgrade)."""
        log = self._log or (lambda msg: print(msg, file=sys.stderr))
        with self.engine.begin() as conn:
            report = upgrade(conn, log)
        if report.upgraded:
            log(report.summary(self.url))

    def _check_version(self) -> None:
        with self.engine.connect() as conn:
            if _unversioned_results(conn):
                raise SchemaVersionError(_version_message(self.url, 0))
            if "schema_info" not in set(self.engine.dialect.get_table_names(conn)):
                return
            found = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar()
        if found is not None and int(found) not in READABLE_VERSIONS:
            raise SchemaVersionError(_version_message(self.url, int(found)))
        if found is not None:
            self.schema_version = int(found)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------
    def register_dataset(self, name: str, source: str, root: str | Path, infos: Iterable[Any],
                         layout: str | None = None) -> dict[str, int]:
        """Record a dataset and its images (idempotent); returns image name -> image id.

        `infos` are core.data ImageInfo-like records; their `group` and `path` (if any) become images.group_name
        and images.path.
        """
        infos = list(infos)
        layout = layout or (source if source in LAYOUTS else None)
        try:
            return self._register_dataset(name, source, root, infos, layout)
        except IntegrityError:  # a concurrent worker registered the same rows first
            return self._register_dataset(name, source, root, infos, layout)

    def _register_dataset(self, name: str, source: str, root: str | Path, infos: list[Any],
                          layout: str | None) -> dict[str, int]:
        with self.engine.begin() as conn:
            if conn.execute(select(datasets.c.name).where(datasets.c.name == name)).first() is None:
                conn.execute(insert(datasets).values(name=name, source=source, root=str(Path(root).resolve()),
                                                     created_at=utc_now(), layout=layout))
            else:
                conn.execute(update(datasets).where(datasets.c.name == name)
                             .values(root=str(Path(root).resolve()), layout=layout))
            known = dict(conn.execute(select(images.c.name, images.c.id).where(images.c.dataset == name)).all())
            new_rows = [
                dict(dataset=name, name=i.name, split=i.split, breed=i.breed, species=i.species, width=int(i.width),
                     height=int(i.height), brightness=float(i.brightness), fg_fraction=float(i.fg_fraction),
                     group_name=getattr(i, "group", None) or None, path=getattr(i, "path", None) or None)
                for i in infos if i.name not in known
            ]
            if new_rows:
                conn.execute(insert(images), new_rows)
                known = dict(conn.execute(select(images.c.name, images.c.id).where(images.c.dataset == name)).all())
        return known

    def start_trial(self, *, sweep: str, study: str, arch: str, number: int, params: dict[str, Any], device: str,
                    dataset: str, image_size: int, encoder_weights: str | None = None,
                    encoder_sha256: str | None = None) -> int:
        """Insert a trial in state 'running' and return its id; TrialExistsError if the study has
        that trial number already (a run name used before, or a trial another worker recorded as lost).
        `encoder_weights` / `encoder_sha256`: where the encoder's starting weights came from (see
        core.models.pretrained.WeightsSource), "none" for random weights."""
        try:
            with self.engine.begin() as conn:
                now = utc_now()
                result = conn.execute(insert(trials).values(
                    sweep=sweep, study=study, arch=arch, number=number, state="running", params=params,
                    epochs_run=0, started_at=now, heartbeat_at=now, device=device, dataset=dataset,
                    image_size=image_size, encoder_weights=encoder_weights, encoder_sha256=encoder_sha256))
                return int(result.inserted_primary_key[0])
        except IntegrityError:
            raise TrialExistsError(f"{study} already has a trial {number} in this store (a name used before, "
                                   f"or a trial another worker took for dead); not run again") from None

    def record_epoch(self, trial_id: int, epoch: int, **values: float | None) -> None:
        """One row of a trial's learning curve; also advances trials.epochs_run."""
        with self.engine.begin() as conn:
            conn.execute(insert(epochs).values(trial_id=trial_id, epoch=epoch, **values))
            conn.execute(update(trials).where(trials.c.id == trial_id).values(epochs_run=epoch + 1))

    def finish_trial(self, trial_id: int, *, state: str, val_dice: float | None = None, error: str | None = None,
                     checkpoint: str | None = None, checkpoint_sha256: str | None = None,
                     results: ImageResults | None = None) -> float | None:
        """Close a trial; its per-image rows and masks land in the same transaction, or not at all.
        `checkpoint_sha256` is the checkpoint file's sha256 (jobs.predict and jobs.export check it).

        Returns test_dice, the mean of the trial's per-image dice (None without results).
        """
        if state not in TRIAL_STATES or state == "running":
            raise ValueError(f"cannot finish a trial as {state!r}")
        test_dice = None
        result_rows: list[dict[str, Any]] = []
        mask_rows: list[dict[str, Any]] = []
        if results is not None and len(results.image_ids):
            ids = np.asarray(results.image_ids, dtype=np.int64)
            dice = np.asarray(results.dice, dtype=np.float64)
            iou = np.asarray(results.iou, dtype=np.float64)
            dnb = np.asarray(results.dice_no_border, dtype=np.float64)
            test_dice = float(dice.mean())
            result_rows = [dict(trial_id=trial_id, image_id=int(i), dice=float(d), iou=float(j), dice_no_border=float(b))
                           for i, d, j, b in zip(ids.tolist(), dice.tolist(), iou.tolist(), dnb.tolist())]
            for row, extra in zip(result_rows, diagnostic_rows(dice, results.diagnostics, len(ids))):
                row.update(extra)
            if results.masks is not None:
                mask_rows = [dict(trial_id=trial_id, image_id=int(i), png=encode_mask(m))
                             for i, m in zip(ids.tolist(), results.masks)]
        with self.engine.begin() as conn:
            closed = conn.execute(update(trials).where(trials.c.id == trial_id, trials.c.state == "running").values(
                state=state, val_dice=val_dice, test_dice=test_dice, finished_at=utc_now(), error=error,
                checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256))
            if closed.rowcount != 1:  # e.g. taken for dead and retried elsewhere: keep the store truthful
                raise TrialClosedError(f"trial {trial_id} was already closed by another worker; results not recorded")
            if result_rows:
                conn.execute(insert(image_results), result_rows)
                if state == "complete":  # the sweep's upkeep, in this transaction: never out of step
                    sweep = conn.execute(select(trials.c.sweep).where(trials.c.id == trial_id)).scalar_one()
                    summaries.add_trial(conn, sweep, result_rows)  # takes the sweep's lock; the score reads its medians
                    suspicion.add_trial(conn, sweep, ids.tolist(), results.masks)
            if mask_rows:
                conn.execute(insert(masks), mask_rows)
        return test_dice

    def record_truths(self, image_ids: Sequence[int], image_size: int, masks: Sequence[np.ndarray],
                      images: Sequence[np.ndarray] | None = None) -> None:
        """Store each image's ground truth exactly as scored at `image_size` (truth_masks), once: an image and
        size stored already keeps its row, also when another worker writes the same one at once. The suspect-
        label score compares the models' votes against it (core.store.suspicion). `images`, the images as
        scored (S, S, 3) uint8, are kept on the vote grid beside them (truth_masks.image, the score's image
        evidence), also for a row stored without one."""
        ids = [int(i) for i in image_ids]
        with self.engine.connect() as conn:
            known = dict(conn.execute(select(truth_masks.c.image_id, truth_masks.c.image.is_not(None))
                                      .where(truth_masks.c.image_size == int(image_size), truth_masks.c.image_id.in_(ids))
                                      ).all())
        # every trial records them; only the rows written are encoded (a sweep's later trials: none)
        picture = (lambda k: None) if images is None else (lambda k: encode_image(on_grid(np.asarray(images[k]))))
        rows = [dict(image_id=i, image_size=int(image_size), png=encode_mask(masks[k]), image=picture(k))
                for k, i in enumerate(ids) if i not in known]
        late = [dict(key_image=i, image=picture(k)) for k, i in enumerate(ids)
                if images is not None and known.get(i) is False]
        if late:
            with self.engine.begin() as conn:
                conn.execute(update(truth_masks).where(truth_masks.c.image_size == int(image_size),
                                                       truth_masks.c.image_id == bindparam("key_image"),
                                                       truth_masks.c.image.is_(None))
                             .values(image=bindparam("image")), late)
        if not rows:
            return
        stmt = insert(truth_masks)
        if self.engine.dialect.name == "sqlite":
            stmt = stmt.prefix_with("OR IGNORE")
        elif self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            stmt = pg_insert(truth_masks).on_conflict_do_nothing()
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)
        except IntegrityError:  # another database: a concurrent writer stored some of them first
            self.record_truths(ids, image_size, masks, images)

    def set_checkpoint(self, trial_id: int, path: str | None, sha256: str | None = None) -> None:
        """Record where a trial's weights are and the file's sha256, or that they were removed (None)."""
        with self.engine.begin() as conn:
            conn.execute(update(trials).where(trials.c.id == trial_id)
                         .values(checkpoint=path, checkpoint_sha256=sha256 if path else None))

    def beat(self, trial_id: int) -> None:
        """A running trial's sign of life; see claim_stale."""
        with self.engine.begin() as conn:
            conn.execute(update(trials).where(trials.c.id == trial_id, trials.c.state == "running")
                         .values(heartbeat_at=utc_now()))

    def claim_stale(self, study: str, grace_s: float, error: str) -> list[dict[str, Any]]:
        """Fail the study's running trials whose worker has not beaten for `grace_s` seconds.

        Each stale trial is claimed by exactly one caller (a conditional update), so of several
        workers noticing the same dead trial only one retries it. Returns the claimed rows.
        """
        cutoff = utc_now() - dt.timedelta(seconds=grace_s)
        stale = trials.c.state == "running"
        with self.engine.connect() as conn:
            rows = conn.execute(select(trials).where(trials.c.study == study, stale,
                                                     trials.c.heartbeat_at < cutoff)).mappings().all()
        claimed = []
        for row in rows:
            with self.engine.begin() as conn:
                res = conn.execute(update(trials).where(trials.c.id == row["id"], stale, trials.c.heartbeat_at < cutoff)
                                   .values(state="failed", error=error, finished_at=utc_now()))
            if res.rowcount == 1:
                claimed.append(dict(row))
        return claimed

    def record_lost(self, *, sweep: str, study: str, arch: str, number: int, started_at: dt.datetime, dataset: str,
                    image_size: int, error: str) -> bool:
        """Record as failed a trial whose worker died before writing its row; False when the row exists.

        The insert is the claim: (study, number) is unique, so of the workers noticing the loss one
        records it, and the dead trial's worker, if it was only slow, cannot start it any more.
        Nothing was recorded of its configuration, so `params` is empty.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(trials).values(
                    sweep=sweep, study=study, arch=arch, number=number, state="failed", params={}, epochs_run=0,
                    started_at=started_at, finished_at=utc_now(), device="unknown", dataset=dataset,
                    image_size=image_size, error=error))
        except IntegrityError:
            return False
        return True

    def stale_studies(self, grace_s: float) -> list[str]:
        """Studies holding a running trial that has not beaten for `grace_s` seconds (see claim_stale)."""
        cutoff = utc_now() - dt.timedelta(seconds=grace_s)
        stmt = select(trials.c.study).distinct().where(trials.c.state == "running", trials.c.heartbeat_at < cutoff)
        with self.engine.connect() as conn:
            return sorted(conn.execute(stmt).scalars())

    # -- small reads the jobs need --------------------------------------------
    def trial(self, trial_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(trials).where(trials.c.id == trial_id)).mappings().first()
            return dict(row) if row else None

    def study_trials(self, study: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(trials).where(trials.c.study == study).order_by(trials.c.number)).mappings()
            return [dict(r) for r in rows]

    def copy_epochs(self, from_trial: int, before: int, to_trial: int) -> None:
        """Give a continued trial the learning curve of the trial it continues: its epochs below `before`."""
        cols = [c for c in epochs.c if c.name != "trial_id"]
        with self.engine.begin() as conn:
            rows = conn.execute(select(*cols).where(epochs.c.trial_id == from_trial, epochs.c.epoch < before)
                                ).mappings().all()
            if rows:
                conn.execute(insert(epochs), [dict(r, trial_id=to_trial) for r in rows])
                conn.execute(update(trials).where(trials.c.id == to_trial).values(epochs_run=max(r["epoch"] for r in rows) + 1))

    def trial_seconds(self, study: str) -> float:
        """Seconds the study's trials have trained and evaluated so far, all workers together
        (running trials count up to now): what a sweep's time budget is spent on."""
        now = utc_now()
        stmt = select(trials.c.started_at, trials.c.finished_at).where(trials.c.study == study)
        with self.engine.connect() as conn:
            spans = conn.execute(stmt).all()
        return sum(max(0.0, ((end or now) - start).total_seconds()) for start, end in spans)

    def test_dice_of(self, trial_id: int) -> np.ndarray:
        """Every per-image test dice of a trial, ordered by image id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(image_results.c.dice).where(image_results.c.trial_id == trial_id)
                                .order_by(image_results.c.image_id)).scalars().all()
        return np.asarray(rows, dtype=np.float64)

    def count(self, table: Table, **where: Any) -> int:
        stmt = select(func.count()).select_from(table)
        for key, value in where.items():
            stmt = stmt.where(table.c[key] == value)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)


def _unversioned_results(conn: Any) -> bool:
    """A database holding trials but no schema version: written by something else, or by a SegSweep
    before versions; neither a writer nor a reader may take it for the current schema. (A store another
    worker is creating this moment has its tables but no trial yet, so it does not count.)"""
    names = set(conn.dialect.get_table_names(conn))
    return ("trials" in names and "schema_info" not in names
            and conn.execute(text("SELECT 1 FROM trials LIMIT 1")).first() is not None)


def _version_message(url: str, found: int) -> str:
    return (f"database {display_url(url)} has results schema version {found}, this SegSweep reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}; "
            f"point --db at a new file or re-run the sweep into a new database")
