"""jobs.schedule: successive halving with promotion, the refit's choice and length, the time budget."""
from __future__ import annotations

import pytest

from jobs.schedule import Budget, Config, Ladder, best, goes_on, promotion, slots


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
