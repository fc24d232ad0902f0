"""One recorded trial: train, evaluate every test image, and write it all to the store.

`jobs.train` and `jobs.sweep` both run trials through `run_trial`, so a single run and a
sweep trial are measured and recorded the same way.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import optuna

from core.dataset import PreparedDataset
from core.store import ImageResults, Store
from core.train import EpochStats, TrainConfig, fit, predict, save_checkpoint, select_device

HEARTBEAT_S = 5.0     # a running trial's heartbeat period
STALE_AFTER_S = 20.0  # a trial silent this long belongs to a dead worker


@dataclass
class TrialOutcome:
    trial_id: int
    state: str                  # complete | pruned | failed
    val_dice: float | None
    test_dice: float | None
    epochs_run: int
    seconds: float
    error: str | None = None
    checkpoint: str | None = None
    dice: np.ndarray | None = None  # per-image test dice, for summaries


class Heartbeat:
    """Refreshes a running trial's heartbeat from a background thread while training."""

    def __init__(self, store: Store, trial_id: int, interval_s: float = HEARTBEAT_S):
        self.store, self.trial_id, self.interval_s = store, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.beat(self.trial_id)
            except Exception:  # a busy database must not kill training; the next beat retries
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def register(store: Store, data: PreparedDataset) -> dict[str, int]:
    """Make sure the dataset and its images are in the store; image name -> id."""
    return store.register_dataset(data.name, data.source, data.root, data.infos)


def run_trial(store: Store, cfg: TrainConfig, data: PreparedDataset, image_ids: dict[str, int], *, sweep: str,
              study: str, number: int, on_epoch: Callable[[EpochStats], None] | None = None,
              checkpoint_path: Path | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> TrialOutcome:
    """Train `cfg`, record each epoch, then evaluate the best weights on every test image.

    An `on_epoch` that raises optuna.TrialPruned ends the trial as 'pruned' (curves kept) and
    re-raises; a non-finite loss ends it as 'failed' with the reason; any other exception
    ends it as 'failed' with the message and re-raises.
    """
    started = time.perf_counter()
    device = str(select_device(cfg.device))
    trial_id = store.start_trial(sweep=sweep, study=study, arch=cfg.arch, number=number, params=cfg.params(),
                                 device=device, dataset=data.name, image_size=data.image_size)
    best = {"val": None, "epochs": 0}

    def record(stats: EpochStats) -> None:
        store.record_epoch(trial_id, stats.epoch, train_loss=stats.train_loss, val_loss=stats.val_loss,
                           train_dice=stats.train_dice, val_dice=stats.val_dice, lr=stats.lr,
                           seconds=stats.seconds, images_per_s=stats.images_per_s)
        best["epochs"] = stats.epoch + 1
        if best["val"] is None or stats.val_dice > best["val"]:
            best["val"] = stats.val_dice
        if on_epoch is not None:
            on_epoch(stats)

    try:
        with Heartbeat(store, trial_id):
            result = fit(cfg, data, on_epoch=record, progress=progress)
    except optuna.TrialPruned:
        store.finish_trial(trial_id, state="pruned", val_dice=best["val"])
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}".strip()
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            reason += "\n" + traceback.format_exc(limit=5)
        store.finish_trial(trial_id, state="failed", val_dice=best["val"], error=reason)
        raise
    if result.diverged:
        store.finish_trial(trial_id, state="failed", val_dice=best["val"], error=result.diverged)
        return TrialOutcome(trial_id, "failed", best["val"], None, result.epochs_run,
                            time.perf_counter() - started, error=result.diverged)

    test_idx = data.indices("test")
    pred = predict(result.model, data, test_idx, cfg)
    ids = np.array([image_ids[data.infos[i].name] for i in test_idx], dtype=np.int64)
    checkpoint = None
    if checkpoint_path is not None:
        try:
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(checkpoint_path, result.model, cfg, val_dice=result.best_val_dice, trial_id=trial_id)
            checkpoint = str(checkpoint_path)
        except OSError as exc:  # a full or read-only disk costs the checkpoint, not the results
            log(f"warning: checkpoint not saved to {checkpoint_path}: {exc.strerror or exc}")
    test_dice = store.finish_trial(
        trial_id, state="complete", val_dice=result.best_val_dice, checkpoint=checkpoint,
        results=ImageResults(ids, pred.dice, pred.iou, pred.dice_no_border, masks=pred.masks))
    return TrialOutcome(trial_id, "complete", result.best_val_dice, test_dice, result.epochs_run,
                        time.perf_counter() - started, checkpoint=checkpoint, dice=pred.dice)
