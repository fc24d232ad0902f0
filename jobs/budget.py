"""A per-study trial budget shared by every worker on the same database.

Workers only ever ask Optuna for trials; Optuna numbers trials atomically in the database,
so a trial can tell whether it fits the budget by counting the trials before it. A trial
that does not fit ends at once as a failed 'surplus' trial, which nothing counts or records.
A trial whose worker went away is retried (jobs/lifecycle.py); the retry takes the
original's place in the budget.
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


def retry_of(t: FrozenTrial) -> int | None:
    """The trial this one runs again, if it is a retry (Optuna's retry callback records the chain)."""
    history = t.system_attrs.get("retry_history")
    return history[-1] if history else None


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _job(t: FrozenTrial) -> tuple | None:
    """What a queued trial was queued to do; None for a new configuration, which the budget governs."""
    if retry_of(t) is not None:
        return ("retry", retry_of(t))
    if START in t.user_attrs or t.user_attrs.get(BASELINE):  # studies from before the recipes mark the baseline only
        return ("start", int(t.user_attrs.get(START, 0)))
    if not is_new_config(t):
        return (t.user_attrs.get(RESUME_OF), t.user_attrs.get(RESUME_AT), t.user_attrs.get(REFIT_OF))
    return None


def duplicates(trials: list[FrozenTrial]) -> set[int]:
    """Trials queued for a job an earlier trial was queued for: a starting point, a retry, a promotion
    or the refit, which two workers may queue at the same moment. Only the first of each runs."""
    first: set[tuple] = set()
    out: set[int] = set()
    for t in sorted(trials, key=lambda t: t.number):
        job = _job(t)
        if job is not None:
            if job in first:
                out.add(t.number)
            first.add(job)
    return out


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The configurations that use up the --trials budget: finished, running or queued, minus
    replaced, surplus and duplicate ones (continuations and refits train configurations already counted)."""
    retried = retried_numbers(trials)
    skip = duplicates(trials)
    return [t for t in trials if is_new_config(t) and not t.user_attrs.get(SURPLUS) and t.number not in skip
            and not (t.state == TrialState.FAIL and t.number in retried)]


def remaining(trials: list[FrozenTrial], budget: int) -> int:
    """How many more trials may be started (not counting queued ones, which are already counted)."""
    return max(0, budget - len(counted(trials)))


def _place(t: FrozenTrial) -> int:
    """A trial's place in the budget: a retry takes the place of the trial it first ran again."""
    return t.system_attrs.get("failed_trial", t.number)


def fits(trial_number: int, trials: list[FrozenTrial], budget: int) -> bool:
    """Whether the trial numbered `trial_number` should run: not a duplicate, and a new configuration
    (or its retry) only inside the budget, counting the configurations in earlier places."""
    if trial_number in duplicates(trials):
        return False
    mine = next(t for t in trials if t.number == trial_number)
    if not is_new_config(mine):
        return True
    return len([t for t in counted(trials) if _place(t) < _place(mine)]) < budget
