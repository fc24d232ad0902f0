"""Where every study starts: the reports' baseline, then the short-run recipe at two peaks."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from jobs import budget
from jobs.search_space import BASELINE, RECIPE, SPACE, Range, SpaceError, load_space, starting_points, suggest


def test_a_study_starts_from_the_baseline_then_the_recipe_at_two_peak_learning_rates() -> None:
    points = starting_points(dict(SPACE))
    assert [p["lr"] for p in points] == [1e-4, 1e-3, 3e-3]
    assert points[0] == BASELINE and points[1] == RECIPE
    assert points[2] == {**RECIPE, "lr": 3e-3} and points[1]["dice_weight"] == 0.7 and points[1]["rotate"] == 15


def test_a_study_whose_encoder_starts_pretrained_tries_a_lower_peak_instead_of_a_higher_one() -> None:
    points = starting_points(dict(SPACE), pretrained=True)
    assert [p["lr"] for p in points] == [1e-4, 1e-3, 3e-4] and points[2] == {**RECIPE, "lr": 3e-4}


def test_a_narrowed_space_moves_the_recipes_inside_it_and_drops_fixed_parameters() -> None:
    space = dict(SPACE, lr=Range(2e-3, 5e-3, log=True), rotate=10.0)
    points = starting_points(space)
    assert [p["lr"] for p in points] == [1e-4, 2e-3, 3e-3]  # the baseline stays the reports' configuration
    assert all("rotate" not in p for p in points)


def test_recipes_that_a_narrowed_space_makes_equal_are_started_once() -> None:
    space = dict(SPACE, lr=Range(5e-3, 1e-2, log=True))
    assert [p["lr"] for p in starting_points(space)] == [1e-4, 5e-3]


def _queued(number: int, start: int, **system: object) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(state=TrialState.WAITING, params={"lr": 1e-3},
                                  distributions={"lr": FloatDistribution(1e-4, 1e-2, log=True)},
                                  user_attrs={budget.START: start}, system_attrs=dict(system))
    t.number = number
    return t


def test_starting_points_enqueued_twice_by_racing_workers_count_once_and_the_second_copies_are_surplus() -> None:
    trials = [_queued(i, i % 3) for i in range(6)]  # two workers created the study at the same moment
    assert [t.number for t in budget.counted(trials)] == [0, 1, 2]
    assert [budget.fits(i, trials, budget=3) for i in range(6)] == [True, True, True, False, False, False]


def test_a_retried_starting_point_is_not_a_duplicate() -> None:
    trials = [_queued(0, 0), _queued(1, 1), _queued(2, 1, failed_trial=1, retry_history=[1])]
    assert budget.fits(2, trials, budget=2)


def test_suggestions_come_typed_and_rotate_keeps_the_int_distribution_earlier_studies_stored() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(BASELINE)  # the baseline's rotate is 15.0, a float: Optuna hands back the int 15
    first, second = study.ask(), study.ask()
    p, q = suggest(first, dict(SPACE)), suggest(second, dict(SPACE))
    assert p["rotate"] == 15 and type(p["rotate"]) is int and type(p["lr"]) is float
    assert type(q["rotate"]) is int and 0 <= q["rotate"] <= 30
    # the distribution is the one stores written before suggestions were typed hold: a study continues
    assert first.distributions["rotate"] == second.distributions["rotate"] == IntDistribution(0, 30)


def test_a_space_file_keeps_each_parameters_type_and_refuses_a_fractional_whole_number(tmp_path: Path) -> None:
    space_file = tmp_path / "space.toml"
    space_file.write_text("rotate = 10\nhflip = 0\n")
    space = load_space(space_file)
    trial = optuna.create_study().ask()
    p = suggest(trial, space)
    assert (p["rotate"], type(p["rotate"]), p["hflip"], type(p["hflip"])) == (10, int, 0.0, float)
    assert "rotate" not in trial.distributions  # a fixed value is not searched
    space_file.write_text("rotate = { low = 5, high = 45 }\n")
    assert load_space(space_file)["rotate"] == Range(5, 45, integer=True)
    space_file.write_text("rotate = 10.5\n")
    with pytest.raises(SpaceError, match="rotate takes whole numbers, got 10.5"):
        load_space(space_file)
