"""`python -m jobs.sweep`: baseline first, pruning, resume, shared budgets, per-image rows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from core.models import build_model
from core.store import db as st
from core.store import queries
from core.store.optuna_storage import load_study
from core.store.db import Store
from core.data.dataset import prepare_dataset
from core.data.synthetic import generate_synthetic
from jobs import budget
from jobs import sweep as sweep_job
from jobs.search_space import BASELINE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("sweepdata") / "synthetic", n_images=40, image_size=64, seed=1)


def argv(root: Path, db: str, trials: int, *extra: str) -> list[str]:
    return ["--data", "synthetic", "--data-root", str(root), "--db", db, "--name", "t", "--archs", "unet",
            "--trials", str(trials), "--epochs", "2", "--image-size", "32", "--width", "0.125", "--batch-size", "8",
            "--no-progress", *extra]


def study(db: str, arch: str = "unet") -> optuna.Study:
    return load_study(db, f"t/{arch}")


def test_the_reports_baseline_is_trial_0_and_results_cover_every_test_image(sweep_data: Path, db_url: str) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 2, "--pruner", "none")) == 0
    trials = study(db_url).get_trials()
    assert trials[0].user_attrs[budget.BASELINE] is True
    assert trials[0].params["lr"] == pytest.approx(BASELINE["lr"]) and trials[0].params["dice_weight"] == 0.7
    assert trials[1].params != trials[0].params
    store = Store(db_url, read_only=True)
    rows = store.study_trials("t/unet")
    assert [r["number"] for r in rows] == [0, 1, 2] and {r["state"] for r in rows} == {"complete"}
    assert rows[0]["params"]["lr"] == pytest.approx(1e-4) and rows[0]["params"]["aug_rotate"] == 15
    assert rows[2]["params"]["refit_of"] in (0, 1) and "refit_of" not in rows[0]["params"]
    n_test = store.count(st.images, split="test")
    assert n_test > 0 and store.count(st.image_results) == n_test * 3 and store.count(st.masks) == n_test * 3
    with_ckpt = [r for r in rows if r["checkpoint"]]
    assert [r["number"] for r in with_ckpt] == [2] and Path(with_ckpt[0]["checkpoint"]).is_file()  # the refit's


def test_running_again_continues_and_a_larger_budget_adds_the_difference(sweep_data: Path, db_url: str) -> None:
    no_refit = ("--refit-share", "0")
    assert sweep_job.main(argv(sweep_data, db_url, 2, *no_refit)) == 0
    store = Store(db_url, read_only=True)
    assert len(store.study_trials("t/unet")) == 2
    assert sweep_job.main(argv(sweep_data, db_url, 2, *no_refit)) == 0
    assert len(store.study_trials("t/unet")) == 2
    assert sweep_job.main(argv(sweep_data, db_url, 3, *no_refit)) == 0
    assert [r["number"] for r in store.study_trials("t/unet")] == [0, 1, 2]


def test_the_refit_is_recorded_once_and_a_rerun_does_not_redo_it(sweep_data: Path, db_url: str, capsys) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
    store = Store(db_url, read_only=True)
    rows = store.study_trials("t/unet")
    refits = [r for r in rows if "refit_of" in r["params"]]
    assert len(refits) == 1 and refits[0]["state"] == "complete"
    assert refits[0]["epochs_run"] > max(r["epochs_run"] for r in rows if r is not refits[0])
    assert "refit of trial" in capsys.readouterr().out
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
    assert store.study_trials("t/unet") == rows


def test_changed_settings_under_the_same_name_are_refused(sweep_data: Path, db_url: str, capsys) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 1)) == 0
    with pytest.raises(SystemExit) as info:
        sweep_job.main(argv(sweep_data, db_url, 1) + ["--epochs", "3"])
    assert info.value.code == 1 and "other settings (epochs 2 -> 3)" in capsys.readouterr().err


def test_pruned_trials_keep_their_curves(sweep_data: Path, db_url: str, monkeypatch) -> None:
    monkeypatch.setattr(sweep_job, "make_pruner", lambda kind, epochs: optuna.pruners.ThresholdPruner(lower=2.0))
    assert sweep_job.main(argv(sweep_data, db_url, 2, "--refit-share", "0")) == 0
    assert [t.state for t in study(db_url).get_trials()] == [TrialState.PRUNED] * 2
    store = Store(db_url, read_only=True)
    rows = store.study_trials("t/unet")
    assert [r["state"] for r in rows] == ["pruned", "pruned"]
    assert all(store.count(st.epochs, trial_id=r["id"]) == 1 for r in rows)
    assert store.count(st.image_results) == 0


def test_diverging_trials_are_recorded_with_the_reason_and_the_sweep_goes_on(sweep_data: Path, db_url: str,
                                                                            diverging_loss) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    assert [r["state"] for r in rows] == ["failed", "failed"]
    assert all("non-finite loss" in r["error"] for r in rows)
    assert [t.state for t in study(db_url).get_trials()] == [TrialState.FAIL] * 2


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_retry_queued_by_two_workers_at_once_runs_once_and_counts_once() -> None:
    study = optuna.create_study(direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for state, value in ((TrialState.COMPLETE, 0.5), (TrialState.FAIL, None), (TrialState.FAIL, None)):
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"lr": 1e-3}, distributions=lr))
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    for lost in (1, 1, 2):  # a second worker noticed the loss of trial 1 at the same moment
        retry(study, study.trials[lost])
    trials = study.get_trials()
    assert [(t.number, t.state, budget.retry_of(t)) for t in trials[3:]] == [
        (3, TrialState.WAITING, 1), (4, TrialState.WAITING, 1), (5, TrialState.WAITING, 2)]
    assert budget.duplicates(trials) == {4}
    assert [t.number for t in budget.counted(trials)] == [0, 3, 5]
    # with a budget of 2, trial 2 was over it (its worker died before marking it surplus): so is its retry
    assert [budget.fits(n, trials, 2) for n in (3, 4, 5)] == [True, False, False]
    assert [budget.fits(n, trials, 3) for n in (3, 4, 5)] == [True, False, True]


@pytest.mark.slow
def test_two_concurrent_workers_share_one_budget_exactly(sweep_data: Path, db_url: str) -> None:
    cmd = [sys.executable, "-m", "jobs.sweep", *argv(sweep_data, db_url, 4)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "locked" not in err.lower() and "Traceback" not in err
    trials = study(db_url).get_trials()
    assert len(budget.counted(trials)) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in budget.counted(trials))
    refits = [t for t in trials if budget.REFIT_OF in t.user_attrs and not t.user_attrs.get(budget.SURPLUS)]
    assert len(refits) == 1 and refits[0].state == TrialState.COMPLETE
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in budget.counted(trials) + refits)
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    # each trial is reported by exactly one worker; surplus asks are never reported
    reported = [line.split()[2] for out, _ in outs for line in out.splitlines() if line.strip().startswith("unet trial")]
    assert sorted(int(n) for n in reported) == sorted(r["number"] for r in rows)


@pytest.fixture
def epoch_clock(monkeypatch):
    """Each trained epoch costs one 'second' of budget: the scheduling is tested independent of speed."""
    def spent(self, arch: str) -> float:
        return float(sum(len(t.intermediate_values) - t.user_attrs.get(budget.RESUME_AT, 0)
                         for t in self.trials(arch)))
    monkeypatch.setattr(sweep_job.Worker, "spent", spent)
    monkeypatch.setattr(sweep_job.Worker, "pace", lambda self, arch, config: 1.0)


def search_epochs(trials: list) -> int:
    return sum(len(t.intermediate_values) - t.user_attrs.get(budget.RESUME_AT, 0)
               for t in trials if budget.REFIT_OF not in t.user_attrs)


def test_the_time_budget_ends_the_search_within_one_epoch_and_the_refit_gets_the_rest(
        sweep_data: Path, db_url: str, epoch_clock) -> None:
    # 24 s for the architecture, half for the search: 12 epochs of search at one second each
    assert sweep_job.main(argv(sweep_data, db_url, 50, "--timeout", "24", "--min-epochs", "1", "--epochs", "3")) == 0
    trials = study(db_url).get_trials()
    assert 12 <= search_epochs(trials) <= 13
    refit = [t for t in trials if budget.REFIT_OF in t.user_attrs]
    assert len(refit) == 1 and refit[0].state == TrialState.COMPLETE
    spent_before_refit = search_epochs(trials)
    assert len(refit[0].intermediate_values) == min(24 - spent_before_refit - 1, 8 * 3)
    assert queries.best_trials(Store(db_url, read_only=True), "t")["number"].tolist() == [refit[0].number]


def test_a_trial_asked_after_another_worker_ended_the_search_is_dropped_untrained(
        sweep_data: Path, db_url: str, epoch_clock, monkeypatch) -> None:
    # Another worker's trial spends the rest of the search between this worker's plan and its ask.
    others = {"seconds": 0.0, "asked": None}
    spent, plan = sweep_job.Worker.spent, sweep_job.Worker.plan
    monkeypatch.setattr(sweep_job.Worker, "spent", lambda self, arch: spent(self, arch) + others["seconds"])

    def plan_then_another_worker_finishes(self, arch: str) -> bool:
        queued = plan(self, arch)
        trials = self.trials(arch)
        if queued and others["asked"] is None and all(t.state.is_finished() for t in trials):  # a new configuration
            others["seconds"], others["asked"] = self.budget.search_left(self.spent(arch)), len(trials)
        return queued
    monkeypatch.setattr(sweep_job.Worker, "plan", plan_then_another_worker_finishes)
    assert sweep_job.main(argv(sweep_data, db_url, 50, "--timeout", "24", "--min-epochs", "1", "--epochs", "3")) == 0
    trials, late = study(db_url).get_trials(), others["asked"]
    assert late is not None and others["seconds"] > 0
    assert trials[late].user_attrs.get(budget.SURPLUS) and not trials[late].intermediate_values
    assert [t.number for t in trials if budget.REFIT_OF in t.user_attrs] == [late + 1]
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    assert sorted(r["number"] for r in rows) == [*range(late), late + 1]  # nothing trains beside the refit


def test_a_refit_slower_than_planned_stops_at_the_budget_and_is_still_the_result(
        sweep_data: Path, db_url: str, epoch_clock, monkeypatch) -> None:
    def spent(self, arch: str) -> float:  # the refit's epochs cost twice the pace it was planned at
        return float(sum((2 if budget.REFIT_OF in t.user_attrs else 1)
                         * (len(t.intermediate_values) - t.user_attrs.get(budget.RESUME_AT, 0)) for t in self.trials(arch)))
    monkeypatch.setattr(sweep_job.Worker, "spent", spent)
    assert sweep_job.main(argv(sweep_data, db_url, 50, "--timeout", "24", "--min-epochs", "1", "--epochs", "3")) == 0
    trials = study(db_url).get_trials()
    refit = next(t for t in trials if budget.REFIT_OF in t.user_attrs)
    planned = refit.user_attrs[sweep_job.REFIT_EPOCHS]
    trained = len(refit.intermediate_values)
    assert refit.state == TrialState.COMPLETE and trained < planned
    assert search_epochs(trials) + 2 * trained in (24, 25)  # stopped at the budget, within one epoch
    row = next(r for r in Store(db_url, read_only=True).study_trials("t/unet") if r["number"] == refit.number)
    assert row["state"] == "complete" and row["epochs_run"] == trained and row["test_dice"] is not None


def test_the_refit_trains_as_many_ensemble_members_as_its_budget_affords_at_full_length_each(
        sweep_data: Path, db_url: str, epoch_clock, monkeypatch) -> None:
    def spent(self, arch: str) -> float:  # an ensemble's epoch costs one second per member
        return float(sum(t.user_attrs.get(sweep_job.REFIT_MEMBERS, 1)
                         * (len(t.intermediate_values) - t.user_attrs.get(budget.RESUME_AT, 0)) for t in self.trials(arch)))
    monkeypatch.setattr(sweep_job.Worker, "spent", spent)
    # 70 s, 35 for the search; three members would get 10 epochs each, under 4 x 3: two get 16
    assert sweep_job.main(argv(sweep_data, db_url, 50, "--timeout", "70", "--min-epochs", "1", "--epochs", "3",
                               "--refit-members", "3")) == 0
    trials = study(db_url).get_trials()
    refit = next(t for t in trials if budget.REFIT_OF in t.user_attrs)
    searched = search_epochs(trials)
    assert refit.user_attrs[sweep_job.REFIT_MEMBERS] == 2
    assert refit.user_attrs[sweep_job.REFIT_EPOCHS] == len(refit.intermediate_values) == (70 - searched - 2) // 2
    row = next(r for r in Store(db_url, read_only=True).study_trials("t/unet") if r["number"] == refit.number)
    assert row["params"]["members"] == 2 and row["test_dice"] is not None
    weights = torch.load(row["checkpoint"], weights_only=False)["state_dict"]
    build_model("unet", width=0.125, members=2).load_state_dict(weights)  # the checkpoint holds both members


@pytest.mark.parametrize("timeout, warm", [(24, True), (100, False)])
def test_a_refit_too_short_to_out_train_its_search_starts_from_the_weights_its_search_ended_with(
        sweep_data: Path, db_url: str, epoch_clock, monkeypatch, timeout: int, warm: bool) -> None:
    handed = {}

    def spy(*args, **kwargs):
        if kwargs["init_from"] is not None:
            handed[kwargs["number"]] = (kwargs["init_from"], kwargs["init_from"].is_file())
        return run_trial(*args, **kwargs)
    run_trial = sweep_job.run_trial
    monkeypatch.setattr(sweep_job, "run_trial", spy)
    assert sweep_job.main(argv(sweep_data, db_url, 50, "--timeout", str(timeout), "--min-epochs", "1",
                               "--epochs", "3")) == 0
    trials = study(db_url).get_trials()
    refit = next(t for t in trials if budget.REFIT_OF in t.user_attrs)
    row = next(r for r in Store(db_url, read_only=True).study_trials("t/unet") if r["number"] == refit.number)
    # 24 s leaves the refit under 4 x 3 epochs; 100 s affords it its cap of 8 x 3
    assert (refit.user_attrs[sweep_job.REFIT_EPOCHS] < sweep_job.REFIT_MIN_FACTOR * 3) is warm
    if not warm:
        assert sweep_job.REFIT_INIT not in refit.user_attrs and "init_from" not in row["params"] and not handed
        return
    config = refit.user_attrs[budget.REFIT_OF]
    source, path = refit.user_attrs[sweep_job.REFIT_INIT]
    own = [t.number for t in trials if budget.REFIT_OF not in t.user_attrs and not t.user_attrs.get(budget.SURPLUS)
           and t.user_attrs.get(budget.RESUME_OF, t.number) == config]
    assert source == max(own)  # where that configuration's search training ended
    assert Path(path).name in (f"trial-{source}.pt", f"config-{config}.pt")  # its checkpoint, or its paused state
    assert handed == {refit.number: (Path(path), True)}
    assert row["params"]["init_from"] == source and row["state"] == "complete"


def test_the_quick_presets_refit_is_one_network_when_the_budget_affords_no_second(
        sweep_data: Path, db_url: str, epoch_clock) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 50, "--timeout", "24", "--min-epochs", "1", "--epochs", "3")) == 0
    refit = next(t for t in study(db_url).get_trials() if budget.REFIT_OF in t.user_attrs)
    assert refit.user_attrs[sweep_job.REFIT_MEMBERS] == 1


def test_a_promoted_configuration_continues_from_where_it_paused(sweep_data: Path, db_url: str, epoch_clock,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(sweep_job.schedule, "goes_on", lambda *a: False)  # every promotion goes through a pause
    assert sweep_job.main(argv(sweep_data, db_url, 3, "--timeout", "100", "--min-epochs", "1", "--epochs", "3",
                               "--refit-share", "0.5")) == 0
    trials = study(db_url).get_trials()
    continued = [t for t in trials if budget.RESUME_OF in t.user_attrs]
    assert len(continued) == 1  # three arrivals at rung 1: the best of them goes on
    cont = continued[0]
    first = trials[cont.user_attrs[budget.RESUME_OF]]
    assert first.state == TrialState.PRUNED and sorted(first.intermediate_values) == [0]
    assert cont.params == first.params and cont.user_attrs[budget.RESUME_AT] == 1
    assert sorted(cont.intermediate_values) == [0, 1, 2] and cont.intermediate_values[0] == first.intermediate_values[0]
    store = Store(db_url, read_only=True)
    rows = {r["number"]: r for r in store.study_trials("t/unet")}
    row = rows[cont.number]
    assert row["params"]["resumed_from"] == first.number and row["epochs_run"] == 3
    curve = queries.epoch_curves(store, [row["id"]])
    first_curve = queries.epoch_curves(store, [rows[first.number]["id"]])
    assert curve["epoch"].tolist() == [0, 1, 2]
    assert curve["val_dice"].iloc[0] == pytest.approx(first_curve["val_dice"].iloc[0])
    paused = sweep_job.checkpoint_root(db_url) / "t" / "unet" / "paused"
    assert not paused.exists() or not any(paused.iterdir())  # the refit cleared what the search left


@pytest.mark.slow
def test_two_workers_spend_one_time_budget_and_refit_once(sweep_data: Path, db_url: str) -> None:
    # 16 s of training for the architecture: 8 s of search shared by both workers, then one refit
    cmd = [sys.executable, "-m", "jobs.sweep", *argv(sweep_data, db_url, 100, "--timeout", "16", "--min-epochs", "1",
                                                     "--epochs", "3")]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "Traceback" not in err, err
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    search = [r for r in rows if "refit_of" not in r["params"]]
    refits = [r for r in rows if "refit_of" in r["params"]]
    assert len(refits) == 1 and refits[0]["state"] == "complete"
    seconds = [(r["finished_at"] - r["started_at"]).total_seconds() for r in search]
    # the search stops once its share is spent; each worker may only finish the epoch it is in
    assert sum(seconds) <= 8 + 2 * max(seconds)
    assert refits[0]["started_at"] >= max(r["finished_at"] for r in search)  # the refit came after every search trial


def test_a_trial_stopped_by_ctrl_c_is_recorded_as_interrupted_and_run_again(sweep_data: Path, db_url: str,
                                                                            monkeypatch, capsys) -> None:
    import core.training.trial as trial_module

    real_fit, calls = trial_module.fit, []

    def fit_then_ctrl_c(cfg, data, **kwargs):
        calls.append(cfg)
        if len(calls) == 2:  # the user presses Ctrl-C during the second trial
            raise KeyboardInterrupt
        return real_fit(cfg, data, **kwargs)

    monkeypatch.setattr(trial_module, "fit", fit_then_ctrl_c)
    assert sweep_job.main(argv(sweep_data, db_url, 2, "--refit-share", "0")) == 130
    assert "the interrupted one runs again" in capsys.readouterr().err
    store = Store(db_url, read_only=True)
    first = store.study_trials("t/unet")
    assert [(r["number"], r["state"], r["error"]) for r in first] == [(0, "complete", None),
                                                                       (1, "failed", "interrupted (Ctrl-C)")]
    monkeypatch.setattr(trial_module, "fit", real_fit)
    assert sweep_job.main(argv(sweep_data, db_url, 2, "--refit-share", "0")) == 0
    rows = store.study_trials("t/unet")
    assert [(r["number"], r["state"]) for r in rows] == [(0, "complete"), (1, "failed"), (2, "complete")]
    assert rows[2]["params"] == rows[1]["params"]  # the same configuration, run again
    assert len(budget.counted(study(db_url).get_trials())) == 2


def test_auto_width_takes_the_widest_the_budget_trains_long_enough_and_keeps_it(sweep_data: Path, db_url: str,
                                                                                 monkeypatch) -> None:
    seconds_per_step = {1.0: 1.0, 0.5: 0.01, 0.25: 0.005}  # full width would afford only a few epochs
    monkeypatch.setattr(sweep_job, "step_seconds", lambda cfg: seconds_per_step[cfg.width])
    args = argv(sweep_data, db_url, 1, "--refit-share", "0")
    args[args.index("--width") + 1] = "auto"
    assert sweep_job.main(args) == 0
    assert study(db_url).user_attrs["width"] == 0.5
    assert Store(db_url, read_only=True).study_trials("t/unet")[0]["params"]["width"] == 0.5
    monkeypatch.setattr(sweep_job, "step_seconds", lambda cfg: 1e-6)  # a faster machine joins: same study, same width
    assert sweep_job.main(args[:args.index("--trials") + 1] + ["2"] + args[args.index("--trials") + 2:]) == 0
    assert {r["params"]["width"] for r in Store(db_url, read_only=True).study_trials("t/unet")} == {0.5}


@pytest.mark.parametrize("epochs_at, members, width", [
    ({1.0: 200, 0.5: 500, 0.25: 1000}, 1, 1.0),
    ({1.0: 200, 0.5: 500, 0.25: 1000}, 2, 0.5),   # half width leaves room for two members
    ({1.0: 20, 0.5: 200, 0.25: 1000}, 2, 0.5),    # but members never push it below half: one network
])
def test_auto_width_leaves_room_for_each_member_of_the_refits_ensemble_down_to_half_width(
        sweep_data: Path, db_url: str, monkeypatch, epochs_at: dict, members: int, width: float) -> None:
    batches = len(prepare_dataset(sweep_data, 32, log=lambda _: None).indices("train")) // 8
    # epochs_at: epochs the 250 s budget affords at each width
    monkeypatch.setattr(sweep_job, "step_seconds", lambda cfg: 250 / epochs_at[cfg.width] / (1.25 * batches))
    args = argv(sweep_data, db_url, 1, "--refit-share", "0", "--refit-members", str(members))
    args[args.index("--width") + 1] = "auto"
    assert sweep_job.main(args) == 0
    assert study(db_url).user_attrs["width"] == width
