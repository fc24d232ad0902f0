"""jobs.schedule and jobs.budget: successive halving with promotion, the refit's choice, length and
start, the time and configuration budget, --width auto, and several workers sharing all of it.

All pure: trials are plain jobs.budget.Trial records, seconds are numbers, nothing trains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator

import optuna
import pytest
from optuna.trial import TrialState

from jobs import budget, schedule
from jobs.budget import REFIT_EPOCHS, REFIT_OF, RESUME_AT, RESUME_OF, SURPLUS, Budget, Trial
from jobs.schedule import Config, Ladder, best, goes_on, promotion, slots


def config(number: int, *values: float, running: bool = False, paused: bool = False) -> Config:
    return Config(number, dict(enumerate(values)), running=running, paused_with_state=paused)


LADDER = Ladder((1, 3, 9), eta=3)


def test_the_ladder_grows_by_eta_and_always_ends_at_the_full_length() -> None:
    assert Ladder.geometric(2, 18).rungs == (2, 6, 18)
    assert Ladder.geometric(2, 20).rungs == (2, 6, 18, 20)
    assert Ladder.geometric(3, 3).rungs == (3,)
    assert Ladder.geometric(1, 10, eta=2).rungs == (1, 2, 4, 8, 10)
    with pytest.raises(ValueError):
        Ladder.geometric(5, 3)


def test_the_first_arrivals_at_a_rung_pause_because_there_is_nothing_to_beat() -> None:
    a = config(0, 0.9)
    assert not goes_on(LADDER, [a], 0)
    b = config(1, 0.1)
    assert not goes_on(LADDER, [a, b], 1)


def test_the_third_arrival_goes_on_only_if_it_is_the_best_of_three() -> None:
    a, b = config(0, 0.5, paused=True), config(1, 0.6, paused=True)
    assert goes_on(LADDER, [a, b, config(2, 0.7)], 2)
    assert not goes_on(LADDER, [a, b, config(2, 0.55)], 2)


def test_a_paused_configuration_that_later_arrivals_put_on_top_is_promoted() -> None:
    a, b = config(0, 0.8, paused=True), config(1, 0.6, paused=True)
    c = config(2, 0.7, paused=True)  # arrived third, not the best: paused too
    assert slots(LADDER, 3) == 1
    assert promotion(LADDER, [a, b, c]) is a


def test_a_promotion_is_not_repeated_while_it_runs_or_after_it_went_on() -> None:
    a = config(0, 0.8, running=True)  # promoted: its continuation is queued or training
    b, c = config(1, 0.6, paused=True), config(2, 0.7, paused=True)
    assert promotion(LADDER, [a, b, c]) is None
    a_done = config(0, 0.8, 0.82, 0.85, paused=True)  # went on to rung 1 (3 epochs) and paused there
    assert promotion(LADDER, [a_done, b, c]) is None


def test_the_highest_rung_is_promoted_first() -> None:
    high = [config(n, 0.5, 0.6, 0.7 + n / 100, paused=True) for n in range(3)]  # three at rung 1 (3 epochs)
    low = [config(n, 0.4 + n / 100, paused=True) for n in range(3, 9)]          # six more at rung 0
    assert promotion(LADDER, high + low).number == 2


def test_a_configuration_without_a_saved_state_is_never_promoted() -> None:
    a = config(0, 0.9)  # stopped by the budget, not paused at a rung: nothing to resume
    assert promotion(LADDER, [a, config(1, 0.5, paused=True), config(2, 0.4, paused=True)]) is None


def test_the_refit_repeats_the_deepest_trained_configuration_then_the_best_there() -> None:
    short_but_high = config(0, 0.95, paused=True)
    deep = config(1, 0.5, 0.6, 0.7)
    deeper_worse = config(2, 0.5, 0.6, 0.65)
    assert best(LADDER, [short_but_high, deep, deeper_worse]) is deep
    assert best(LADDER, [config(0, 0.7), config(1, 0.7)]).number == 0  # ties: the earlier one
    assert best(LADDER, []) is None


def test_the_budget_keeps_the_refit_share_and_sizes_the_refit_by_the_measured_pace() -> None:
    b = Budget(300, refit_share=0.4)
    assert b.search_seconds == pytest.approx(180)
    assert b.search_left(170) == pytest.approx(10) and b.search_left(200) < 0
    assert b.refit_epochs(spent=180, seconds_per_epoch=3.0, at_least=10, evaluation_s=3.0) == 39  # (300-180-3)/3
    assert b.refit_epochs(spent=295, seconds_per_epoch=3.0, at_least=10) == 10  # never shorter than the search trained


# -- the study as plain trials --------------------------------------------------------------------

def trial(number: int, *values: float, state: TrialState = TrialState.COMPLETE, seconds: float | None = None,
          first_epoch: int = 0, **attrs: object) -> Trial:
    return Trial(number, state, {first_epoch + i: v for i, v in enumerate(values)}, dict(attrs), seconds=seconds)


def test_a_configuration_gathers_its_continuations_and_only_a_pause_with_state_on_disk_is_resumable() -> None:
    trials = [trial(0, 0.5, state=TrialState.PRUNED), trial(1, 0.6, state=TrialState.PRUNED),
              trial(2, 0.55, 0.7, state=TrialState.RUNNING, first_epoch=1, resume_of=0, resume_at=1),
              trial(3, state=TrialState.FAIL, surplus=True), trial(4, 0.9, refit_of=0)]
    found = {c.number: c for c in schedule.configs(trials, paused={0, 1})}
    assert sorted(found) == [0, 1]  # neither the surplus trial nor the refit is a configuration
    assert found[0].values == {0: 0.5, 1: 0.55, 2: 0.7} and found[0].running and not found[0].paused_with_state
    assert found[1].paused_with_state
    assert not schedule.configs(trials, paused=set())[1].paused_with_state
    assert schedule.last_trial(trials, 0) == 2 and schedule.paused_trial(trials, 2, 0).number == 0


def test_the_pace_counts_each_epoch_once_across_a_pause() -> None:
    trials = [trial(0, 0.5, seconds=3.0, state=TrialState.PRUNED),
              trial(1, 0.5, 0.6, 0.7, seconds=4.0, resume_of=0, resume_at=1),  # two more epochs in 4 s
              trial(2, 0.4, 0.5, 0.6, seconds=99.0)]
    assert schedule.pace(trials, 0) == pytest.approx(7.0 / 3)
    assert schedule.pace([trial(0, state=TrialState.RUNNING)], 0) == 0.0


SEARCH = Budget(100, refit_share=0.5, configs=3)


def test_next_runs_what_is_queued_then_a_due_promotion_then_new_configurations() -> None:
    assert schedule.next_step([trial(0, state=TrialState.WAITING)], LADDER, SEARCH, 0, set()).kind == "queued"
    paused = [trial(n, 0.5 + n / 10, state=TrialState.PRUNED) for n in range(3)]
    step = schedule.next_step(paused, LADDER, SEARCH, 10, paused={0, 1, 2})
    assert (step.kind, step.config.number) == ("promote", 2)
    assert schedule.next_step(paused, LADDER, SEARCH, 10, paused={0, 1, 2}, asha=False).kind == "refit"
    assert schedule.next_step(paused[:2], LADDER, SEARCH, 10, paused={0, 1}).kind == "queued"  # a third config


def test_the_refit_waits_for_every_search_trial_anywhere_and_is_queued_once() -> None:
    done = [trial(0, 0.5, 0.6, 0.7), trial(1, 0.4, 0.5, 0.6)]
    elsewhere = [*done, trial(2, 0.8, state=TrialState.RUNNING)]  # another worker's trial, still training
    assert schedule.next_step(elsewhere, LADDER, SEARCH, 60, set()) is None
    step = schedule.next_step(done, LADDER, SEARCH, 60, set())  # search time spent: the refit of the best
    assert (step.kind, step.config.number) == ("refit", 0)
    assert schedule.next_step([*done, trial(2, state=TrialState.RUNNING, refit_of=0)], LADDER, SEARCH, 60, set()) is None
    assert schedule.next_step(done, LADDER, Budget(100, refit_share=0.0, configs=2), 60, set()) is None  # no refit


def test_a_trial_asked_after_another_worker_ended_the_search_is_not_trained_but_the_refit_is() -> None:
    trials = [trial(0, 0.5, 0.6, 0.7), trial(1, state=TrialState.RUNNING),
              trial(2, state=TrialState.RUNNING, refit_of=0)]
    assert schedule.admitted(1, trials, SEARCH, spent=49.0)
    assert not schedule.admitted(1, trials, SEARCH, spent=50.0)
    assert schedule.admitted(2, trials, SEARCH, spent=99.0)
    assert not schedule.admitted(1, trials, Budget(100, configs=1), spent=0.0)  # over --trials


def test_after_an_epoch_the_search_stops_at_its_share_and_a_slow_refit_at_the_whole_budget() -> None:
    def verdict(spent: float, refit: bool = False, done: int = 2, seconds: float = 1.0) -> str:
        return schedule.after_epoch(SEARCH, spent, refit=refit, epochs_done=done, epochs=9, epoch_seconds=seconds)

    assert [verdict(49.0), verdict(50.0), verdict(50.0, done=9)] == ["on", "stop", "last"]
    assert [verdict(97.0, refit=True, seconds=2.0), verdict(98.5, refit=True, seconds=2.0)] == ["on", "end"]


def test_one_epoch_verdict_weighs_the_budget_then_optunas_pruner_then_the_rung_asking_each_only_when_needed() -> None:
    asked: list[str] = []
    rivals = [config(0, 0.5, paused=True), config(1, 0.6, paused=True)]

    def verdict(spent: float = 10.0, refit: bool = False, done: int = 1, prune: bool = False, dice: float = 0.7,
                halving: bool = True, seconds: float = 1.0) -> str:
        def pruned() -> bool:
            asked.append("pruner")
            return prune

        def configs() -> list[Config]:
            asked.append("configs")
            return [*rivals, config(2, *[dice] * done)]
        return schedule.epoch_verdict(SEARCH, spent, LADDER, refit=refit, epochs_done=done, epochs=9,
                                      epoch_seconds=seconds, pruned=pruned, configs=configs if halving else None,
                                      config=2)

    assert [verdict(50.0), verdict(done=9), verdict(98.5, refit=True, seconds=2.0), verdict(10.0, refit=True)] == [
        "stop", "last", "end", "on"]
    assert asked == []  # the budget decided, and a refit is never pruned nor paused
    assert verdict(prune=True) == "prune" and asked == ["pruner"]
    asked.clear()
    assert [verdict(dice=0.7), verdict(dice=0.55)] == ["on", "pause"]  # best of three at rung 1 goes on
    assert asked == ["pruner", "configs"] * 2
    asked.clear()
    assert [verdict(done=2, dice=0.1), verdict(dice=0.1, halving=False)] == ["on", "on"]  # no rung; no halving
    assert asked == ["pruner", "pruner"]


@pytest.mark.parametrize("seconds, spent, members, planned", [
    (24, 12, 1, (1, 11)),    # the rest at one second an epoch, one epoch kept for the test evaluation
    (100, 12, 1, (1, 24)),   # at most 8 search trials' length
    (70, 35, 3, (2, 16)),    # three members would get 10 epochs each, under 4 x 3: two get 16
    (24, 12, 2, (1, 11)),    # the quick preset's two members: the budget affords no second one
    (24, 30, 1, (1, 4)),     # the search overran: still longer than it trained (3 epochs)
])
def test_the_refit_trains_the_members_and_epochs_its_budget_affords(seconds: float, spent: float, members: int,
                                                                     planned: tuple[int, int]) -> None:
    assert schedule.refit_plan(Budget(seconds), spent, 1.0, 4, Ladder((1, 3)), members) == planned


def test_only_a_short_single_network_refit_starts_from_the_weights_its_search_ended_with() -> None:
    ladder, trained, paused = Ladder((1, 3)), Config(0, {0: 0.5, 1: 0.6, 2: 0.7}), Config(0, {0: 0.5}, paused_with_state=True)
    assert schedule.refit_start(ladder, 1, 11, trained, 4, "config-0.pt", "trial-4.pt") == (4, "trial-4.pt")
    assert schedule.refit_start(ladder, 1, 11, paused, 4, "config-0.pt", None) == (4, "config-0.pt")
    assert schedule.refit_start(ladder, 1, 11, trained, 4, "config-0.pt", None) is None  # its weights were not kept
    assert schedule.refit_start(ladder, 1, 12, trained, 4, "config-0.pt", "trial-4.pt") is None  # 4 x 3: long enough
    assert schedule.refit_start(ladder, 2, 11, trained, 4, "config-0.pt", "trial-4.pt") is None  # members must differ


LADDER3 = Ladder((1, 3))


def row(number: int, val: float, state: str = "complete", **params: object) -> dict:
    return dict(id=100 + number, number=number, state=state, val_dice=val, params=params, checkpoint=f"t{number}.pt")


def test_pruning_checkpoints_keeps_the_result_and_the_weights_the_refit_will_start_from() -> None:
    # trial 0 peaked at 0.9 and ended at 0.6: the refit repeats it, though trial 1 ended higher
    trials = [trial(0, 0.5, 0.9, 0.6), trial(1, 0.4, 0.6, 0.7)]
    rows = [row(0, 0.6), row(1, 0.7)]
    source = schedule.refit_source(trials, LADDER3, SEARCH, set())
    assert best(LADDER3, schedule.configs(trials, set())).number == source == 0
    assert schedule.kept_checkpoints(rows, source) == {100, 101}  # the result (trial 1) and the refit's start
    assert schedule.kept_checkpoints(rows, None) == {101}
    queued = [*trials, trial(2, state=TrialState.WAITING, refit_of=0, refit_init=[0, "t0.pt"])]
    assert schedule.refit_source(queued, LADDER3, SEARCH, set()) == 0
    refit_done = [*rows, row(2, 0.8, refit_of=0)]  # the refit is the result now: its start is no longer needed
    assert schedule.kept_checkpoints(refit_done, 0) == {102}
    assert schedule.refit_source(trials, LADDER3, Budget(100, refit_share=0.0), set()) is None


@pytest.mark.parametrize("epochs_at, members, width", [
    ({1.0: 200, 0.5: 500, 0.25: 1000}, 1, 1.0),
    ({1.0: 200, 0.5: 500, 0.25: 1000}, 2, 0.5),   # half width leaves room for two members
    ({1.0: 20, 0.5: 200, 0.25: 1000}, 2, 0.5),    # but members never push it below half: one network
    ({1.0: 20, 0.5: 60, 0.25: 100}, 1, 0.25),     # nothing affords 150 epochs: the narrowest
])
def test_auto_width_leaves_room_for_each_member_of_the_refits_ensemble_down_to_half_width(
        epochs_at: dict[float, int], members: int, width: float) -> None:
    measured: list[float] = []

    def epoch_seconds(w: float) -> float:
        measured.append(w)
        return 250 / epochs_at[w]

    assert schedule.auto_width(250, members, epoch_seconds) == (width, 250 / epochs_at[width])
    assert len(measured) == len(set(measured))  # each width measured once, and only as far as needed
    assert schedule.auto_width(250, 1, lambda w: 250 / {1.0: 200, 0.5: 500, 0.25: 1000}[w])[0] == 1.0


@pytest.mark.parametrize("epochs_at, measured", [
    ({1.0: 20, 0.5: 60, 0.25: 100}, [0.25]),            # the narrowest cannot afford them: no wider one can
    ({1.0: 20, 0.5: 60, 0.25: 1000}, [0.25, 0.5]),
    ({1.0: 200, 0.5: 500, 0.25: 1000}, [0.25, 0.5, 1.0]),
])
def test_auto_width_measures_narrowest_first_and_stops_at_a_width_the_budget_cannot_train_long_enough(
        epochs_at: dict[float, int], measured: list[float]) -> None:
    asked: list[float] = []
    schedule.auto_width(250, 2, lambda w: asked.append(w) or 250 / epochs_at[w])
    assert asked == measured  # full width takes seconds to measure: the quick preset on a CPU never needs it


# -- several workers, as plain data ----------------------------------------------------------------

@dataclass
class SharedStudy:
    """One architecture's study that workers share, each trained epoch costing `cost(trial)` seconds."""

    budget: Budget
    ladder: Ladder
    curve: Callable[[int, int], float]  # (configuration, epoch) -> validation dice
    cost: Callable[[Trial], float] = lambda t: 1.0
    trials: list[Trial] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)
    spent: float = 0.0

    def add(self, state: TrialState, **attrs: object) -> Trial:
        self.trials.append(Trial(len(self.trials), state, {}, dict(attrs)))
        return self.trials[-1]

    def update(self, number: int, **changes: object) -> Trial:
        self.trials[number] = dataclasses.replace(self.trials[number], **changes)
        return self.trials[number]

    def ask(self) -> Trial:
        """Optuna's ask: the first queued trial, else a new configuration."""
        queued = next((t for t in self.trials if t.state == TrialState.WAITING), None)
        return self.update(queued.number, state=TrialState.RUNNING) if queued else self.add(TrialState.RUNNING)


def worker(study: SharedStudy) -> Iterator[None]:
    """jobs.sweep's Worker loop on plain data: plan, ask, train epoch by epoch (yielding after each)."""
    while True:
        step = schedule.next_step(study.trials, study.ladder, study.budget, study.spent, study.paused)
        if step is None:
            if not any(t.state == TrialState.RUNNING for t in study.trials):
                return
            yield  # another worker's trial may still change what comes next
            continue
        if step.kind == "promote":
            study.add(TrialState.WAITING, resume_of=step.config.number, resume_at=step.config.epochs_done)
        elif step.kind == "refit":
            pace = schedule.pace(study.trials, step.config.number)
            _, epochs = schedule.refit_plan(study.budget, study.spent, pace, step.config.epochs_done + 1,
                                            study.ladder, 1)
            study.add(TrialState.WAITING, refit_of=step.config.number, refit_epochs=epochs)
        t = study.ask()
        if not schedule.admitted(t.number, study.trials, study.budget, study.spent):
            study.update(t.number, state=TrialState.FAIL, user_attrs={**t.user_attrs, SURPLUS: True})
            continue
        yield from train(study, t)


def train(study: SharedStudy, t: Trial) -> Iterator[None]:
    config, refit = schedule.root(t), REFIT_OF in t.user_attrs
    epochs, first = t.user_attrs.get(REFIT_EPOCHS, study.ladder.epochs), t.user_attrs.get(RESUME_AT, 0)
    values = dict(study.trials[schedule.paused_trial(study.trials, t.number, config).number].intermediate_values
                  if first else {})
    for epoch in range(first, epochs):
        study.spent += study.cost(t)
        values[epoch] = study.curve(t.user_attrs.get(REFIT_OF, config), epoch)
        t = study.update(t.number, intermediate_values=dict(values), seconds=(epoch + 1 - first) * study.cost(t))
        verdict = schedule.epoch_verdict(study.budget, study.spent, study.ladder, refit=refit, epochs_done=epoch + 1,
                                         epochs=epochs, epoch_seconds=study.cost(t), pruned=lambda: False,
                                         configs=lambda: schedule.configs(study.trials, study.paused), config=config)
        if verdict in ("last", "end"):
            break
        if verdict in ("stop", "pause"):
            if verdict == "pause":
                study.paused.add(config)
            study.update(t.number, state=TrialState.PRUNED)
            return
        yield
    study.paused.discard(config)
    study.update(t.number, state=TrialState.COMPLETE)


def run_workers(study: SharedStudy, n: int) -> None:
    workers = [worker(study) for _ in range(n)]
    while workers:
        for w in list(workers):
            try:
                next(w)
            except StopIteration:
                workers.remove(w)


def search_epochs(trials: list[Trial]) -> int:
    return sum(len(t.intermediate_values) - t.user_attrs.get(RESUME_AT, 0)
               for t in trials if REFIT_OF not in t.user_attrs)


def curve(config: int, epoch: int) -> float:
    return 0.3 + 0.1 * epoch + 0.01 * (config % 7)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_end_the_search_within_an_epoch_each_and_one_refit_gets_the_rest(workers: int) -> None:
    study = SharedStudy(Budget(24, refit_share=0.5, configs=50), Ladder.geometric(1, 3), curve)
    run_workers(study, workers)
    searched = search_epochs(study.trials)
    assert 12 <= searched <= 12 + workers - 1  # each worker may only finish the epoch it is in
    refits = [t for t in study.trials if REFIT_OF in t.user_attrs]
    assert len(refits) == 1 and refits[0].state == TrialState.COMPLETE
    assert len(refits[0].intermediate_values) == refits[0].user_attrs[REFIT_EPOCHS] == 24 - searched - 1
    assert all(t.state.is_finished() for t in study.trials)
    assert max(t.number for t in study.trials if REFIT_OF not in t.user_attrs) < refits[0].number


def test_a_refit_slower_than_planned_stops_at_the_budget() -> None:
    study = SharedStudy(Budget(24, refit_share=0.5, configs=50), Ladder.geometric(1, 3), curve,
                        cost=lambda t: 2.0 if REFIT_OF in t.user_attrs else 1.0)
    run_workers(study, 1)
    [refit] = [t for t in study.trials if REFIT_OF in t.user_attrs]
    trained = len(refit.intermediate_values)
    assert refit.state == TrialState.COMPLETE and trained < refit.user_attrs[REFIT_EPOCHS]
    assert search_epochs(study.trials) + 2 * trained in (24, 25)  # stopped at the budget, within one epoch


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_successive_halving_promotes_the_best_third_of_each_rung_and_the_refit_repeats_the_deepest(
        workers: int) -> None:
    def earlier_is_better(config: int, epoch: int) -> float:  # every arrival pauses: promotions do the rest
        return 0.5 + 0.02 * epoch - 0.01 * config

    study = SharedStudy(Budget(200, refit_share=0.5, configs=9), Ladder.geometric(1, 9), earlier_is_better)
    run_workers(study, workers)
    promoted = sorted((t.user_attrs[RESUME_OF], t.user_attrs[RESUME_AT]) for t in study.trials if RESUME_OF in t.user_attrs)
    assert promoted == [(0, 1), (0, 3), (1, 1), (2, 1)]  # 9 at rung 1 epoch: 3 go on; 3 at 3 epochs: 1 goes on
    assert search_epochs(study.trials) == 9 + 3 * 2 + 6  # every epoch trained once, across pauses
    [refit] = [t for t in study.trials if REFIT_OF in t.user_attrs]
    assert refit.user_attrs == {REFIT_OF: 0, REFIT_EPOCHS: 72} and refit.state == TrialState.COMPLETE  # 8 x 9 epochs
    assert len(budget.counted(study.trials)) == 9


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_retry_queued_by_two_workers_at_once_runs_once_and_counts_once() -> None:
    study = optuna.create_study(direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for state, value in ((TrialState.COMPLETE, 0.5), (TrialState.FAIL, None), (TrialState.FAIL, None)):
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"lr": 1e-3}, distributions=lr))
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    for lost in (1, 1, 2):  # a second worker noticed the loss of trial 1 at the same moment
        retry(study, study.trials[lost])
    trials = [Trial.of(t) for t in study.get_trials()]
    assert [(t.number, t.state, budget.retry_of(t)) for t in trials[3:]] == [
        (3, TrialState.WAITING, 1), (4, TrialState.WAITING, 1), (5, TrialState.WAITING, 2)]
    assert budget.duplicates(trials) == {4}
    assert [t.number for t in budget.counted(trials)] == [0, 3, 5]
    # with a budget of 2, trial 2 was over it (its worker died before marking it surplus): so is its retry
    assert [budget.fits(n, trials, 2) for n in (3, 4, 5)] == [True, False, False]
    assert [budget.fits(n, trials, 3) for n in (3, 4, 5)] == [True, False, True]


def test_a_refit_queued_by_two_workers_at_once_trains_once() -> None:
    trials = [trial(0, 0.5, 0.6, 0.7), trial(1, state=TrialState.WAITING, refit_of=0, refit_epochs=11),
              trial(2, state=TrialState.WAITING, refit_of=0, refit_epochs=11)]
    assert budget.duplicates(trials) == {2}
    assert [schedule.admitted(n, trials, SEARCH, spent=60.0) for n in (1, 2)] == [True, False]
