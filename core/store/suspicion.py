"""The suspect-label score in the store: mask votes and sweep_images' label columns, kept up to date.

Closing a trial as complete adds its predicted masks to the votes of its sweep (sweep_image_votes, one
row of counts on the vote grid per image), recomputes the vote parts of its test images (consensus_dice,
agreement, contradiction; core.labels) from their votes and truths, and their image_evidence from the image
stored beside the truth (truth_masks.image, v5) where the majority mask changed (elsewhere it is as stored:
it depends on the majority mask, truth and image alone), and then label_suspicion of every
image of the sweep from those parts and the summaries' dice and entropy medians (the sweep's typical
entropy moves with every close), in the transaction that closes it (Store.finish_trial calls `add_trial`
right after core.store.summaries.add_trial, under the sweep's lock). That costs one read and write of each test image's votes and truth
and one pass over the sweep's summary rows: no earlier trial's masks are read again. `rebuild` recomputes
a sweep's votes from every stored mask (the upgrade, after summaries.rebuild). Both hold at most CHUNK images'
votes in memory at a time.

Votes are kept on the vote grid (core.labels.on_grid: at most VOTE_GRID cells a side, every s-th pixel of
a larger mask), so a close reads and writes at most 64 x 64 counts an image whatever the image size; votes
an older version stored at full size are sliced to the grid when next read. A mask whose grid differs from
the stored votes' is left out (a sweep evaluates at one size; two sizes with one grid, 128 and 256 px, would
count together). The truth compared against is truth_masks at the size of the image's latest mask counted,
on the same grid (decoded once per worker: truths never change); without one the label columns stay NULL.

The dashboard's reads of these tables (suspects, consensus, truth_mask) are in core.store.queries; the
score's rules (majority, dice fallback, typical entropy) are core.labels'.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from core.labels import (MIN_TRIALS, VoteParts, add_vote, decode_votes, encode_votes, majority, on_grid, score_parts,
                         vote_parts, vote_stride)
from core.store import schema as st
from core.store import summaries
from core.store.engine import executemany_columns
from core.store.mask_png import decode_image, decode_mask

LABEL_COLUMNS = ("label_suspicion", "consensus_dice", "agreement", "contradiction")
TRUTHS_KEPT = 8192  # truths on the grid kept decoded, by their PNG (at 256 px: about 5 KB each with its key)
CHUNK = 256  # images whose votes are held in memory at once (and their masks' rows read by a rebuild)


def readable_mask(png: bytes) -> np.ndarray | None:
    """A stored mask, or None where it cannot be read (it counts as no vote, as in `rebuild`)."""
    try:
        return decode_mask(bytes(png))
    except Exception:
        return None


# -- upkeep --------------------------------------------------------------------------------------------

def _grid_truths(conn: Connection, keys: Sequence[tuple[int, int]], column: str = "png"
                 ) -> dict[tuple[int, int], np.ndarray]:
    """Stored truths (or with column="image", the images as scored) of (image id, size) pairs that have one, on
    the vote grid (decoded on it: a close reads every test image's truth)."""
    t = st.truth_masks
    found: dict[tuple[int, int], np.ndarray] = {}
    for size in sorted({s for _, s in keys}):
        ids = sorted({int(i) for i, s2 in keys if s2 == size})
        for start in range(0, len(ids), 500):
            rows = conn.execute(select(t.c.image_id, t.c[column])
                                .where(t.c.image_size == size, t.c.image_id.in_(ids[start:start + 500]),
                                       t.c[column].is_not(None)))
            for image_id, png in rows:
                found[(int(image_id), size)] = (_grid_truth(bytes(png), vote_stride(size)) if column == "png"
                                                else decode_image(bytes(png)))
    return found


@functools.lru_cache(maxsize=TRUTHS_KEPT)
def _grid_truth(png: bytes, step: int) -> np.ndarray:
    """One stored truth on the vote grid (read-only), kept by its PNG bytes: a worker closing trial after trial
    reads every test image's truth at each close, and a truth never changes (another one has other bytes)."""
    truth = decode_mask(png, step)
    truth.flags.writeable = False
    return truth


PART_COLUMNS = ("consensus_dice", "agreement", "contradiction", "image_evidence")  # per image: votes, truth, image


Parts = dict[int, tuple[Any, ...]]  # image id -> its PART_COLUMNS values (None: not computed; KEPT: as stored)
KEPT = "kept"  # an image_evidence whose inputs did not change at this close (the same majority mask): as stored


def _side(mask: np.ndarray) -> int | None:
    """The image size a mask was evaluated at (its truth's truth_masks.image_size); None if not square."""
    return int(mask.shape[0]) if mask.shape[0] == mask.shape[1] else None


def _parts(conn: Connection, ids: list[int], votes: list[np.ndarray], trials: list[int],
           sides: list[int | None], moved: set[int] | None = None) -> Parts:
    """The vote parts (PART_COLUMNS) of these images from their votes (on the grid) and stored truths at the
    sizes their latest masks were evaluated at (`sides`), on the same grid; `_rescore` writes them with
    label_suspicion. The image evidence depends on the majority mask, the truth and the image alone: it is
    computed (its image read) where the majority mask `moved` at this close (None: everywhere) or the image is
    first scored, and KEPT as stored elsewhere, so a close reads few images once a sweep's votes settle."""
    truths = _grid_truths(conn, [(i, side) for i, side in zip(ids, sides) if side is not None])
    found: Parts = {i: (None,) * len(PART_COLUMNS) for i in ids}
    scored = [k for k, (i, v, side) in enumerate(zip(ids, votes, sides))
              if truths.get((i, side), np.zeros(0)).shape == v.shape]
    if scored:
        fresh = {k for k in scored if trials[k] == MIN_TRIALS or (trials[k] > MIN_TRIALS and (moved is None or ids[k] in moved))}
        images = _grid_truths(conn, [(ids[k], sides[k]) for k in fresh], "image")
        shown = [images.get((ids[k], sides[k])) for k in scored]
        parts = vote_parts([votes[k] for k in scored], np.array([trials[k] for k in scored]),
                           [truths[(ids[k], sides[k])] for k in scored],
                           images=[p if p is not None and p.shape[:2] == votes[k].shape else None
                                   for k, p in zip(scored, shown)])
        columns = [getattr(parts, c).tolist() for c in PART_COLUMNS]
        for j, k in enumerate(scored):
            found[ids[k]] = tuple(None if c[j] != c[j] else float(c[j]) for c in columns)
            if trials[k] > MIN_TRIALS and k not in fresh:
                found[ids[k]] = (*found[ids[k]][:-1], KEPT)
    return found


def _rescore(conn: Connection, sweep: str, fresh: Parts) -> None:
    """Write the label columns of every image of the sweep whose values changed: the `fresh` vote parts of the
    images just voted on, and label_suspicion of all from their parts, dice and entropy medians and the sweep's
    typical entropy (core.labels.score_parts), which moves with every close. Only columns are read, no votes; one
    write per changed row."""
    s = st.sweep_images
    stored = conn.execute(select(s.c.image_id, *(s.c[c] for c in PART_COLUMNS), s.c.label_suspicion, s.c.dice_median,
                                 s.c.entropy_median).where(s.c.sweep == sweep)).all()
    if not stored:
        return
    k = len(PART_COLUMNS)
    rows = [(int(r[0]), _with_kept(fresh.get(int(r[0]), tuple(r[1:1 + k])), r[k]), r[1 + k], r[2 + k], r[3 + k])
            for r in stored]
    nan = lambda v: np.nan if v is None else float(v)  # noqa: E731
    parts = VoteParts(**{c: np.array([nan(r[1][j]) for r in rows]) for j, c in enumerate(PART_COLUMNS)})
    score = score_parts(parts, entropy=np.array([nan(r[4]) for r in rows]), dice_median=np.array([nan(r[3]) for r in rows]))
    changed = []
    for (image_id, parts, was, _, _), old_parts, value in zip(rows, stored, score.tolist()):
        value = None if value != value else float(value)
        if value != was or tuple(parts) != tuple(old_parts[1:1 + k]):
            changed.append({"key_image": image_id, "label_suspicion": value, **dict(zip(PART_COLUMNS, parts))})
    if changed:
        executemany_columns(conn, update(s).where(s.c.sweep == bindparam("key_sweep"),
                                                  s.c.image_id == bindparam("key_image"))
                            .values({c: bindparam(c) for c in ("label_suspicion", *PART_COLUMNS)}),
                            {"key_sweep": [sweep] * len(changed), **{k: [row[k] for row in changed] for k in changed[0]}})


def _with_kept(parts: tuple[Any, ...], stored_evidence: Any) -> tuple[Any, ...]:
    """Fresh parts with a KEPT image evidence taken as stored."""
    return (*parts[:-1], stored_evidence) if parts[-1] is KEPT else parts


def add_trial(conn: Connection, sweep: str, image_ids: Sequence[int], masks: Sequence[np.ndarray] | None) -> int:
    """Add a complete trial's predicted masks (None: it stored none) to its sweep's votes, recompute those images'
    vote parts, and rescore every image of the sweep (the trial moved dice and entropy medians, and so the sweep's
    typical entropy); returns how many masks were counted. Call under the sweep's summaries lock, after the
    trial's summaries are written."""
    ids = [int(i) for i in image_ids]
    fresh: Parts = {}
    counted = 0
    if masks is not None:
        for start in range(0, len(ids), CHUNK):  # a bounded number of images' votes in memory at once
            counted += _add_chunk(conn, sweep, ids[start:start + CHUNK], masks[start:start + CHUNK], fresh)
    _rescore(conn, sweep, fresh)
    return counted


def _add_chunk(conn: Connection, sweep: str, ids: list[int], masks: Sequence[np.ndarray], fresh: Parts) -> int:
    v = st.sweep_image_votes
    stored: dict[int, tuple[np.ndarray, int]] = {}
    for image_id, n, blob in conn.execute(select(v.c.image_id, v.c.trials, v.c.votes)
                                          .where(v.c.sweep == sweep, v.c.image_id.in_(ids))):
        stored[int(image_id)] = (on_grid(decode_votes(bytes(blob))), int(n))  # an older version's full size: sliced
    scored: dict[int, tuple[np.ndarray, int, int | None]] = {}  # the images counted: votes, trials, truth size
    moved: set[int] = set()  # those whose majority mask changed
    new_rows, old_rows = [], []
    for image_id, mask in zip(ids, masks):
        mask = np.asarray(mask, dtype=bool)  # no copy when it is one already
        cells = on_grid(mask)
        if image_id in stored:
            votes, n = stored[image_id]
            if votes.shape != cells.shape:  # votes are kept on the grid of the first mask counted
                continue
            before, votes = votes, add_vote(votes, cells, n)
            if not np.array_equal(majority(before, n), majority(votes, n + 1)):
                moved.add(image_id)
            scored[image_id] = (votes, n + 1, _side(mask))
            old_rows.append({"key_image": image_id, "trials": n + 1, "votes": encode_votes(votes)})
        else:
            scored[image_id] = (cells, 1, _side(mask))  # bool: one vote a cell; encode_votes stores it as bytes
            new_rows.append({"sweep": sweep, "image_id": image_id, "trials": 1, "votes": encode_votes(cells)})
    if new_rows:  # through the driver: SQLAlchemy's executemany builds every row's parameters in Python
        executemany_columns(conn, insert(v).values({k: bindparam(k) for k in new_rows[0]}),
                            {k: [row[k] for row in new_rows] for k in new_rows[0]})
    if old_rows:
        executemany_columns(conn, update(v).where(v.c.sweep == bindparam("key_sweep"),
                                                  v.c.image_id == bindparam("key_image"))
                            .values(trials=bindparam("trials"), votes=bindparam("votes")),
                            {"key_sweep": [sweep] * len(old_rows), **{k: [row[k] for row in old_rows] for k in old_rows[0]}})
    order = list(scored)
    fresh.update(_parts(conn, order, *([scored[i][j] for i in order] for j in range(3)), moved=moved))
    return len(new_rows) + len(old_rows)


def build(conn: Connection) -> int:
    """Rebuild the votes and label columns of every sweep with a complete trial (the upgrade, after
    summaries.build); returns masks counted."""
    return sum(rebuild(conn, sweep) for sweep in summaries.complete_sweeps(conn))


def rebuild(conn: Connection, sweep: str) -> int:
    """Recompute a sweep's votes from every stored mask of its complete trials (in the order they closed) and
    its sweep_images label columns; sweep_images must hold its summaries (summaries.rebuild). Returns masks
    counted."""
    s = st.sweep_images
    conn.execute(delete(st.sweep_image_votes).where(st.sweep_image_votes.c.sweep == sweep))
    ids = sorted(int(i) for i in conn.execute(select(s.c.image_id).where(s.c.sweep == sweep)).scalars())
    fresh: Parts = {}
    counted = sum(_rebuild_chunk(conn, sweep, ids[start:start + CHUNK], fresh) for start in range(0, len(ids), CHUNK))
    _rescore(conn, sweep, fresh)
    return counted


def _rebuild_chunk(conn: Connection, sweep: str, ids: list[int], fresh: Parts) -> int:
    m, t = st.masks, st.trials
    stmt = (select(m.c.image_id, m.c.png).join_from(m, t, t.c.id == m.c.trial_id)
            .where(t.c.sweep == sweep, t.c.state == "complete", m.c.image_id.in_(ids))
            .order_by(t.c.finished_at, t.c.id))
    votes: dict[int, np.ndarray] = {}  # on the grid
    trials: dict[int, int] = {}
    sides: dict[int, int | None] = {}  # the size of each image's latest mask counted: its truth's
    counted = 0
    result = conn.execute(stmt)
    try:
        while rows := result.fetchmany(2000):
            for image_id, png in rows:
                if (mask := readable_mask(png)) is None:
                    continue
                image_id, cells = int(image_id), on_grid(mask)
                if image_id not in votes:
                    votes[image_id], trials[image_id] = cells.astype(np.int32), 1
                elif votes[image_id].shape == cells.shape:
                    votes[image_id] += cells
                    trials[image_id] += 1
                else:
                    continue
                sides[image_id] = _side(mask)
                counted += 1
    finally:
        result.close()
    if not votes:
        return 0
    done = sorted(votes)
    conn.execute(insert(st.sweep_image_votes), [{"sweep": sweep, "image_id": i, "trials": trials[i],
                                                 "votes": encode_votes(votes[i])} for i in done])
    fresh.update(_parts(conn, done, [votes[i] for i in done], [trials[i] for i in done], [sides[i] for i in done]))
    return counted
