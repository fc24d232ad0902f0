"""`python -m jobs.sweep`: baseline first, pruning, resume, shared budgets, per-image rows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core.store import db as st
from core.store import queries
from core.store.optuna_storage import load_study
from core.store.db import Store
from core.data.synthetic import generate_synthetic
from jobs import budget
from jobs import sweep as sweep_job
from jobs.search_space import BASELINE
from tests.fake_training import FakeTraining

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


def test_a_sweep_whose_every_trial_diverges_records_each_as_failed_in_the_store_and_optuna(
        sweep_data: Path, db_url: str, diverging_loss) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    assert [r["state"] for r in rows] == ["failed", "failed"]
    assert all("non-finite loss" in r["error"] for r in rows)
    assert [t.state for t in study(db_url).get_trials()] == [TrialState.FAIL] * 2


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


def rising(lr: float, epoch: int) -> float:
    """A validation curve that rises with the epochs, higher for a larger learning rate."""
    return min(0.95, 0.3 + 0.1 * epoch + 20 * lr)


def test_a_promoted_configuration_continues_from_where_it_paused(sweep_data: Path, db_url: str, monkeypatch) -> None:
    monkeypatch.setattr(sweep_job, "run_trial", FakeTraining(rising))
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
    monkeypatch.setattr(sweep_job, "run_trial", FakeTraining(rising))
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


def test_keeping_only_the_best_checkpoint_keeps_the_weights_a_short_refit_starts_from(
        sweep_data: Path, db_url: str, monkeypatch) -> None:
    # The baseline (lr 1e-4) peaks mid-run and ends low: the deepest-rung-then-peak rule refits it,
    # while the last-epoch dice the store records ranks another trial first. The refit's start
    # must still find the baseline's weights on disk.
    peaks = {1e-4: [0.5, 0.9, 0.6]}
    fake = FakeTraining(lambda lr, epoch: peaks.get(round(lr, 10), [0.4, 0.6, 0.7])[min(epoch, 2)])
    monkeypatch.setattr(sweep_job, "run_trial", fake)
    monkeypatch.setattr(sweep_job.schedule, "REFIT_MAX_FACTOR", 2)  # a refit shorter than 4 search trials: warm start
    assert sweep_job.main(argv(sweep_data, db_url, 2, "--pruner", "none", "--min-epochs", "1", "--epochs", "3",
                               "--keep-checkpoints", "best", "--refit-members", "1")) == 0
    refit = next(t for t in study(db_url).get_trials() if budget.REFIT_OF in t.user_attrs)
    assert refit.user_attrs[budget.REFIT_OF] == 0
    assert [(c["number"], c["init_found"]) for c in fake.calls if c["init_from"]] == [(refit.number, True)]
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    assert rows[-1]["params"]["init_from"] == 0
    assert [r["number"] for r in rows if r["checkpoint"]] == [refit.number]  # the refit, once done, alone
