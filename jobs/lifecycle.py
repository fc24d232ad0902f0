"""A sweep trial's lifecycle: the results store decides, Optuna's journal follows.

A trial lives in the store's `trials` row, written by the worker that runs it and refreshed by a
heartbeat, and in Optuna's journal, which the sampler, the pruners and the budget read. Optuna
cannot own the lifecycle here: its relational storage, the one with heartbeats, has a table named
`trials`, the store's public table in the same database, and its journal storage has no
heartbeat. So the store is the authority on whether a trial is alive and how it ended, and
`sync` derives Optuna's state from it:

* A trial's last sign of life is its row's heartbeat while it runs, its closing write when done,
  or, when its worker died after Optuna created it but before writing the row, Optuna's start.
* A RUNNING trial silent for longer than the stale limit has lost its worker. Its row is closed
  as failed (Store.claim_stale) or, when missing, written as failed (Store.record_lost). Both
  writes are conditional (an update of a row still running; an insert under the unique
  (study, number)), so exactly one worker records each loss, and a worker that was only slow
  finds its trial taken at its next write. Then Optuna is told the row's state, which also
  covers a worker that died between closing its row and telling Optuna.
* A trial failed by a lost worker or Ctrl-C (row error DEAD_WORKER or INTERRUPTED, or no row: it
  never trained) is queued again with its parameters (RetryHeartbeatStaleTrialCallback), at most
  MAX_RETRIES times in a chain of losses. Two workers queueing the same retry at once leave a
  duplicate, dropped when it is popped (budget.duplicates).

Each step reads the state afresh, so a worker that dies inside `sync` leaves work the next call
finishes. Because a missing row is recorded safely whatever the timing, the row need not be
written before anything slow, nor in the journal append's transaction (Optuna numbers the trial
before the objective has sampled the parameters the row records).
"""
from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from core.store.db import Store
from core.store.schema import utc_now
from core.training.trial import INTERRUPTED
from jobs import budget

DEAD_WORKER = "worker stopped during the trial (heartbeat lost); retried"
RUN_AGAIN = (DEAD_WORKER, INTERRUPTED)  # a failed row with one of these errors is retried
MAX_RETRIES = 3  # a lost trial is run again at most this many times in a chain of losses


def _last_sign(t: FrozenTrial, row: dict[str, Any] | None) -> dt.datetime:
    """When the trial last showed its worker alive, in the store's naive UTC (Optuna's times are local)."""
    if row is None:
        return t.datetime_start.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return row["finished_at"] or row["heartbeat_at"] or row["started_at"]


def _rows(store: Store, study: str) -> dict[int, dict[str, Any]]:
    return {r["number"]: r for r in store.study_trials(study)}


def last_signs(study: optuna.Study, store: Store) -> dict[int, dt.datetime]:
    """Each RUNNING trial's last sign of life: a live worker keeps moving it."""
    rows = _rows(store, study.study_name)
    return {t.number: _last_sign(t, rows.get(t.number))
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def _tell(study: optuna.Study, number: int, state: str, val_dice: float | None) -> None:
    """Tell Optuna how the store says the trial ended (a no-op when another worker told it first)."""
    if state == "complete" and val_dice is not None:
        told = dict(values=float(val_dice), state=TrialState.COMPLETE)
    else:
        told = dict(state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)
    with contextlib.suppress(UpdateFinishedTrialError):
        study.tell(number, **told, skip_if_finished=True)


def sync(study: optuna.Study, store: Store, stale_after_s: float, *, dataset: str,
         image_size: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Make Optuna's view of the study agree with the store, and queue lost trials again.

    Returns the trials whose loss this call recorded, and those whose closed row it told Optuna of
    (their worker stopped in between), with the row's state. `dataset` and `image_size` go into the
    row of a trial lost before it wrote one.
    """
    name = study.study_name
    sweep, arch = name.rsplit("/", 1)
    lost = [row["number"] for row in store.claim_stale(name, stale_after_s, DEAD_WORKER)]
    told: list[tuple[int, str]] = []
    cutoff = utc_now() - dt.timedelta(seconds=stale_after_s)
    rows = _rows(store, name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        row = rows.get(t.number)
        if t.number not in lost and _last_sign(t, row) > cutoff:
            continue  # alive, or closed a moment ago by a worker about to tell Optuna
        if row is None:
            if not t.user_attrs.get(budget.SURPLUS):  # a surplus trial never has a row
                if not store.record_lost(sweep=sweep, study=name, arch=arch, number=t.number,
                                         started_at=_last_sign(t, None), dataset=dataset, image_size=image_size,
                                         error=DEAD_WORKER):
                    continue  # its worker wrote the row after all, or another worker recorded the loss
                lost.append(t.number)
            _tell(study, t.number, "failed", None)
        elif row["state"] != "running":
            if t.number not in lost:
                told.append((t.number, row["state"]))
            _tell(study, t.number, row["state"], row["val_dice"])

    trials = study.get_trials(deepcopy=False)
    rows = _rows(store, name)
    retried = budget.retried_numbers(trials)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    for t in trials:
        row = rows.get(t.number)
        if t.state == TrialState.FAIL and t.number not in retried and not t.user_attrs.get(budget.SURPLUS) \
                and (row is None or row["state"] == "failed" and row["error"] in RUN_AGAIN):
            retry(study, t)
    return lost, told
