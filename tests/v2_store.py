"""A genuine schema-v2 results store, for the upgrade tests: the v2 DDL frozen here as it shipped
(core/store/db.py at commit 8f042dd: v1's tables, image_results with the per-image diagnostics and
ix_image_results_trial_mode), filled the way v2's Store wrote it, with real masks and diagnostics.

Never import core.store.db's tables here: they are v3 now and would not write a v2 store.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import (
    Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, insert, select,
)

from core.data.dataset import PreparedDataset
from core.metrics import failure_modes, image_scores, mask_diagnostics
from core.store.db import encode_mask, make_engine
from tests.v1_store import V1_DATASETS, V1_EPOCHS, V1_IMAGES, V1_MASKS, V1_SCHEMA_INFO, V1_TRIALS, _damaged
from tests.store_renames import NEW_VALUE, dump_tables

V2_VALUE = {new: old for old, new in NEW_VALUE.items()}  # v2 wrote 'missed pet'


V2 = MetaData()
V2_SCHEMA_INFO, V2_DATASETS, V2_TRIALS, V2_EPOCHS, V2_IMAGES, V2_MASKS = (
    t.to_metadata(V2) for t in (V1_SCHEMA_INFO, V1_DATASETS, V1_TRIALS, V1_EPOCHS, V1_IMAGES, V1_MASKS))
V2_IMAGE_RESULTS = Table(
    "image_results", V2,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("dice", Float, nullable=False), Column("iou", Float, nullable=False),
    Column("dice_no_border", Float, nullable=False),
    Column("fp_area", Float), Column("fn_area", Float), Column("precision", Float), Column("recall", Float),
    Column("boundary_iou", Float), Column("hd95", Float), Column("fp_blobs", Integer), Column("pet_missed", Boolean),
    Column("entropy", Float), Column("failure_mode", String(24)),
    Index("ix_image_results_trial_dice", "trial_id", "dice"),
    Index("ix_image_results_trial_mode", "trial_id", "failure_mode"),
    Index("ix_image_results_image", "image_id"))
V2_TABLES = (V2_SCHEMA_INFO, V2_DATASETS, V2_TRIALS, V2_EPOCHS, V2_IMAGES, V2_IMAGE_RESULTS, V2_MASKS)
DIAGNOSTIC_COLUMNS = ("fp_area", "fn_area", "precision", "recall", "boundary_iou", "hd95", "fp_blobs", "pet_missed",
                      "entropy")
# (sweep, arch, number, state, how many of the test images it evaluated, with diagnostics)
TRIALS = (("old", "unet", 0, "complete", None, True), ("old", "unet", 1, "complete", None, True),
          ("old", "unet", 2, "pruned", None, True), ("old", "resnet34_unet", 0, "complete", None, True),
          ("old", "resnet34_unet", 1, "complete", None, False),  # written without diagnostics: 'not computed'
          ("other", "unet", 0, "complete", 20, True), ("other", "unet", 1, "failed", None, True))


@dataclass
class V2Store:
    url: str
    trial_ids: list[int] = field(default_factory=list)           # complete trials, in order
    image_ids: list[int] = field(default_factory=list)           # test image ids, test order


def build_v2_store(url: str, data: PreparedDataset, seed: int = 0) -> V2Store:
    """Write a v2 store over `data`: two sweeps of complete, pruned and failed trials (results, masks and
    diagnostics as v2 wrote them; one trial without diagnostics), epochs, v2's version row."""
    engine = make_engine(url)
    V2.create_all(engine)
    rng = np.random.default_rng(seed)
    now = dt.datetime(2026, 11, 20, 12, 0, 0)
    test = data.indices("test")
    truths = data.masks[test].astype(bool)
    out = V2Store(url=url)
    with engine.begin() as conn:
        conn.execute(insert(V2_SCHEMA_INFO).values(key="schema_version", value="2"))
        conn.execute(insert(V2_DATASETS).values(name=data.name, source=data.source, root=str(Path(data.root).resolve()),
                                                created_at=now))
        conn.execute(insert(V2_IMAGES), [dict(dataset=data.name, name=i.name, split=i.split, breed=i.breed,
                                              species=i.species, width=int(i.width), height=int(i.height),
                                              brightness=float(i.brightness), fg_fraction=float(i.fg_fraction))
                                         for i in data.infos])
        ids = dict(conn.execute(select(V2_IMAGES.c.name, V2_IMAGES.c.id)).all())
        out.image_ids = [int(ids[data.infos[i].name]) for i in test]
        for k, (sweep, arch, number, state, n_images, with_diag) in enumerate(TRIALS):
            tid = int(conn.execute(insert(V2_TRIALS).values(
                sweep=sweep, study=f"{sweep}/{arch}", arch=arch, number=number, state=state,
                params={"lr": 1e-3 * (number + 1), "dice_weight": 0.7}, val_dice=0.8 - 0.05 * k, epochs_run=2,
                started_at=now, finished_at=now, heartbeat_at=now, device="cpu", dataset=data.name,
                image_size=data.image_size, error="diverged" if state == "failed" else None)).inserted_primary_key[0])
            conn.execute(insert(V2_EPOCHS), [dict(trial_id=tid, epoch=e, train_loss=0.5, val_loss=0.6, train_dice=0.7,
                                                  val_dice=0.6 + 0.1 * e, lr=1e-3, seconds=1.5, images_per_s=40.0)
                                             for e in range(2)])
            if state != "complete":
                continue
            m = n_images or len(test)
            preds = np.stack([_damaged(rng, t, (j + k) % 5) if (j + k) % 5 < 4 else t
                              for j, t in enumerate(truths[:m])])
            logits = torch.from_numpy((preds.astype(np.float32) * 2 - 1)[:, None] * 5)
            scores = image_scores(logits, torch.from_numpy(truths[:m, None].astype(np.float32)),
                                  torch.from_numpy(data.ignore[test][:m, None]))
            dice = scores.dice.numpy().astype(np.float64)
            rows = [dict(trial_id=tid, image_id=i, dice=float(d), iou=float(j), dice_no_border=float(b))
                    for i, d, j, b in zip(out.image_ids[:m], dice.tolist(), scores.iou.tolist(),
                                          scores.dice_no_border.tolist())]
            if with_diag:
                diag = mask_diagnostics(preds, truths[:m])
                entropy = rng.uniform(0.05, 0.9, m)
                modes = failure_modes(dice, diag.precision, diag.recall, diag.boundary_iou)
                for j, row in enumerate(rows):
                    row.update({name: (int(getattr(diag, name)[j]) if name == "fp_blobs" else
                                       bool(diag.object_missed[j]) if name == "pet_missed" else
                                       float(entropy[j]) if name == "entropy" else float(getattr(diag, name)[j]))
                                for name in DIAGNOSTIC_COLUMNS}, failure_mode=V2_VALUE.get(str(modes[j]), str(modes[j])))
            else:
                for row in rows:
                    row.update({name: None for name in DIAGNOSTIC_COLUMNS}, failure_mode="not computed")
            conn.execute(insert(V2_IMAGE_RESULTS), rows)
            conn.execute(insert(V2_MASKS), [dict(trial_id=tid, image_id=i, png=encode_mask(p))
                                            for i, p in zip(out.image_ids[:m], preds)])
            conn.execute(V2_TRIALS.update().where(V2_TRIALS.c.id == tid).values(test_dice=float(dice.mean())))
            out.trial_ids.append(tid)
    engine.dispose()
    return out


def dump_v2(url: str) -> dict[str, list[tuple]]:
    """Every row of every v2 table, v2 columns only, in key order: to compare before and after an upgrade."""
    return dump_tables(url, ((t.name, t.c.keys()) for t in V2_TABLES if t is not V2_SCHEMA_INFO))
