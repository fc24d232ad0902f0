"""The results schema: every table, column and index of the store, and its version.

This is a public interface (documented in docs/store.md): the jobs write it, the dashboard reads it, and
users query it directly. Change it only by a new SCHEMA_VERSION: columns and tables are added (ADDED_IN);
a renamed column or value is listed in RENAMED_IN (and docs/store.md) with its old name; the upgrade
(core.store.upgrade) brings older stores to it in place. This module imports nothing of the store's
own, so every other store module can import it.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
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
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from core.metrics import DIAGNOSTICS, FAILURE_MODES, NOT_COMPUTED, ImageDiagnostics, failure_modes

SCHEMA_VERSION = 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)  # the dashboard reads an older store as it is; writers upgrade it first
LAYOUTS = ("oxford-pets", "synthetic", "paired-folders", "nnunet", "two-folders")  # datasets.layout
REVIEW_MARKS = ("label error", "hard image", "fine")  # reviews.mark
TRIAL_STATES = ("running", "complete", "pruned", "failed")

metadata = MetaData()


def utc_now() -> dt.datetime:
    """Now, as every DateTime column stores it: naive UTC (SQLite keeps no zone, so none is stored anywhere)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


schema_info = Table(
    "schema_info", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

datasets = Table(
    "datasets", metadata,
    Column("name", String(255), primary_key=True),  # "<source>/<root folder>"
    Column("source", String(32), nullable=False),    # oxford-pets | synthetic | folder (the user's own)
    Column("root", Text, nullable=False),            # where the images were read from
    Column("created_at", DateTime, nullable=False),
    Column("layout", String(32)),                    # v4: how it was read, one of LAYOUTS; NULL before v4
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
    # v6: sha256 of the checkpoint file (jobs.predict and jobs.export refuse a file that no longer matches)
    Column("checkpoint_sha256", String(64)),
    # v6: where the encoder's starting weights came from (core.models.pretrained: "none", "imagenet:FILE",
    # "file:PATH") and that file's sha256; NULL before v6 (every earlier trial started from random weights)
    Column("encoder_weights", Text),
    Column("encoder_sha256", String(64)),
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
    # v4: the image's group: a class folder (benign/, malignant/), or the part of its name --group-by names
    # (a patient, video or scene); NULL = no group
    Column("group_name", String(255)),
    # v4: the image file relative to the dataset root, '/'-separated; NULL = the layout's own rule
    # (Oxford-IIIT Pet and synthetic: images/NAME.jpg)
    Column("path", Text),
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
    Column("object_missed", Boolean),  # v6 name (RENAMED_IN has the old one)
    Column("entropy", Float),
    Column("failure_mode", String(24)),  # core.metrics.failure_modes, or 'not computed' (v6 renamed a value: RENAMED_IN)
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
SUMMARY_METRICS = ("dice", "dice_no_border", "iou", *(d for d in DIAGNOSTICS if d != "object_missed"))
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
    # v4: how likely the image's mask is wrong rather than the image hard (core.labels; higher = more suspect),
    # from the votes of the sweep's complete trials' masks against the truth as scored; NULL with fewer than
    # core.labels.MIN_TRIALS trials or without a stored truth
    Column("label_suspicion", Float),
    Column("consensus_dice", Float),   # dice of the models' majority mask against the given mask
    Column("agreement", Float),        # how unanimous the models are (1 = every model the same mask)
    Column("contradiction", Float),    # share of the mask/consensus area where the models agree against the mask
    # v5: whether the image's edges back the models' majority mask (towards 2) or the given one (towards 0), 1 alike;
    # NULL without a stored image (truth_masks.image): the score then counts it as 1
    Column("image_evidence", Float),
)

sweep_image_windows = Table(
    "sweep_image_windows", metadata,
    Column("sweep", String(255), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    # what keeps sweep_images' medians exact as trials close: per metric the count, sum, min, max and the
    # sorted values around the median (core.store.summaries.STATE, packed little-endian)
    Column("state", LargeBinary, nullable=False),
)
sweep_image_votes = Table(
    "sweep_image_votes", metadata,
    Column("sweep", String(255), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    # v4: per cell of the vote grid (core.labels.on_grid: every pixel up to 64 px, at most 64 x 64 cells above),
    # how many of the sweep's complete trials predicted foreground (core.labels.VOTES, zlib)
    Column("trials", Integer, nullable=False),
    Column("votes", LargeBinary, nullable=False),
)
SUMMARY_TABLES = (sweep_images, sweep_image_windows, sweep_image_votes)

truth_masks = Table(
    "truth_masks", metadata,
    # v4: each image's ground truth exactly as the evaluation scored it at an image size (1-bit PNG,
    # core.store.mask_png): what the label-suspicion score compares against and the gallery overlays
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("image_size", Integer, primary_key=True),
    Column("png", LargeBinary, nullable=False),
    # v5: the image as scored at that size, on the vote grid (core.labels.on_grid), RGB PNG: the suspect-label
    # score's image evidence; NULL where not recorded (older stores whose images were not reachable)
    Column("image", LargeBinary),
)

reviews = Table(
    "reviews", metadata,
    # v4: a person's review mark on an image, the dashboard's only write; kept per dataset and image name,
    # so it outlives sweeps and re-registrations
    Column("dataset", String(255), primary_key=True),
    Column("image", String(255), primary_key=True),
    Column("mark", String(16), nullable=False),  # one of REVIEW_MARKS
    Column("note", Text),
    Column("marked_at", DateTime, nullable=False),
)


# What each version added, so that a reader knows from a store's version alone what it holds: a whole table
# (None) or columns of an older table. Everything not named here is in every version.
ADDED_IN: dict[int, dict[str, tuple[str, ...] | None]] = {
    2: {"image_results": (*DIAGNOSTICS, "failure_mode")},
    3: {"sweep_images": None, "sweep_image_windows": None},
    4: {"datasets": ("layout",), "images": ("group_name", "path"),
        "sweep_images": ("label_suspicion", "consensus_dice", "agreement", "contradiction"),
        "sweep_image_votes": None, "truth_masks": None, "reviews": None},
    5: {"truth_masks": ("image",), "sweep_images": ("image_evidence",)},
    6: {"trials": ("checkpoint_sha256", "encoder_weights", "encoder_sha256")},
}

# What each version renamed, old name -> new name: columns per table, and stored values (failure_mode and
# sweep_images.top_mode). The upgrade renames them in place; a reader of an older store maps them on read.
RENAMED_IN: dict[int, dict[str, dict[str, str]]] = {
    6: {"image_results": {"pet_missed": "object_missed"}, "sweep_images": {"n_missed_pet": "n_missed_object"},
        "values": {"missed pet": "missed object"}},
}


def stored_name(version: int, table: str, column: str) -> str:
    """The name a store of schema `version` gives what the current schema calls `table`.`column`."""
    for renamed_in in sorted(RENAMED_IN, reverse=True):
        if version < renamed_in:
            column = {new: old for old, new in RENAMED_IN[renamed_in].get(table, {}).items()}.get(column, column)
    return column


def stored_values(version: int) -> dict[str, str]:
    """Stored value -> current value for every value renamed after schema `version` (empty when current)."""
    out: dict[str, str] = {}
    for renamed_in in sorted(RENAMED_IN, reverse=True):
        if version < renamed_in:
            out = {old: out.get(new, new) for old, new in RENAMED_IN[renamed_in].get("values", {}).items()} | out
    return out


def holds(version: int, table: str, column: str | None = None) -> bool:
    """Whether a store of schema `version` has `table` (and its `column`)."""
    since = 1
    for added_in, added in ADDED_IN.items():
        if table in added and (added[table] is None or column in added[table]):  # the table's, or the column's
            since = max(since, added_in)
    return version >= since


def stored_version(conn: Connection) -> int:
    """The schema version a store says it has (schema_info); a database without one is taken as current
    (a new store being created: Store refuses an unversioned one that holds trials)."""
    try:
        found = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar()
    except SQLAlchemyError:  # no schema_info table
        if conn.in_transaction() and conn.dialect.name == "postgresql":
            conn.rollback()
        return SCHEMA_VERSION
    return SCHEMA_VERSION if found is None else int(found)


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
        elif name == "object_missed":
            columns[name] = [bool(v) for v in values]
        else:
            columns[name] = [None if v != v else float(v) for v in np.asarray(values, np.float64).tolist()]
    return [{**{name: columns[name][k] for name in DIAGNOSTICS}, "failure_mode": str(modes[k])} for k in range(n)]


def ensure_v2_indexes(engine_or_conn: Any) -> None:
    """Create the v2 indexes of image_results where they are missing (the upgrade, or a v2 store that predates them)."""
    for index in image_results.indexes:
        if "failure_mode" in index.columns:
            index.create(engine_or_conn, checkfirst=True)
