"""`python -m jobs.sweep`: baseline first, pruning, resume, shared budgets, per-image rows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core.store import db as st
from core.store.optuna_storage import load_study
from core.store.db import Store
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
    assert [r["number"] for r in rows] == [0, 1] and {r["state"] for r in rows} == {"complete"}
    assert rows[0]["params"]["lr"] == pytest.approx(1e-4) and rows[0]["params"]["aug_rotate"] == 15
    n_test = store.count(st.images, split="test")
    assert n_test > 0 and store.count(st.image_results) == n_test * 2 and store.count(st.masks) == n_test * 2
    with_ckpt = [r for r in rows if r["checkpoint"]]
    assert len(with_ckpt) == 1 and Path(with_ckpt[0]["checkpoint"]).is_file()  # --keep-checkpoints best


def test_running_again_continues_and_a_larger_budget_adds_the_difference(sweep_data: Path, db_url: str) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
    store = Store(db_url, read_only=True)
    assert len(store.study_trials("t/unet")) == 2
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
    assert len(store.study_trials("t/unet")) == 2
    assert sweep_job.main(argv(sweep_data, db_url, 3)) == 0
    assert [r["number"] for r in store.study_trials("t/unet")] == [0, 1, 2]


def test_changed_settings_under_the_same_name_are_refused(sweep_data: Path, db_url: str, capsys) -> None:
    assert sweep_job.main(argv(sweep_data, db_url, 1)) == 0
    with pytest.raises(SystemExit) as info:
        sweep_job.main(argv(sweep_data, db_url, 1) + ["--epochs", "3"])
    assert info.value.code == 1 and "other settings (epochs 2 -> 3)" in capsys.readouterr().err


def test_pruned_trials_keep_their_curves(sweep_data: Path, db_url: str, monkeypatch) -> None:
    monkeypatch.setattr(sweep_job, "make_pruner", lambda kind, epochs: optuna.pruners.ThresholdPruner(lower=2.0))
    assert sweep_job.main(argv(sweep_data, db_url, 2)) == 0
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
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in budget.counted(trials))
    assert {r["state"] for r in rows} <= {"complete", "pruned"}
    # each trial is reported by exactly one worker; surplus asks are never reported
    reported = [line.split()[2] for out, _ in outs for line in out.splitlines() if line.strip().startswith("unet trial")]
    assert sorted(int(n) for n in reported) == sorted(r["number"] for r in rows)
