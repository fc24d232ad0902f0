"""Schema v1 to v5 -> v6, in place.

v1 -> v2: new nullable columns on image_results, backfilled from the stored masks. A v1 store holds every
complete trial's predicted masks (1-bit PNGs at the evaluation size) and the dataset root its images came
from; the trimaps there give the ground truth, so every v2 diagnostic except entropy (a 1-bit mask has no
probabilities) can be computed for old trials exactly as the evaluation computes it for new ones. Rows
whose mask or trimap cannot be read, or whose dataset root is not reachable, keep NULL diagnostics and
failure_mode 'not computed'.

v2 -> v3: the per-image summaries of every sweep (core.store.summaries), built from image_results.

v3 -> v4: new nullable columns (each dataset's layout, each image's group, the label-suspicion parts of the
summaries) and new tables (truth masks, mask votes, review marks); the truths as scored are rebuilt from the
trimaps where the dataset root is reachable (Oxford-IIIT Pet and synthetic layouts), and the summaries are
rebuilt with the mask votes of every stored mask, so the suspect-label score (core.labels) is computed where
the masks and truths allow and stays NULL elsewhere.

v4 -> v5: new nullable columns (truth_masks.image, sweep_images.image_evidence); each stored truth's image as
scored is read again from the dataset folder where its file is still there, and the summaries are rebuilt, so
the score gains its image evidence there and keeps its v4 value (evidence NULL, counted as 1) elsewhere.

v5 -> v6: the neutral names (schema.RENAMED_IN): image_results.object_missed, sweep_images.n_missed_object and
failure mode 'missed object' (image_results and sweep_images.top_mode) under their old names are renamed; new nullable trials columns (checkpoint_sha256, encoder_weights, encoder_sha256), NULL on
older trials. Renames come first, so a renamed column is never added anew beside its old one.

Everything (renames, columns, backfill, summaries, version bump) happens in one transaction: a crash or a full
disk leaves the old store as it was. Two workers upgrading at once: the first takes the write lock with
its UPDATE of schema_version, the second waits and then finds the current version and does nothing.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy import and_, bindparam, insert, inspect, select, text, update
from sqlalchemy.engine import Connection

from core.data.dataset import image_as_scored, open_rgb, truth_as_scored
from core.data.layout import LAYOUT_SOURCES, image_rel
from core.labels import on_grid
from core.metrics import DIAGNOSTICS, NOT_COMPUTED, mask_diagnostics
from core.store import schema as st
from core.store import summaries, suspicion
from core.store.engine import display_url
from core.store.mask_png import decode_mask, encode_image, encode_mask

V2_COLUMNS = (*DIAGNOSTICS, "failure_mode")


@dataclass
class UpgradeReport:
    """What an upgrade did: per-image rows backfilled (from v1), rows left 'not computed' with the reasons,
    and the per-image summaries built."""

    upgraded: bool = False
    from_version: int = 0
    backfilled: int = 0
    not_computed: int = 0
    trials: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # reason -> rows
    sweeps: int = 0          # sweeps summarised
    summarised: int = 0      # their (sweep, image) summaries
    results: int = 0         # per-image results they summarise
    truths: int = 0          # truths as scored rebuilt from trimaps (v4), for the label-suspicion score
    images: int = 0          # images as scored stored beside their truths (v5), for its image evidence
    renamed: list[str] = field(default_factory=list)  # columns renamed (v6), "table.old -> new"

    def summary(self, url: str) -> str:
        head = (f"upgraded results store {display_url(url)} from schema version {self.from_version} to "
                f"{st.SCHEMA_VERSION} in place: ")
        built = (f"per-image summaries of {self.sweeps} sweep{'s' if self.sweeps != 1 else ''} built "
                 f"({self.summarised} images, from {self.results} per-image results)")
        if self.truths:
            built += f"; {self.truths} ground truths rebuilt from trimaps for the suspect-label score"
        if self.images:
            built += f"; {self.images} images as scored stored for its image evidence"
        if self.renamed:
            built += f"; renamed {', '.join(self.renamed)} (docs/store.md)"
        if self.from_version != 1:
            return head + built
        why = "; ".join(f"{n} {reason}" for reason, n in self.reasons.items())
        return (head + f"{self.backfilled} per-image results of {self.trials} trials backfilled from their masks and "
                f"trimaps, {self.not_computed} not computed{f' ({why})' if why else ''}; "
                f"entropy is not computed for results written before version 2; {built}")


def eval_truth(root: Path, name: str, width: int, height: int, size: int) -> np.ndarray | None:
    """The foreground the evaluation used, (size, size) bool, rebuilt from the dataset's trimap by the
    Oxford-IIIT Pet reader (core.data.dataset.truth_as_scored); None if unreadable."""
    truth = truth_as_scored(root, name, (int(width), int(height)), size)
    return None if isinstance(truth, str) else truth[0]


def rename_columns_and_values(conn: Connection, from_version: int) -> list[str]:
    """Rename what later versions renamed (schema.RENAMED_IN) in a store of `from_version`, in place: columns
    where the store has them (ALTER TABLE ... RENAME COLUMN: SQLite >= 3.25, PostgreSQL), then stored values.
    Returns the columns renamed as "table.old -> new"."""
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    done = []
    for version in sorted(v for v in st.RENAMED_IN if v > from_version):
        renames = st.RENAMED_IN[version]
        for table, columns in renames.items():
            if table == "values" or not inspector.has_table(table):
                continue
            present = {c["name"] for c in inspector.get_columns(table)}
            for old, new in columns.items():
                if old in present and new not in present:
                    conn.execute(text(f"ALTER TABLE {quote(table)} RENAME COLUMN {quote(old)} TO {quote(new)}"))
                    done.append(f"{table}.{old} -> {new}")
        for table, column in ((st.image_results, "failure_mode"), (st.sweep_images, "top_mode")):
            if inspector.has_table(table.name) and column in {c["name"] for c in inspector.get_columns(table.name)}:
                for old, new in renames.get("values", {}).items():
                    conn.execute(update(table).where(table.c[column] == old).values({column: new}))
        inspector = inspect(conn)  # the renamed columns, for the next version's renames
    return done


def add_missing_columns(conn: Connection) -> list[str]:
    """Add every column the schema has and an existing table lacks (all added columns are nullable);
    returns them as "table.column". The one way a version grows a table in place."""
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    added = []
    for table in st.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            assert column.nullable, f"{table.name}.{column.name}: a column added in place must be nullable"
            conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
                              f"{column.type.compile(dialect=conn.dialect)}"))
            added.append(f"{table.name}.{column.name}")
    return added


def _backfill(conn: Connection, report: UpgradeReport, log: Callable[[str], None]) -> None:
    roots = {name: Path(root) for name, root in conn.execute(select(st.datasets.c.name, st.datasets.c.root))}
    done = conn.execute(select(st.trials.c.id, st.trials.c.dataset, st.trials.c.image_size)
                        .where(st.trials.c.id.in_(select(st.image_results.c.trial_id).distinct()))
                        .order_by(st.trials.c.id)).all()
    truths: dict[tuple[str, int, str], np.ndarray | None] = {}
    stmt = (update(st.image_results)
            .where(and_(st.image_results.c.trial_id == bindparam("t_id"), st.image_results.c.image_id == bindparam("i_id")))
            .values({name: bindparam(f"v_{name}") for name in V2_COLUMNS}))
    for k, (trial_id, dataset, size) in enumerate(done):
        root = roots.get(dataset)
        reachable = root is not None and root.is_dir()
        rows = conn.execute(
            select(st.image_results.c.image_id, st.image_results.c.dice, st.images.c.name, st.images.c.width,
                   st.images.c.height, st.masks.c.png)
            .join_from(st.image_results, st.images, st.images.c.id == st.image_results.c.image_id)
            .outerjoin(st.masks, and_(st.masks.c.trial_id == st.image_results.c.trial_id,
                                      st.masks.c.image_id == st.image_results.c.image_id))
            .where(st.image_results.c.trial_id == trial_id)).all()
        good, values = [], []
        for image_id, dice, name, width, height, png in rows:
            reason = None
            if not reachable:
                reason = f"dataset root {root} not found" if root is not None else f"dataset {dataset} not recorded"
            elif png is None:
                reason = "no stored mask"
            else:
                key = (dataset, int(size), name)
                if key not in truths:
                    truths[key] = eval_truth(root, name, width, height, int(size))
                truth = truths[key]
                try:
                    pred = decode_mask(bytes(png))
                except Exception:
                    pred, reason = None, "unreadable mask"
                if truth is None:
                    reason = "trimap missing or unreadable"
                elif pred is not None and pred.shape != truth.shape:
                    reason = "mask size differs from the trial's image size"
            if reason is None:
                good.append((image_id, dice, pred, truth))
            else:
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
                values.append({"t_id": trial_id, "i_id": image_id,
                               **{f"v_{n}": None for n in V2_COLUMNS}, "v_failure_mode": NOT_COMPUTED})
        if good:
            diag = mask_diagnostics(np.stack([g[2] for g in good]), np.stack([g[3] for g in good]))
            for row, extra in zip(good, st.diagnostic_rows(np.array([g[1] for g in good]), diag, len(good))):
                values.append({"t_id": trial_id, "i_id": row[0], **{f"v_{n}": extra[n] for n in V2_COLUMNS}})
        if values:
            conn.execute(stmt, values)
        report.backfilled += len(good)
        report.not_computed += len(rows) - len(good)
        report.trials += 1
        if len(done) > 20 and (k + 1) % 20 == 0:
            log(f"upgrading results store: {k + 1} of {len(done)} trials backfilled")


def _record_truths(conn: Connection) -> int:
    """The truth as scored of every image a complete trial stored a mask of, at that trial's size, rebuilt from
    the dataset's trimaps (Oxford-IIIT Pet and synthetic layouts, root reachable); returns truths written.
    Images without one keep NULL label-suspicion columns."""
    t, m, i, d = st.trials, st.masks, st.images, st.datasets
    wanted = conn.execute(
        select(i.c.id, i.c.name, i.c.width, i.c.height, t.c.image_size, d.c.root).distinct()
        .select_from(m.join(t, t.c.id == m.c.trial_id).join(i, i.c.id == m.c.image_id).join(d, d.c.name == i.c.dataset))
        .where(t.c.state == "complete", d.c.source.in_(LAYOUT_SOURCES))).all()
    known = {tuple(r) for r in conn.execute(select(st.truth_masks.c.image_id, st.truth_masks.c.image_size))}
    rows = []
    for image_id, name, width, height, size, root in wanted:
        if (image_id, size) in known or not Path(root).is_dir():
            continue
        truth = eval_truth(Path(root), name, width, height, int(size))
        if truth is not None:
            rows.append({"image_id": image_id, "image_size": int(size), "png": encode_mask(truth)})
            known.add((image_id, size))
    if rows:
        conn.execute(insert(st.truth_masks), rows)
    return len(rows)


def eval_image(path: Path, size: int) -> np.ndarray | None:
    """An image as the evaluation saw it, (size, size, 3) uint8 (RGB, bilinear, as core.data.dataset decodes it),
    on the vote grid; None if unreadable."""
    try:
        image = open_rgb(path)
    except Exception:
        return None
    return on_grid(image_as_scored(image, size))


def _record_images(conn: Connection) -> int:
    """Each stored truth's image as scored (truth_masks.image, v5) where its file is still there: the dataset root
    and the image's path (images.path, else the Oxford-IIIT Pet and synthetic rule); returns images stored."""
    t, i, d = st.truth_masks, st.images, st.datasets
    wanted = conn.execute(select(t.c.image_id, t.c.image_size, i.c.name, i.c.path, d.c.root)
                          .select_from(t.join(i, i.c.id == t.c.image_id).join(d, d.c.name == i.c.dataset))
                          .where(t.c.image.is_(None))).all()
    rows = []
    for image_id, size, name, path, root in wanted:
        image = eval_image(Path(root) / (path or image_rel(name)), int(size))
        if image is not None:
            rows.append({"key_image": int(image_id), "key_size": int(size), "image": encode_image(image)})
    if rows:
        conn.execute(update(t).where(t.c.image_id == bindparam("key_image"), t.c.image_size == bindparam("key_size"))
                     .values(image=bindparam("image")), rows)
    return len(rows)


def upgrade(conn: Connection, log: Callable[[str], None] | None = None) -> UpgradeReport:
    """Upgrade a v1 or v2 store to the current version inside the caller's transaction; a no-op if another
    worker already did."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    report = UpgradeReport()
    # the first statement writes: it takes the write lock (SQLite) or the row lock (PostgreSQL) before
    # anything is read, so a concurrent upgrader waits here and then sees the current version
    for old in range(1, st.SCHEMA_VERSION):
        claimed = conn.execute(update(st.schema_info).where(st.schema_info.c.key == "schema_version",
                                                             st.schema_info.c.value == str(old))
                               .values(value=str(st.SCHEMA_VERSION)))
        if claimed.rowcount == 1:
            report.from_version = old
            break
    else:
        return report
    report.renamed = rename_columns_and_values(conn, report.from_version)
    add_missing_columns(conn)
    if report.from_version == 1:
        st.ensure_v2_indexes(conn)
        _backfill(conn, report, log)
    if report.from_version < 4:
        for table in (st.truth_masks, st.sweep_image_votes):
            table.create(conn, checkfirst=True)
        report.truths = _record_truths(conn)
    if report.from_version < 5:
        report.images = _record_images(conn)
    report.sweeps, report.summarised, report.results = summaries.build(conn)
    suspicion.build(conn)
    report.upgraded = True
    return report


def backfill_counts(conn: Connection) -> dict[str, Any]:
    """Rows by failure mode (NULL counted as not computed): what an upgraded store holds."""
    counts: dict[str, int] = defaultdict(int)
    for mode, n in conn.execute(text("SELECT failure_mode, count(*) FROM image_results GROUP BY failure_mode")):
        counts[mode or NOT_COMPUTED] += int(n)
    return dict(counts)
