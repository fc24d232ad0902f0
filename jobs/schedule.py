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

Everything here is pure: it takes what the study holds as plain data (jobs.budget.Trial
records, seconds, the store's rows) and returns a decision, so the rules are tested without
training anything. jobs.sweep's Worker only gathers that data, asks, and acts on the answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Literal, Mapping, Sequence

from optuna.trial import TrialState

from core.store import selection
from jobs.budget import REFIT_INIT, REFIT_OF, RESUME_AT, RESUME_OF, SURPLUS, Budget, Trial, fits

AUTO_WIDTHS = (1.0, 0.5, 0.25)  # --width auto: the first whose epochs the budget can afford enough of
AUTO_MIN_EPOCHS = 150  # epochs of training an architecture's budget must afford at that width, per refit member
ENSEMBLE_MIN_WIDTH = 0.5  # refit members never narrow --width auto below this (unet lost more at 0.25 than they gained)
REFIT_MAX_FACTOR = 8   # a refit trains at most this many times a search trial's full length
REFIT_MIN_FACTOR = 4   # and each member of an ensemble refit at least this many times


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


# -- what the study holds, as configurations -----------------------------------------------------

def root(t: Trial) -> int:
    """The configuration a trial trains: its own number, or the one it continues."""
    return t.user_attrs.get(RESUME_OF, t.number)


def configs(trials: Sequence[Trial], paused: Collection[int]) -> list[Config]:
    """The sampled configurations, each across its first trial and its continuations; `paused`:
    the configurations whose resumable state is on disk."""
    out: dict[int, Config] = {}
    last_state: dict[int, TrialState] = {}
    for t in trials:
        if t.user_attrs.get(SURPLUS) or REFIT_OF in t.user_attrs:
            continue
        c = out.setdefault(root(t), Config(root(t)))
        c.values.update(t.intermediate_values)
        c.running |= t.state in (TrialState.RUNNING, TrialState.WAITING)
        last_state[c.number] = t.state
    for c in out.values():
        c.paused_with_state = not c.running and last_state[c.number] == TrialState.PRUNED and c.number in paused
    return list(out.values())


def last_trial(trials: Sequence[Trial], config: int) -> int:
    """The trial in which the configuration's search training ended (its weights are that trial's)."""
    return max(t.number for t in trials if not t.user_attrs.get(SURPLUS) and REFIT_OF not in t.user_attrs
               and root(t) == config)


def paused_trial(trials: Sequence[Trial], number: int, config: int) -> Trial:
    """The trial whose pause the continuation `number` of `config` resumes."""
    return max((t for t in trials if t.number < number and t.state == TrialState.PRUNED and root(t) == config),
               key=lambda t: t.number)


def pace(trials: Sequence[Trial], config: int) -> float:
    """Seconds per epoch a configuration took in the search, its evaluations included (0: unknown)."""
    mine = [t for t in trials if root(t) == config and t.seconds is not None]
    trained = sum(len(t.intermediate_values) - t.user_attrs.get(RESUME_AT, 0) for t in mine)
    return sum(t.seconds for t in mine) / trained if trained > 0 else 0.0  # type: ignore[misc]


# -- what a worker does next ----------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """What to run next: 'queued' (a queued trial, or a new configuration Optuna samples),
    'promote' (`config` continues from its pause) or 'refit' (`config` is trained once more)."""

    kind: Literal["queued", "promote", "refit"]
    config: Config | None = None


def next_step(trials: Sequence[Trial], ladder: Ladder, budget: Budget, spent: float, paused: Collection[int],
              asha: bool = True) -> Step | None:
    """Next for this architecture, or None when there is nothing for this worker to run.

    In order: anything already queued (the baseline, retries, promotions, the refit); a promotion
    that successive halving says is due; a new configuration while the search's seconds and
    configurations last; then, once no search trial is running anywhere (another worker's may
    still change which configuration is best), the refit, once.
    """
    live = [t for t in trials if not t.user_attrs.get(SURPLUS)]
    if any(t.state == TrialState.WAITING for t in live):
        return Step("queued")
    if any(REFIT_OF in t.user_attrs for t in live):
        return None  # the refit is done, running elsewhere, or failed for good
    found = configs(trials, paused)
    searching = budget.search_left(spent) > 0
    if searching and asha:
        due = promotion(ladder, found)
        if due is not None:
            return Step("promote", due)
    if searching and budget.configs_left(trials) > 0:
        return Step("queued")
    if any(c.running for c in found):
        return None
    chosen = best(ladder, found)
    if chosen is None or budget.refit_share <= 0:
        return None
    return Step("refit", chosen)


def admitted(number: int, trials: Sequence[Trial], budget: Budget, spent: float) -> bool:
    """Whether trial `number`, just asked of Optuna, may train: it fits the configurations
    (jobs.budget.fits) and, unless it is the refit, the search still has time. Planning and asking
    are two steps: another worker may have spent the search's time in between."""
    me = next(t for t in trials if t.number == number)
    return fits(number, trials, budget.configs) and (REFIT_OF in me.user_attrs or budget.search_left(spent) > 0)


Verdict = Literal["last", "on", "stop", "end"]


def after_epoch(budget: Budget, spent: float, *, refit: bool, epochs_done: int, epochs: int,
                epoch_seconds: float) -> Verdict:
    """What the budget says after an epoch: 'last' (that was the last one), 'end' (a refit slower
    than the pace it was planned at stops at the budget, and is still evaluated), 'stop' (the
    search's time is up: the refit gets the rest) or 'on' (halving and Optuna's pruner may still
    stop a search trial)."""
    if epochs_done >= epochs:
        return "last"
    if refit:
        return "end" if budget.left(spent) < epoch_seconds else "on"
    return "stop" if budget.search_left(spent) <= 0 else "on"


EpochVerdict = Literal["last", "on", "stop", "end", "prune", "pause"]


def epoch_verdict(budget: Budget, spent: float, ladder: Ladder, *, refit: bool, epochs_done: int, epochs: int,
                  epoch_seconds: float, pruned: Callable[[], bool],
                  configs: Callable[[], list[Config]] | None, config: int) -> EpochVerdict:
    """The whole decision after a trial's epoch: after_epoch's verdict on the budget; then, for a search
    trial the budget lets go on, 'prune' if Optuna's pruner says so, else at a rung with successive
    halving (`configs` given: the configurations now) 'pause' unless `config` goes_on, else 'on'.

    `pruned` and `configs` are asked only when the verdict needs them: Optuna's halving pruners write
    to the trial when asked, and the configurations are read from the study and the disk."""
    verdict = after_epoch(budget, spent, refit=refit, epochs_done=epochs_done, epochs=epochs,
                          epoch_seconds=epoch_seconds)
    if verdict != "on" or refit:
        return verdict
    if pruned():
        return "prune"
    if configs is not None and ladder.rung_at(epochs_done) is not None and not goes_on(ladder, configs(), config):
        return "pause"
    return "on"


# -- the refit ------------------------------------------------------------------------------------

def refit_plan(budget: Budget, spent: float, pace_s: float, at_least: int, ladder: Ladder,
               max_members: int) -> tuple[int, int]:
    """(members, epochs) of the refit: the most members, up to `max_members`, that the rest of the
    budget trains for REFIT_MIN_FACTOR times a search trial's full length each at the configuration's
    measured pace (one epoch's time kept for the test evaluation); then as many epochs as the budget
    allows them, at least `at_least` (longer than the search trained it), at most REFIT_MAX_FACTOR
    times a search trial's full length."""
    cap = max(at_least, REFIT_MAX_FACTOR * ladder.epochs)
    for members in range(max_members, 0, -1):
        epochs = budget.refit_epochs(spent, pace_s * members, at_least=at_least, evaluation_s=pace_s * members)
        if members == 1 or epochs >= REFIT_MIN_FACTOR * ladder.epochs:
            return members, min(epochs, cap)
    raise ValueError(f"max_members must be >= 1, got {max_members}")


def refit_start(ladder: Ladder, members: int, epochs: int, config: Config, last: int, state_file: str,
                checkpoint: str | None) -> tuple[int, str] | None:
    """(trial, file) whose weights a short refit starts from, or None to start from fresh ones.

    A refit the budget cannot give REFIT_MIN_FACTOR times a search trial's length would barely
    out-train the search trial it repeats, so it starts from the weights that configuration's search
    training ended with (in trial `last`): its paused state (`state_file`) or, if it trained to the
    end, that trial's `checkpoint` (None: not kept). A longer refit, and an ensemble, start fresh:
    members must differ, and that regime is where fresh refits were measured to pay (docs/sweep.md,
    "Short refits start from the search's weights").
    """
    if members > 1 or epochs >= REFIT_MIN_FACTOR * ladder.epochs:
        return None
    if config.paused_with_state:
        return last, state_file
    return (last, checkpoint) if checkpoint is not None else None


def refit_source(trials: Sequence[Trial], ladder: Ladder, budget: Budget, paused: Collection[int]) -> int | None:
    """The trial whose weights a refit still to come may start from, or None once a refit has
    completed (or none will run). A queued refit's own choice stands; before one is queued, it is
    the one `best` will name, so checkpoint pruning keeps exactly what refit_start needs."""
    refits = [t for t in trials if REFIT_OF in t.user_attrs and not t.user_attrs.get(SURPLUS)]
    if budget.refit_share <= 0 or any(t.state == TrialState.COMPLETE for t in refits):
        return None
    if refits:
        start = next((t.user_attrs[REFIT_INIT] for t in refits if REFIT_INIT in t.user_attrs), None)
        return int(start[0]) if start else None
    chosen = best(ladder, configs(trials, paused))
    return last_trial(trials, chosen.number) if chosen is not None else None


def kept_checkpoints(rows: Iterable[Mapping[str, Any]], refit_source: int | None) -> set[int]:
    """Store ids of the trials whose checkpoints --keep-checkpoints best keeps: the architecture's
    result (core.store.selection, as the summary and the dashboard name it) and the trial a refit
    still to come starts from (`refit_source`, a trial number; see there)."""
    rows = list(rows)
    result = selection.best_trial(rows)
    if result is not None and selection.is_refit(result.get("params")):
        refit_source = None  # the refit has run: its start is of no more use
    return {r["id"] for r in rows if (result is not None and r["id"] == result["id"]) or r["number"] == refit_source}


# -- --width auto ---------------------------------------------------------------------------------

def auto_width(budget_seconds: float, members: int, epoch_seconds: Callable[[float], float]) -> tuple[float, float]:
    """(width, seconds per epoch at it) for --width auto: the widest of AUTO_WIDTHS, down to
    ENSEMBLE_MIN_WIDTH, at which the budget affords AUTO_MIN_EPOCHS epochs per member of the refit's
    ensemble (`members`), else the widest that affords them for one network, else the narrowest.
    Past about 100 epochs on a small training set one network stops improving, and a second one gains
    more than full width does for resnet34_unet; for unet a quarter width cost more than a second
    member gained (docs/sweep.md, "Ensembles past a single network's ceiling").

    `epoch_seconds(width)` measures, which at full width takes seconds (27 s for unet on a 2-core CPU,
    timing its precision and memory layout too), so widths are measured narrowest first and no wider
    once one cannot afford AUTO_MIN_EPOCHS of one network: a wider network costs more an epoch."""
    measured: dict[float, float] = {}
    for width in sorted(AUTO_WIDTHS):
        measured[width] = epoch_seconds(width)
        if budget_seconds / measured[width] < AUTO_MIN_EPOCHS:
            break

    def affords(width: float, networks: int) -> bool:
        return width in measured and budget_seconds / measured[width] >= AUTO_MIN_EPOCHS * networks

    widest_first = sorted(AUTO_WIDTHS, reverse=True)
    if members > 1:
        for width in widest_first:
            if width >= ENSEMBLE_MIN_WIDTH and affords(width, members):
                return width, measured[width]
    for width in widest_first:
        if affords(width, 1):
            return width, measured[width]
    return widest_first[-1], measured[widest_first[-1]]
