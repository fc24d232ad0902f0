"""The results store: every trial, epoch and test image of every run, in one SQL database.

The schema below is a public interface (documented in README.md): the jobs write it, the
dashboard reads it, and users query it directly. Change it only by adding, and bump
SCHEMA_VERSION when you do. Any SQLAlchemy URL works; SQLite gets WAL mode and a busy
timeout so a dashboard can read while a sweep writes, and several workers can share a file.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image

from core.metrics import DIAGNOSTICS, FAILURE_MODES, NOT_COMPUTED, ImageDiagnostics, failure_modes
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # the dashboard reads a v1 or v2 store as it is; writers upgrade it first
DEFAULT_URL = "sqlite:///results.db"
TRIAL_STATES = ("running", "complete", "pruned", "failed")

metadata = MetaData()

schema_info = Table(
    "schema_info", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

datasets = Table(
    "datasets", metadata,
    Column("name", String(255), primary_key=True),  # "<source>/<root folder>"
    Column("source", String(32), nullable=False),    # oxford-pets | synthetic
    Column("root", Text, nullable=False),            # where the images were read from
    Column("created_at", DateTime, nullable=False),
)

trials = Table(
    "trials", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sweep", String(255), nullable=False, index=True),
    Column("study", String(255), nullable=False),
    Column("arch", String(64), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("val_dice", Float),
    Column("test_dice", Float),
    Column("epochs_run", Integer, nullable=False, default=0),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("device", String(64), nullable=False),
    Column("dataset", String(255), nullable=False),
    Column("image_size", Integer, nullable=False),
    Column("error", Text),
    Column("checkpoint", Text),
    Column("heartbeat_at", DateTime),  # refreshed while a worker runs the trial
    UniqueConstraint("study", "number", name="uq_trials_study_number"),
)

epochs = Table(
    "epochs", metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("epoch", Integer, primary_key=True),
    Column("train_loss", Float),
    Column("val_loss", Float),
    Column("train_dice", Float),
    Column("val_dice", Float),
    Column("lr", Float),
    Column("seconds", Float),
    Column("images_per_s", Float),
)

images = Table(
    "images", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(255), ForeignKey("datasets.name"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("split", String(8), nullable=False),
    Column("breed", String(128), nullable=False),
    Column("species", String(8), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("brightness", Float, nullable=False),
    Column("fg_fraction", Float, nullable=False),
    UniqueConstraint("dataset", "name", name="uq_images_dataset_name"),
)

image_results = Table(
    "image_results", metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("dice", Float, nullable=False),
    Column("iou", Float, nullable=False),
    Column("dice_no_border", Float, nullable=False),
    # v2: why the image fails (core.metrics); NULL = not computed (a v1 row whose dataset was unreachable
    # at the upgrade, or entropy, which a stored 1-bit mask cannot give)
    Column("fp_area", Float),
    Column("fn_area", Float),
    Column("precision", Float),
    Column("recall", Float),
    Column("boundary_iou", Float),
    Column("hd95", Float),
    Column("fp_blobs", Integer),
    Column("pet_missed", Boolean),
    Column("entropy", Float),
    Column("failure_mode", String(24)),  # core.metrics.failure_modes, or 'not computed'
    Index("ix_image_results_trial_dice", "trial_id", "dice"),  # worst images of a trial
    Index("ix_image_results_trial_mode", "trial_id", "failure_mode"),  # v2: failure-mode shares and filters
    Index("ix_image_results_image", "image_id"),               # all results of one image
)

masks = Table(
    "masks", metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("png", LargeBinary, nullable=False),  # predicted mask at evaluation size, 1-bit PNG
)

Index("ix_trials_study_state", trials.c.study, trials.c.state)

# v3: per sweep and image, a summary of the sweep's complete trials, kept up to date by finish_trial in the
# transaction that closes a trial (core.store.summaries), so the sweep-wide ranking reads one row per image
# instead of every per-image result
SUMMARY_METRICS = ("dice", "dice_no_border", "iou", *(d for d in DIAGNOSTICS if d != "pet_missed"))
SUMMARY_STATS = ("median", "mean", "min", "max", "trials")
MODE_COLUMNS = {mode: "n_" + mode.replace(" ", "_") for mode in (*FAILURE_MODES, NOT_COMPUTED)}

sweep_images = Table(
    "sweep_images", metadata,
    Column("sweep", String(255), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("trials", Integer, nullable=False),        # complete trials of the sweep with a result for the image
    Column("top_mode", String(24), nullable=False),   # its most common failure mode; ties go to the worse mode
    *(Column(column, Integer, nullable=False) for column in MODE_COLUMNS.values()),  # trials per failure mode
    # per metric: median, mean, min, max over the trials where it is not NULL, and how many those are
    *(Column(f"{metric}_{stat}", Integer if stat == "trials" else Float, nullable=stat != "trials")
      for metric in SUMMARY_METRICS for stat in SUMMARY_STATS),
)

sweep_image_windows = Table(
    "sweep_image_windows", metadata,
    Column("sweep", String(255), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    # what keeps sweep_images' medians exact as trials close: per metric the count, sum, min, max and the
    # sorted values around the median (core.store.summaries.STATE, packed little-endian)
    Column("state", LargeBinary, nullable=False),
)
SUMMARY_TABLES = (sweep_images, sweep_image_windows)


class StoreError(Exception):
    """A store problem the user can fix (bad URL, unreachable server, unwritable file)."""


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


def diagnostic_rows(dice: np.ndarray, diag: ImageDiagnostics | None, n: int) -> list[dict[str, Any]]:
    """The v2 columns of n image_results rows: diagnostics (NaN -> NULL) and the failure mode.

    Without diagnostics every value is NULL and the failure mode is 'not computed'.
    """
    if diag is None:
        return [{**{name: None for name in DIAGNOSTICS}, "failure_mode": NOT_COMPUTED} for _ in range(n)]
    modes = failure_modes(dice, diag.precision, diag.recall, diag.boundary_iou)
    columns: dict[str, list[Any]] = {}
    for name in DIAGNOSTICS:
        values = getattr(diag, name)
        if values is None:
            columns[name] = [None] * n
        elif name == "fp_blobs":
            columns[name] = [int(v) for v in values]
        elif name == "pet_missed":
            columns[name] = [bool(v) for v in values]
        else:
            columns[name] = [None if v != v else float(v) for v in np.asarray(values, np.float64).tolist()]
    return [{**{name: columns[name][k] for name in DIAGNOSTICS}, "failure_mode": str(modes[k])} for k in range(n)]


def ensure_v2_indexes(engine_or_conn: Any) -> None:
    """Create the v2 indexes of image_results where they are missing (the upgrade, or a v2 store that predates them)."""
    for index in image_results.indexes:
        if "failure_mode" in index.columns:
            index.create(engine_or_conn, checkfirst=True)


def encode_mask(mask: np.ndarray) -> bytes:
    """A binary mask as a 1-bit PNG: a few hundred bytes at 256 px for pet-shaped masks.

    Written directly (bit-packed rows, PNG filter "none", one zlib level-5 stream): for 1-bit
    masks that is faster than PIL's optimize=True and smaller too (PIL's per-row filters suit
    photos, not bitmaps; benchmarks/store_writes.py compares them). Any PNG reader decodes it.
    """
    import struct
    import zlib

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a mask must be a non-empty 2-D array, got shape {mask.shape}")
    height, width = mask.shape
    raw = np.zeros((height, 1 + (width + 7) // 8), np.uint8)  # per row: filter byte 0, then the bits
    # MSB first, each row padded to whole bytes, as PNG wants; packing the flat array is faster
    # than along axis 1 and gives the same bytes when rows are whole bytes already
    raw[:, 1:] = np.packbits(mask.reshape(-1)).reshape(height, -1) if width % 8 == 0 else np.packbits(mask, axis=1)
    raw = raw.tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 5))
            + chunk(b"IEND", b""))


def decode_mask(png: bytes) -> np.ndarray:
    """Inverse of encode_mask: (S, S) bool."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("1"), dtype=bool)


def normalize_url(url_or_path: str | os.PathLike[str]) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as SQLite)."""
    text = os.fspath(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


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
            raise StoreError(_one_line_db_error(self.url, exc)) from exc

    # -- schema ---------------------------------------------------------------
    def _create(self) -> None:
        # the v3 summary tables come after the version check: on an older store the upgrade creates and
        # fills them in its one transaction, so an interrupted upgrade leaves the store as it was
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
        from core.store.upgrade import upgrade

        log = self._log or (lambda msg: print(msg, file=sys.stderr))
        with self.engine.begin() as conn:
            report = upgrade(conn, log)
        if report.upgraded:
            log(report.summary(self.url))

    def _check_version(self) -> None:
        with self.engine.connect() as conn:
            names = set(self.engine.dialect.get_table_names(conn))
            if "schema_info" not in names:
                if "trials" in names:
                    raise SchemaVersionError(_version_message(self.url, 0))
                return
            found = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar()
        if found is not None and int(found) not in READABLE_VERSIONS:
            raise SchemaVersionError(_version_message(self.url, int(found)))
        if found is not None:
            self.schema_version = int(found)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------
    def register_dataset(self, name: str, source: str, root: str | Path, infos: Iterable[Any]) -> dict[str, int]:
        """Record a dataset and its images (idempotent); returns image name -> image id."""
        infos = list(infos)
        try:
            return self._register_dataset(name, source, root, infos)
        except IntegrityError:  # a concurrent worker registered the same rows first
            return self._register_dataset(name, source, root, infos)

    def _register_dataset(self, name: str, source: str, root: str | Path, infos: list[Any]) -> dict[str, int]:
        with self.engine.begin() as conn:
            if conn.execute(select(datasets.c.name).where(datasets.c.name == name)).first() is None:
                conn.execute(insert(datasets).values(name=name, source=source, root=str(Path(root).resolve()),
                                                     created_at=_now()))
            else:
                conn.execute(update(datasets).where(datasets.c.name == name).values(root=str(Path(root).resolve())))
            known = dict(conn.execute(select(images.c.name, images.c.id).where(images.c.dataset == name)).all())
            new_rows = [
                dict(dataset=name, name=i.name, split=i.split, breed=i.breed, species=i.species, width=int(i.width),
                     height=int(i.height), brightness=float(i.brightness), fg_fraction=float(i.fg_fraction))
                for i in infos if i.name not in known
            ]
            if new_rows:
                conn.execute(insert(images), new_rows)
                known = dict(conn.execute(select(images.c.name, images.c.id).where(images.c.dataset == name)).all())
        return known

    def start_trial(self, *, sweep: str, study: str, arch: str, number: int, params: dict[str, Any], device: str,
                    dataset: str, image_size: int) -> int:
        """Insert a trial in state 'running' and return its id; TrialExistsError if the study has
        that trial number already (a run name used before, or a trial another worker recorded as lost)."""
        try:
            with self.engine.begin() as conn:
                now = _now()
                result = conn.execute(insert(trials).values(
                    sweep=sweep, study=study, arch=arch, number=number, state="running", params=params,
                    epochs_run=0, started_at=now, heartbeat_at=now, device=device, dataset=dataset,
                    image_size=image_size))
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
                     checkpoint: str | None = None, results: ImageResults | None = None) -> float | None:
        """Close a trial; its per-image rows and masks land in the same transaction, or not at all.

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
                state=state, val_dice=val_dice, test_dice=test_dice, finished_at=_now(), error=error,
                checkpoint=checkpoint))
            if closed.rowcount != 1:  # e.g. taken for dead and retried elsewhere: keep the store truthful
                raise TrialClosedError(f"trial {trial_id} was already closed by another worker; results not recorded")
            if result_rows:
                conn.execute(insert(image_results), result_rows)
                if state == "complete":  # the sweep's per-image summaries, in this transaction: never out of step
                    from core.store import summaries

                    summaries.add_trial(conn, trial_id, result_rows)
            if mask_rows:
                conn.execute(insert(masks), mask_rows)
        return test_dice

    def set_checkpoint(self, trial_id: int, path: str | None) -> None:
        """Record where a trial's weights are, or that they were removed (None)."""
        with self.engine.begin() as conn:
            conn.execute(update(trials).where(trials.c.id == trial_id).values(checkpoint=path))

    def beat(self, trial_id: int) -> None:
        """A running trial's sign of life; see claim_stale."""
        with self.engine.begin() as conn:
            conn.execute(update(trials).where(trials.c.id == trial_id, trials.c.state == "running")
                         .values(heartbeat_at=_now()))

    def claim_stale(self, study: str, grace_s: float, error: str) -> list[dict[str, Any]]:
        """Fail the study's running trials whose worker has not beaten for `grace_s` seconds.

        Each stale trial is claimed by exactly one caller (a conditional update), so of several
        workers noticing the same dead trial only one retries it. Returns the claimed rows.
        """
        cutoff = _now() - dt.timedelta(seconds=grace_s)
        stale = trials.c.state == "running"
        with self.engine.connect() as conn:
            rows = conn.execute(select(trials).where(trials.c.study == study, stale,
                                                     trials.c.heartbeat_at < cutoff)).mappings().all()
        claimed = []
        for row in rows:
            with self.engine.begin() as conn:
                res = conn.execute(update(trials).where(trials.c.id == row["id"], stale, trials.c.heartbeat_at < cutoff)
                                   .values(state="failed", error=error, finished_at=_now()))
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
                    started_at=started_at, finished_at=_now(), device="unknown", dataset=dataset,
                    image_size=image_size, error=error))
        except IntegrityError:
            return False
        return True

    def stale_studies(self, grace_s: float) -> list[str]:
        """Studies holding a running trial that has not beaten for `grace_s` seconds (see claim_stale)."""
        cutoff = _now() - dt.timedelta(seconds=grace_s)
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
        now = _now()
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


def _version_message(url: str, found: int) -> str:
    return (f"database {display_url(url)} has results schema version {found}, this SegSweep reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}; "
            f"point --db at a new file or re-run the sweep into a new database")


def _one_line_db_error(url: str, exc: DBAPIError) -> str:
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
    return f"cannot open database {display_url(url)}: {detail}"
