"""A sweep's budget, per architecture and shared by every worker on the database: seconds of
training and sampled configurations, and the trial records both are counted from.

Seconds are counted in trial time across every worker; the search spends `1 - refit_share` of
them and the refit the rest. Configurations (--trials) are counted from Optuna's trials: Optuna
numbers trials atomically in the database, so a trial can tell whether it fits by counting the
trials before it. A trial that does not fit ends at once as a failed 'surplus' trial, which
nothing counts or records. A trial whose worker went away is retried (jobs/lifecycle.py); the
retry takes the original's place.

Every function here takes trials shaped like Optuna's FrozenTrial: FrozenTrial itself, or the
plain `Trial` the sweep's decisions (jobs/schedule.py) and their tests work on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from optuna.trial import FrozenTrial, TrialState

from core.store.selection import REFIT_OF  # one name: a refit's Optuna user attribute and its store params key

SURPLUS = "surplus"      # user attribute marking a trial that did not fit the budget
BASELINE = "baseline"    # user attribute marking the enqueued reports' configuration
START = "start"          # user attribute: this trial is the study's starting point number START (0: the baseline)
RESUME_OF = "resume_of"  # user attribute: this trial continues the paused configuration of that trial number
RESUME_AT = "resume_at"  # user attribute: the epochs that configuration had done when it paused
REFIT_EPOCHS = "refit_epochs"    # user attribute of a queued refit: how long it trains
REFIT_MEMBERS = "refit_members"  # user attribute of a queued refit: how many networks it trains (an ensemble)
REFIT_INIT = "refit_init"        # user attribute of a queued refit: [trial, file] whose weights it starts from


class TrialLike(Protocol):
    number: int
    state: TrialState
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]


@dataclass(frozen=True)
class Trial:
    """One Optuna trial as plain data: what the sweep's decisions read, nothing that does I/O."""

    number: int
    state: TrialState = TrialState.COMPLETE
    intermediate_values: dict[int, float] = field(default_factory=dict)  # epoch (0-based) -> validation dice
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None  # from its start to its end, once finished

    @classmethod
    def of(cls, t: FrozenTrial) -> "Trial":
        done = t.datetime_complete is not None and t.datetime_start is not None
        return cls(t.number, t.state, dict(t.intermediate_values), dict(t.user_attrs), dict(t.system_attrs),
                   dict(t.params), (t.datetime_complete - t.datetime_start).total_seconds() if done else None)


@dataclass(frozen=True)
class Budget:
    """What one architecture may spend: `seconds` of training, `refit_share` of them kept for the
    refit, and at most `configs` sampled configurations."""

    seconds: float
    refit_share: float = 0.5
    configs: int = 100

    @property
    def search_seconds(self) -> float:
        return self.seconds * (1 - self.refit_share)

    def search_left(self, spent: float) -> float:
        return self.search_seconds - spent

    def left(self, spent: float) -> float:
        return self.seconds - spent

    def refit_epochs(self, spent: float, seconds_per_epoch: float, at_least: int, evaluation_s: float = 0.0) -> int:
        """Epochs the refit trains: what is left of the budget, at the best configuration's
        measured pace, and never fewer than `at_least` (the refit must train longer than the
        search trial it repeats, even when the search overran its share)."""
        left = self.seconds - spent - evaluation_s
        fit_in = math.floor(left / seconds_per_epoch) if seconds_per_epoch > 0 else at_least
        return max(at_least, fit_in)

    def configs_left(self, trials: Sequence[TrialLike]) -> int:
        """How many more configurations may be sampled (queued ones are already counted)."""
        return remaining(trials, self.configs)


def is_new_config(t: TrialLike) -> bool:
    """A trial that samples a configuration (not a promotion's continuation, not the refit)."""
    return RESUME_OF not in t.user_attrs and REFIT_OF not in t.user_attrs


def retry_of(t: TrialLike) -> int | None:
    """The trial this one runs again, if it is a retry (Optuna's retry callback records the chain)."""
    history = t.system_attrs.get("retry_history")
    return history[-1] if history else None


def retried_numbers(trials: Sequence[TrialLike]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _job(t: TrialLike) -> tuple | None:
    """What a queued trial was queued to do; None for a new configuration, which the budget governs."""
    if retry_of(t) is not None:
        return ("retry", retry_of(t))
    if START in t.user_attrs or t.user_attrs.get(BASELINE):  # studies from before the recipes mark the baseline only
        return ("start", int(t.user_attrs.get(START, 0)))
    if not is_new_config(t):
        return (t.user_attrs.get(RESUME_OF), t.user_attrs.get(RESUME_AT), t.user_attrs.get(REFIT_OF))
    return None


def duplicates(trials: Sequence[TrialLike]) -> set[int]:
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


def counted(trials: Sequence[TrialLike]) -> list[TrialLike]:
    """The configurations that use up the --trials budget: finished, running or queued, minus
    replaced, surplus and duplicate ones (continuations and refits train configurations already counted)."""
    retried = retried_numbers(trials)
    skip = duplicates(trials)
    return [t for t in trials if is_new_config(t) and not t.user_attrs.get(SURPLUS) and t.number not in skip
            and not (t.state == TrialState.FAIL and t.number in retried)]


def remaining(trials: Sequence[TrialLike], budget: int) -> int:
    """How many more trials may be started (not counting queued ones, which are already counted)."""
    return max(0, budget - len(counted(trials)))


def _place(t: TrialLike) -> int:
    """A trial's place in the budget: a retry takes the place of the trial it first ran again."""
    return t.system_attrs.get("failed_trial", t.number)


def fits(trial_number: int, trials: Sequence[TrialLike], budget: int) -> bool:
    """Whether the trial numbered `trial_number` should run: not a duplicate, and a new configuration
    (or its retry) only inside the budget, counting the configurations in earlier places."""
    if trial_number in duplicates(trials):
        return False
    mine = next(t for t in trials if t.number == trial_number)
    if not is_new_config(mine):
        return True
    return len([t for t in counted(trials) if _place(t) < _place(mine)]) < budget
