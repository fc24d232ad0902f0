"""Runs left 'running' by a job that was killed, closed as failed by the next job on the store.

A sweep's workers claim the dead trials of their own studies and queue them again
(jobs/lifecycle.py). A `jobs.train` run has no sweep behind it: if its
process is killed, nothing else would ever close its row, and the dashboard would show it
running for ever. So every job, on opening the store, closes such rows as failed once their
heartbeat is older than the stale limit, and leaves the rows of Optuna studies to the sweep.
"""
from __future__ import annotations

from typing import Any, Callable

from core.store.db import Store
from core.store.optuna_storage import optuna_storage, study_names


def abandoned_error(grace_s: float) -> str:
    """The `error` recorded on a run closed here."""
    return (f"its job stopped mid-run (no heartbeat for {grace_s:g} s, e.g. killed); "
            f"closed as failed by the next job on this database")


def close_abandoned_runs(store: Store, grace_s: float,
                         log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Fail the silent running trials of studies that no sweep owns; returns the rows closed.

    Curves recorded before the stop are kept; a trial has per-image results only once complete,
    so a closed run has none. Each row is closed by exactly one job (Store.claim_stale).
    """
    studies = store.stale_studies(grace_s)
    if not studies:
        return []
    swept = set(study_names(optuna_storage(store.url, read_only=True, engine=store.engine)))
    closed: list[dict[str, Any]] = []
    for study in studies:
        if study in swept:  # a sweep's: its workers retry it
            continue
        for row in store.claim_stale(study, grace_s, abandoned_error(grace_s)):
            closed.append(row)
            if log is not None:
                log(f"closed run {study} #{row['number']} (trial id {row['id']}) as failed: its job stopped "
                    f"mid-run (no heartbeat for {grace_s:g} s)")
    return closed
