"""`run_trial` without training, for tests of what a sweep decides rather than how it trains.

A configuration's validation curve is given by its learning rate; each epoch is reported and
recorded as run_trial would, checkpoints and paused states are written as small files, and the
store row is closed with a result for every test image. A sweep with it runs in about a second.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import optuna

from core.store.db import ImageResults, Store
from core.training.loop import EpochStats, StopTraining
from core.training.trial import TrialOutcome

Curve = Callable[[float, int], float]  # (lr, epoch) -> validation dice


class FakeTraining:
    """A drop-in for jobs.sweep.run_trial; `calls` keeps each call's keyword arguments."""

    def __init__(self, curve: Curve):
        self.curve, self.calls = curve, []

    def __call__(self, store: Store, cfg, data, image_ids: dict[str, int], *, sweep: str, study: str, number: int,
                 on_epoch=None, checkpoint_path: Path | None = None, extra_params=None, pause_to: Path | None = None,
                 resume_from: Path | None = None, init_from: Path | None = None, continues=None,
                 **_: object) -> TrialOutcome:
        self.calls.append(dict(number=number, init_from=init_from, init_found=init_from is not None
                               and init_from.is_file(), resume_from=resume_from, epochs=cfg.epochs))
        started = time.perf_counter()
        trial_id = store.start_trial(sweep=sweep, study=study, arch=cfg.arch, number=number,
                                     params={**cfg.params(), **(extra_params or {})}, device="cpu",
                                     dataset=data.name, image_size=data.image_size)
        first = 0
        if continues is not None:
            store.copy_epochs(*continues, to_trial=trial_id)
            first = continues[1]
        val = None
        for epoch in range(first, cfg.epochs):
            val = self.curve(cfg.lr, epoch)
            store.record_epoch(trial_id, epoch, train_loss=1 - val, val_loss=1 - val, train_dice=val, val_dice=val,
                               lr=cfg.lr, seconds=0.01, images_per_s=100.0)
            try:
                if on_epoch is not None:
                    on_epoch(EpochStats(epoch, 1 - val, 1 - val, val, val, cfg.lr, 0.01, 100.0))
            except optuna.TrialPruned as exc:
                if isinstance(exc, StopTraining) and pause_to is not None:
                    pause_to.parent.mkdir(parents=True, exist_ok=True)
                    pause_to.write_bytes(b"paused state")
                store.finish_trial(trial_id, state="pruned", val_dice=val)
                raise
        test = data.indices("test")
        ids = np.array([image_ids[data.infos[i].name] for i in test], dtype=np.int64)
        dice = np.full(len(ids), val)
        checkpoint = None
        if checkpoint_path is not None:
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint_path.write_bytes(b"weights")
            checkpoint = str(checkpoint_path)
        size = data.image_size
        test_dice = store.finish_trial(trial_id, state="complete", val_dice=val, checkpoint=checkpoint,
                                       results=ImageResults(ids, dice, dice, dice,
                                                            masks=np.zeros((len(ids), size, size), bool)))
        return TrialOutcome(trial_id, "complete", val, test_dice, cfg.epochs - first, time.perf_counter() - started,
                            checkpoint=checkpoint, dice=dice)
