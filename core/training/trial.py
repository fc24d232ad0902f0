"""One recorded trial: train, evaluate every test image, and write it all to the store.

`jobs.train` and `jobs.sweep` both run trials through `run_trial`, so a single run and a
sweep trial are measured and recorded the same way.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import torch

from core.data.dataset import PreparedDataset
from core.models.pretrained import file_sha256, weights_source
from core.store.db import ImageResults, Store
from core.training.abandoned import close_abandoned_runs
from core.training.loop import (
    EpochStats,
    TrainConfig,
    fit,
    predict,
    save_checkpoint,
    select_device,
    use_channels_last,
)


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment, else the default (with a warning if malformed)."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        print(f"warning: ignoring {name}={text!r} (not a positive number of seconds); using {default:g}",
              file=sys.stderr)
        return default
    return value


# A running trial's heartbeat period, and how long a trial must be silent before another worker
# takes it for dead (fails it and queues it again). Tests and impatient users shorten both with
# SEGSWEEP_HEARTBEAT_S / SEGSWEEP_STALE_AFTER_S; the stale limit is kept at >= 3 heartbeats so a
# live but busy worker is never taken for dead.
HEARTBEAT_S = _env_seconds("SEGSWEEP_HEARTBEAT_S", 5.0)
STALE_AFTER_S = max(_env_seconds("SEGSWEEP_STALE_AFTER_S", 20.0), 3 * HEARTBEAT_S)


INTERRUPTED = "interrupted (Ctrl-C)"  # a failed trial's error when the user stopped it; a sweep runs it again


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

    def __init__(self, store: Store, trial_id: int, interval_s: float | None = None):
        # HEARTBEAT_S read now, not bound at import: a test (or caller) that changes it takes effect
        self.store, self.trial_id = store, trial_id
        self.interval_s = HEARTBEAT_S if interval_s is None else interval_s
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
    """A job's first writes: the dataset and its images (image name -> id), and runs that a
    killed job left running closed as failed (core/training/abandoned.py)."""
    close_abandoned_runs(store, STALE_AFTER_S)
    return store.register_dataset(data.name, data.source, data.root, data.infos, layout=data.layout)


def run_trial(store: Store, cfg: TrainConfig, data: PreparedDataset, image_ids: dict[str, int], *, sweep: str,
              study: str, number: int, on_epoch: Callable[[EpochStats], None] | None = None,
              checkpoint_path: Path | None = None, progress: bool = True,
              log: Callable[[str], None] = print, extra_params: dict[str, Any] | None = None,
              pause_to: Path | None = None, resume_from: Path | None = None, init_from: Path | None = None,
              continues: tuple[int, int] | None = None) -> TrialOutcome:
    """Train `cfg`, record each epoch, then evaluate the kept weights (`cfg.keep`) on every test image.

    An `on_epoch` that raises optuna.TrialPruned ends the trial as 'pruned' (curves kept) and
    re-raises (a StopTraining one also leaves a resumable state at `pause_to`); a non-finite
    loss ends it as 'failed' with the reason; any other exception ends it as 'failed' with the
    message and re-raises. `resume_from` continues a paused state, `init_from` starts afresh from
    a checkpoint's or paused state's weights (fit's warm restart); `continues` is (store id of
    the trial it paused in, epochs it had done): that curve becomes this trial's first epochs.
    `extra_params` are recorded beside the config's own (e.g. which trial a refit repeats).
    """
    started = time.perf_counter()
    device = str(select_device(cfg.device))
    encoder = weights_source(cfg.arch, cfg.encoder_weights)  # before the trial exists: a bad flag is no trial
    trial_id = store.start_trial(sweep=sweep, study=study, arch=cfg.arch, number=number,
                                 params={**cfg.params(), **(extra_params or {})},
                                 device=device, dataset=data.name, image_size=data.image_size,
                                 encoder_weights=encoder.source, encoder_sha256=encoder.sha256)
    best = {"val": None, "epochs": 0}
    if continues is not None:
        store.copy_epochs(*continues, to_trial=trial_id)

    def record(stats: EpochStats) -> None:
        store.record_epoch(trial_id, stats.epoch, train_loss=stats.train_loss, val_loss=stats.val_loss,
                           train_dice=stats.train_dice, val_dice=stats.val_dice, lr=stats.lr,
                           seconds=stats.seconds, images_per_s=stats.images_per_s)
        best["epochs"] = stats.epoch + 1
        if best["val"] is None or stats.val_dice > best["val"]:
            best["val"] = stats.val_dice
        if on_epoch is not None:
            on_epoch(stats)

    closed = False  # the closing write went through: nothing may overwrite it

    def evaluate(result) -> TrialOutcome:
        nonlocal closed
        if result.diverged:
            store.finish_trial(trial_id, state="failed", val_dice=best["val"], error=result.diverged)
            closed = True
            return TrialOutcome(trial_id, "failed", best["val"], None, result.epochs_run,
                                time.perf_counter() - started, error=result.diverged)
        test_idx = data.indices("test")
        pred = predict(result.model, data, test_idx, cfg, diagnostics=True)
        ids = np.array([image_ids[data.infos[i].name] for i in test_idx], dtype=np.int64)
        # the truth as scored, before the close: closing rescores the images' labels against it (core.labels), and
        # the images as scored, for the score's image evidence
        store.record_truths(ids, data.image_size, data.masks[test_idx], data.images[test_idx])
        checkpoint = sha256 = None
        if checkpoint_path is not None:
            checkpoint, sha256 = _save_checkpoint_or_warn(checkpoint_path, result, cfg, trial_id, log)
        test_dice = store.finish_trial(
            trial_id, state="complete", val_dice=result.val_dice, checkpoint=checkpoint, checkpoint_sha256=sha256,
            results=ImageResults(ids, pred.dice, pred.iou, pred.dice_no_border, masks=pred.masks,
                                 diagnostics=pred.diagnostics))
        closed = True
        return TrialOutcome(trial_id, "complete", result.val_dice, test_dice, result.epochs_run,
                            time.perf_counter() - started, checkpoint=checkpoint, dice=pred.dice)

    try:
        # The heartbeat covers evaluation and the closing write too: on a large test set they take
        # long enough that a silent trial would be taken for a dead worker's and retried.
        with Heartbeat(store, trial_id):
            result = fit(cfg, data, on_epoch=record, progress=progress, pause_to=pause_to, resume_from=resume_from,
                         init_from=init_from)
            return evaluate(result)
    except optuna.TrialPruned:
        if not closed:
            store.finish_trial(trial_id, state="pruned", val_dice=best["val"])
        raise
    except BaseException as exc:
        if closed:
            raise
        if isinstance(exc, KeyboardInterrupt):
            reason = INTERRUPTED
        else:
            reason = f"{type(exc).__name__}: {exc}".strip()
            if not isinstance(exc, SystemExit):
                reason += "\n" + traceback.format_exc(limit=5)
        try:
            store.finish_trial(trial_id, state="failed", val_dice=best["val"], error=reason)
        except Exception:  # the store itself failed (that may be `exc`): report the first error
            pass
        raise


AMP_NAMES = {"bfloat16": "bf16", "float16": "fp16", "off": "off"}  # FitResult.amp -> TrainConfig.amp


def _save_checkpoint_or_warn(path: Path, result, cfg: TrainConfig, trial_id: int,
                             log: Callable[[str], None]) -> tuple[str | None, str | None]:
    """Save the kept weights and return (path, the file's sha256); a full or read-only disk costs the
    checkpoint, not the results. The precision and memory layout the trial was evaluated in ride along,
    so jobs.predict on the same kind of device computes what the evaluation did."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, result.model, cfg, val_dice=result.val_dice, trial_id=trial_id, device=result.device,
                        amp=AMP_NAMES.get(result.amp, "off"),
                        channels_last=use_channels_last(cfg, torch.device(result.device)))
        return str(path), file_sha256(path)
    except Exception as exc:
        # torch.save reports a failed write (disk full, file too large) as RuntimeError, not OSError
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
            reason = f"{exc.filename} is a file, not a folder"
        elif isinstance(exc, OSError):
            reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        else:
            reason = f"write failed, disk full or not writable? ({str(exc).strip().splitlines()[0][:120]})"
        with contextlib.suppress(OSError):  # never leave a half-written file filling the disk
            Path(f"{path}.tmp").unlink(missing_ok=True)
        log(f"warning: checkpoint not saved to {path}: {reason}; the trial's results are kept")
        return None, None
