"""core.store.selection: which trial is an architecture's result, and how tables name the choice."""
from core.store.selection import best_trial, chosen_as


def test_chosen_as_names_the_refit_its_ensemble_and_the_weights_it_started_from() -> None:
    assert chosen_as({"refit_of": 15, "members": 2}) == "refit of trial 15, an ensemble of 2"
    assert chosen_as({"refit_of": 1, "members": 1, "init_from": 11}) == "refit of trial 1, from trial 11's weights"
    assert chosen_as({"refit_of": 3, "members": 1}) == "refit of trial 3"
    assert chosen_as({"refit_of": 3}) == "refit of trial 3"  # stored before ensembles existed
    assert chosen_as({"lr": 1e-3}) == chosen_as(None) == "best by val dice"


def test_the_complete_refit_is_the_result_even_below_a_search_trials_val_dice() -> None:
    rows = [{"number": 0, "state": "complete", "val_dice": 0.9, "params": {}},
            {"number": 1, "state": "complete", "val_dice": 0.8, "params": {"refit_of": 0, "members": 2}},
            {"number": 2, "state": "running", "val_dice": None, "params": {"refit_of": 0}}]
    assert best_trial(rows)["number"] == 1
    assert best_trial(rows[:1])["number"] == 0 and best_trial([]) is None
