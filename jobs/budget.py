"""A per-study trial budget shared by every worker on the same database.

Workers only ever ask Optuna for trials; Optuna numbers trials atomically in the database,
so a trial can tell whether it fits the budget by counting the trials before it. A trial
that does not fit ends at once as a failed 'surplus' trial, which nothing counts or records.
Trials a dead worker left behind are failed by Optuna's heartbeat and retried; the retry
takes the original's place in the budget.
"""
from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

SURPLUS = "surplus"      # user attribute marking a trial that did not fit the budget
BASELINE = "baseline"    # user attribute marking the enqueued reports' configuration
START = "start"          # user attribute: this trial is the study's starting point number START (0: the baseline)
RESUME_OF = "resume_of"  # user attribute: this trial continues the paused configuration of that trial number
RESUME_AT = "resume_at"  # user attribute: the epochs that configuration had done when it paused
REFIT_OF = "refit_of"    # user attribute: this trial is the refit of that trial number's configuration


def is_new_config(t: FrozenTrial) -> bool:
    """A trial that samples a configuration (not a promotion's continuation, not the refit)."""
    return RESUME_OF not in t.user_attrs and REFIT_OF not in t.user_attrs


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _start_of(t: FrozenTrial) -> int | None:
    if START in t.user_attrs:
        return int(t.user_attrs[START])
    return 0 if t.user_attrs.get(BASELINE) else None


def _duplicate_starts(trials: list[FrozenTrial]) -> set[int]:
    """Starting points enqueued twice by workers that created the study at the same moment."""
    seen: set[int] = set()
    duplicates = set()
    for t in sorted(trials, key=lambda t: t.number):
        start = _start_of(t)
        if start is None or "failed_trial" in t.system_attrs:
            continue
        if start in seen:
            duplicates.add(t.number)
        seen.add(start)
    return duplicates


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The configurations that use up the --trials budget: finished, running or queued, minus
    replaced, surplus and duplicate ones (continuations and refits train configurations already counted)."""
    retried = retried_numbers(trials)
    duplicates = _duplicate_starts(trials)
    out = []
    for t in trials:
        if t.number in duplicates or t.user_attrs.get(SURPLUS) or not is_new_config(t):
            continue
        if t.state == TrialState.FAIL and t.number in retried:
            continue
        out.append(t)
    return out


def remaining(trials: list[FrozenTrial], budget: int) -> int:
    """How many more trials may be started (not counting queued ones, which are already counted)."""
    return max(0, budget - len(counted(trials)))


def fits(trial_number: int, trials: list[FrozenTrial], budget: int) -> bool:
    """Whether the trial numbered `trial_number` is inside the budget."""
    mine = next((t for t in trials if t.number == trial_number), None)
    if mine is not None and "failed_trial" in mine.system_attrs:
        return True  # a retry replaces a counted trial
    if trial_number in _duplicate_starts(trials):
        return False
    before = [t for t in counted(trials) if t.number < trial_number]
    return len(before) < budget


def _job(t: FrozenTrial) -> tuple:
    return (t.user_attrs.get(RESUME_OF), t.user_attrs.get(RESUME_AT), t.user_attrs.get(REFIT_OF))


def duplicate_of(trial: FrozenTrial, trials: list[FrozenTrial]) -> bool:
    """Whether an earlier trial already does what this continuation or refit was queued for
    (two workers may queue the same one at the same moment). A retry is never a duplicate."""
    if is_new_config(trial) or "failed_trial" in trial.system_attrs:
        return False
    retried = retried_numbers(trials)
    return any(t.number < trial.number and _job(t) == _job(trial) and not t.user_attrs.get(SURPLUS)
               and not (t.state == TrialState.FAIL and t.number in retried) for t in trials)


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Counted trials that are done (complete, pruned or failed for good)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in counted(trials) if t.state in done]
