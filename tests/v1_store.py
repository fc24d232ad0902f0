"""A genuine schema-v1 results store, for the upgrade tests: the v1 DDL frozen here as it shipped
(core/store/db.py at commit 9d51d55), filled the way v1's Store wrote it, with real masks.

Never import core.store.db's tables here: they are v2 now and would not write a v1 store.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import (
    JSON, Column, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
    UniqueConstraint, insert, select,
)

from core.data.dataset import PreparedDataset
from core.metrics import image_scores
from core.store.db import encode_mask, make_engine
from tests.store_renames import dump_tables

V1 = MetaData()
V1_SCHEMA_INFO = Table("schema_info", V1, Column("key", String(64), primary_key=True),
                       Column("value", String(256), nullable=False))
V1_DATASETS = Table("datasets", V1, Column("name", String(255), primary_key=True),
                    Column("source", String(32), nullable=False), Column("root", Text, nullable=False),
                    Column("created_at", DateTime, nullable=False))
V1_TRIALS = Table(
    "trials", V1,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sweep", String(255), nullable=False, index=True), Column("study", String(255), nullable=False),
    Column("arch", String(64), nullable=False), Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False), Column("params", JSON, nullable=False),
    Column("val_dice", Float), Column("test_dice", Float), Column("epochs_run", Integer, nullable=False, default=0),
    Column("started_at", DateTime, nullable=False), Column("finished_at", DateTime),
    Column("device", String(64), nullable=False), Column("dataset", String(255), nullable=False),
    Column("image_size", Integer, nullable=False), Column("error", Text), Column("checkpoint", Text),
    Column("heartbeat_at", DateTime),
    UniqueConstraint("study", "number", name="uq_trials_study_number"))
V1_EPOCHS = Table(
    "epochs", V1,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("epoch", Integer, primary_key=True), Column("train_loss", Float), Column("val_loss", Float),
    Column("train_dice", Float), Column("val_dice", Float), Column("lr", Float), Column("seconds", Float),
    Column("images_per_s", Float))
V1_IMAGES = Table(
    "images", V1,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(255), ForeignKey("datasets.name"), nullable=False),
    Column("name", String(255), nullable=False), Column("split", String(8), nullable=False),
    Column("breed", String(128), nullable=False), Column("species", String(8), nullable=False),
    Column("width", Integer, nullable=False), Column("height", Integer, nullable=False),
    Column("brightness", Float, nullable=False), Column("fg_fraction", Float, nullable=False),
    UniqueConstraint("dataset", "name", name="uq_images_dataset_name"))
V1_IMAGE_RESULTS = Table(
    "image_results", V1,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("dice", Float, nullable=False), Column("iou", Float, nullable=False),
    Column("dice_no_border", Float, nullable=False),
    Index("ix_image_results_trial_dice", "trial_id", "dice"), Index("ix_image_results_image", "image_id"))
V1_MASKS = Table(
    "masks", V1,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("png", LargeBinary, nullable=False))
Index("ix_trials_study_state", V1_TRIALS.c.study, V1_TRIALS.c.state)
V1_TABLES = (V1_SCHEMA_INFO, V1_DATASETS, V1_TRIALS, V1_EPOCHS, V1_IMAGES, V1_IMAGE_RESULTS, V1_MASKS)


@dataclass
class V1Store:
    url: str
    trial_ids: list[int]                                         # complete trials, in order
    preds: dict[int, np.ndarray] = field(default_factory=dict)   # trial id -> (M, S, S) bool, test order
    truths: np.ndarray | None = None                             # (M, S, S) bool, the evaluation's ground truth
    image_ids: list[int] = field(default_factory=list)           # test image ids, test order


def _damaged(rng: np.random.Generator, truth: np.ndarray, kind: int) -> np.ndarray:
    """Plausible predictions of several failure kinds: shifted, holed, a spurious blob, empty."""
    s = truth.shape[0]
    yy, xx = np.mgrid[0:s, 0:s]
    if kind == 0:
        return np.roll(truth, int(rng.integers(1, 4)), axis=1)
    if kind == 1:
        cy, cx = rng.uniform(0, s, 2)
        return truth & ((yy - cy) ** 2 + (xx - cx) ** 2 > (s * 0.3) ** 2)
    if kind == 2:
        cy, cx = rng.uniform(0, s, 2)
        return truth | ((yy - cy) ** 2 + (xx - cx) ** 2 < (s * 0.12) ** 2)
    return np.zeros_like(truth)


def build_v1_store(url: str, data: PreparedDataset, n_trials: int = 2, seed: int = 0) -> V1Store:
    """Write a v1 store over `data`: n complete trials (results + masks), a pruned one, epochs, v1's version row."""
    engine = make_engine(url)
    V1.create_all(engine)
    rng = np.random.default_rng(seed)
    now = dt.datetime(2026, 11, 1, 12, 0, 0)
    test = data.indices("test")
    truths = data.masks[test].astype(bool)
    out = V1Store(url=url, trial_ids=[], truths=truths)
    with engine.begin() as conn:
        conn.execute(insert(V1_SCHEMA_INFO).values(key="schema_version", value="1"))
        conn.execute(insert(V1_DATASETS).values(name=data.name, source=data.source, root=str(Path(data.root).resolve()),
                                                created_at=now))
        conn.execute(insert(V1_IMAGES), [dict(dataset=data.name, name=i.name, split=i.split, breed=i.breed,
                                              species=i.species, width=int(i.width), height=int(i.height),
                                              brightness=float(i.brightness), fg_fraction=float(i.fg_fraction))
                                         for i in data.infos])
        ids = dict(conn.execute(select(V1_IMAGES.c.name, V1_IMAGES.c.id)).all())
        out.image_ids = [int(ids[data.infos[i].name]) for i in test]
        for number in range(n_trials + 1):
            state = "complete" if number < n_trials else "pruned"
            tid = int(conn.execute(insert(V1_TRIALS).values(
                sweep="old", study="old/unet", arch="unet", number=number, state=state,
                params={"lr": 1e-3 * (number + 1), "dice_weight": 0.7}, val_dice=0.8 - 0.1 * number, epochs_run=2,
                started_at=now, finished_at=now, heartbeat_at=now, device="cpu", dataset=data.name,
                image_size=data.image_size)).inserted_primary_key[0])
            for epoch in range(2):
                conn.execute(insert(V1_EPOCHS).values(trial_id=tid, epoch=epoch, train_loss=0.5, val_loss=0.6,
                                                      train_dice=0.7, val_dice=0.6 + 0.1 * epoch, lr=1e-3,
                                                      seconds=1.5, images_per_s=40.0))
            if state != "complete":
                continue
            preds = np.stack([_damaged(rng, t, (k + number) % 5) if (k + number) % 5 < 4 else t
                              for k, t in enumerate(truths)])
            logits = (preds.astype(np.float32) * 2 - 1)[:, None] * 5
            import torch
            scores = image_scores(torch.from_numpy(logits), torch.from_numpy(truths[:, None].astype(np.float32)),
                                  torch.from_numpy(data.ignore[test][:, None]))
            conn.execute(insert(V1_IMAGE_RESULTS), [
                dict(trial_id=tid, image_id=i, dice=float(d), iou=float(j), dice_no_border=float(b))
                for i, d, j, b in zip(out.image_ids, scores.dice.tolist(), scores.iou.tolist(),
                                      scores.dice_no_border.tolist())])
            conn.execute(insert(V1_MASKS), [dict(trial_id=tid, image_id=i, png=encode_mask(m))
                                            for i, m in zip(out.image_ids, preds)])
            conn.execute(V1_TRIALS.update().where(V1_TRIALS.c.id == tid).values(test_dice=float(scores.dice.mean())))
            out.trial_ids.append(tid)
            out.preds[tid] = preds
    engine.dispose()
    return out


def dump_v1(url: str) -> dict[str, list[tuple]]:
    """Every row of every v1 table, v1 columns only, in key order: to compare before and after an upgrade."""
    return dump_tables(url, ((t.name, t.c.keys()) for t in V1_TABLES if t is not V1_SCHEMA_INFO))
