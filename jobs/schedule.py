"""Where a sweep's seconds go: successive halving over epochs, a time budget, and the refit.

A sweep is judged by the model it hands back per second of compute. Training every trial for
the same fixed epochs spreads the budget over many barely trained models, so:

* Successive halving (asynchronous, ASHA-style), epochs as the resource. A new configuration
  trains to the first rung (`Ladder.rungs[0]` epochs); at each rung it goes on only while it is
  in the top 1/eta of the configurations that have reached that rung, else it pauses with a
  resumable state. A paused configuration that more arrivals later put in the top 1/eta is
  promoted: it continues from where it paused. Optuna's SuccessiveHalvingPruner decides at the
  rung alone and never resumes: with a handful of trials its first trial wins every rung by
  default (there is nothing to compare with), which here would hand most of the budget to the
  reports' baseline. So the rule below requires `eta` arrivals before anything is promoted.
* A time budget per architecture, counted in trial seconds across every worker on the
  database, so several workers share it. The search spends `1 - refit_share` of it; the rest
  trains the best configuration (by validation dice, never test) once more, longer: the refit.

Everything here is pure: it takes what the study holds and returns a decision, so the rules
are tested without training anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ladder:
    """The epochs at which configurations are compared; the last rung is a search trial's full length."""

    rungs: tuple[int, ...]
    eta: int = 3

    @classmethod
    def geometric(cls, first: int, last: int, eta: int = 3) -> "Ladder":
        """first, first*eta, ... up to last (always included)."""
        if not 1 <= first <= last:
            raise ValueError(f"need 1 <= first rung <= last rung, got {first} and {last}")
        rungs = [first]
        while rungs[-1] * eta < last:
            rungs.append(rungs[-1] * eta)
        if rungs[-1] != last:
            rungs.append(last)
        return cls(tuple(rungs), eta)

    @property
    def epochs(self) -> int:
        return self.rungs[-1]

    def rung_at(self, epochs_done: int) -> int | None:
        """The index of the rung that ends after `epochs_done` epochs, if one does."""
        return self.rungs.index(epochs_done) if epochs_done in self.rungs else None


@dataclass
class Config:
    """One sampled configuration, across the trials that trained it (the first and its continuations)."""

    number: int                                           # its first trial's number: the config's name
    values: dict[int, float] = field(default_factory=dict)  # epoch (0-based) -> validation dice
    running: bool = False                                 # a trial is training it now
    paused_with_state: bool = False                       # stopped at a rung, resumable state on disk

    @property
    def epochs_done(self) -> int:
        return max(self.values) + 1 if self.values else 0

    def value_at(self, rung_epochs: int) -> float | None:
        """Best validation dice over its first `rung_epochs` epochs, if it got that far."""
        if rung_epochs - 1 not in self.values:
            return None
        return max(v for e, v in self.values.items() if e < rung_epochs)


def _standing(ladder: Ladder, configs: list[Config], k: int) -> list[Config]:
    """Configurations that reached rung k, best first (ties: the earlier configuration)."""
    at = ladder.rungs[k]
    reached = [c for c in configs if c.value_at(at) is not None]
    return sorted(reached, key=lambda c: (-c.value_at(at), c.number))  # type: ignore[operator]


def slots(ladder: Ladder, arrived: int) -> int:
    """How many of `arrived` configurations at a rung may go beyond it."""
    return arrived // ladder.eta


def goes_on(ladder: Ladder, configs: list[Config], number: int) -> bool:
    """Whether configuration `number`, which has just finished a rung, keeps training now.

    It must be in the top floor(n / eta) of the n configurations that reached the rung. The
    first arrivals pause (there is nothing yet to beat) and may be promoted later.
    """
    me = next(c for c in configs if c.number == number)
    k = ladder.rung_at(me.epochs_done)
    if k is None or k == len(ladder.rungs) - 1:
        return False
    standing = _standing(ladder, configs, k)
    rank = [c.number for c in standing].index(number)
    return rank < slots(ladder, len(standing))


def promotion(ladder: Ladder, configs: list[Config]) -> Config | None:
    """A paused configuration now due to go on (ASHA: highest rung first), or None.

    At rung k the top floor(n / eta) of the n arrivals may go beyond it; the best of them that
    is paused there, with its state, goes on next.
    """
    for k in reversed(range(len(ladder.rungs) - 1)):
        at = ladder.rungs[k]
        standing = _standing(ladder, configs, k)
        for c in standing[:slots(ladder, len(standing))]:
            if c.epochs_done == at and c.paused_with_state and not c.running:
                return c
    return None


def best(ladder: Ladder, configs: list[Config]) -> Config | None:
    """The configuration to refit: the deepest rung reached, then the best validation dice there.

    A configuration trained to a deeper rung has beaten others at every rung below it, and its
    value is measured after more training, so depth comes first. Test dice never enters.
    """
    def key(c: Config) -> tuple[int, float, int]:
        reached = [k for k, at in enumerate(ladder.rungs) if c.value_at(at) is not None]
        if reached:
            k = reached[-1]
            return (k, c.value_at(ladder.rungs[k]) or 0.0, -c.number)
        return (-1, max(c.values.values(), default=-1.0), -c.number)

    scored = [c for c in configs if c.values]
    return max(scored, key=key) if scored else None


@dataclass(frozen=True)
class Budget:
    """Seconds of training per architecture, shared by every worker on the database."""

    seconds: float
    refit_share: float = 0.5

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
