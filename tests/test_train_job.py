"""`python -m jobs.train`: argument errors, and one recorded run that fills every table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from core.data.synthetic import generate_synthetic
from core.store import db as st
from core.store.db import Store
from jobs import train as train_job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, fragment", [
    (["--arch", "vgg"], "unknown architecture 'vgg'"),
    (["--lr", "0"], "must be > 0"),
    (["--lr=-1e-3"], "must be > 0"),
    (["--epochs", "0"], "must be >= 1"),
    (["--epochs", "two"], "not a whole number"),
    (["--hflip", "1.5"], "probability"),
    (["--data-root", "/no/such/folder"], "does not exist"),
    (["--bce-weight", "0", "--dice-weight", "0"], "must be > 0"),
    (["--keep", "worst"], "invalid choice: 'worst'"),
    (["--members", "0"], "must be >= 1"),
])
def test_invalid_arguments_exit_2_with_one_line(argv, fragment, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        train_job.parse_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_keep_best_reaches_the_training_config() -> None:
    assert train_job.config_from_args(train_job.parse_args([])).keep == "last"
    assert train_job.config_from_args(train_job.parse_args(["--keep", "best"])).keep == "best"


def test_members_reaches_the_training_config() -> None:
    assert train_job.config_from_args(train_job.parse_args([])).members == 1
    assert train_job.config_from_args(train_job.parse_args(["--members", "3"])).members == 3


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "jobs.train", "--data", "oxford-pets", "--data-root",
                           str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("jobs.train: error:") and "Traceback" not in proc.stderr


def test_unwritable_database_folder_is_a_one_line_error(tmp_path: Path, pets_root: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        train_job.main(["--data-root", str(pets_root), "--db", str(tmp_path / "no" / "r.db"), "--epochs", "1"])
    assert info.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_run_name_used_before_is_a_one_line_error_and_the_first_run_is_kept(tmp_path: Path, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'results.db'}"
    root = generate_synthetic(tmp_path / "synthetic", n_images=24, image_size=64, seed=1)
    argv = ["--data", "synthetic", "--data-root", str(root), "--arch", "unet", "--width", "0.125",
            "--epochs", "1", "--image-size", "32", "--db", db, "--no-progress", "--name", "same"]
    assert train_job.main(argv) == 0
    with pytest.raises(SystemExit) as info:
        train_job.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and "\n" not in err and "Traceback" not in err
    assert err.startswith("jobs.train:") and "same/unet already has a trial 0" in err
    [trial] = Store(db, read_only=True).study_trials("same/unet")
    assert trial["state"] == "complete"


@pytest.mark.slow
def test_one_run_on_real_pets_fills_every_table_consistently(pets_root: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'results.db'}"
    ckpt = tmp_path / "best.pt"
    code = train_job.main(["--data", "oxford-pets", "--data-root", str(pets_root), "--arch", "unet", "--width",
                           "0.125", "--epochs", "2", "--image-size", "64", "--db", db, "--no-progress",
                           "--checkpoint", str(ckpt), "--name", "smoke"])
    assert code == 0
    store = Store(db, read_only=True)
    [trial] = store.study_trials("smoke/unet")
    assert trial["state"] == "complete" and trial["epochs_run"] == 2 and trial["dataset"] == "oxford-pets/oxford-pets-sample"
    assert trial["params"]["lr"] == pytest.approx(1e-3) and trial["params"]["dice_weight"] == pytest.approx(0.7)
    assert trial["params"]["flip_tta"] is True and trial["params"]["keep"] == "last"
    assert trial["checkpoint"] == str(ckpt) and ckpt.is_file()
    n_test = store.count(st.images, split="test")
    assert n_test == 60
    assert store.count(st.epochs, trial_id=trial["id"]) == 2
    assert store.count(st.image_results, trial_id=trial["id"]) == n_test
    assert store.count(st.masks, trial_id=trial["id"]) == n_test
    assert trial["test_dice"] == pytest.approx(store.test_dice_of(trial["id"]).mean())
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(st.datasets)).scalar() == 1
        assert conn.execute(select(func.min(st.epochs.c.images_per_s))).scalar() > 0
        last_val = conn.execute(select(st.epochs.c.val_dice).where(st.epochs.c.trial_id == trial["id"])
                                .order_by(st.epochs.c.epoch.desc()).limit(1)).scalar()
        dice = np.array(conn.execute(select(st.image_results.c.dice)).scalars().all())
        diag = conn.execute(select(st.image_results.c.failure_mode, st.image_results.c.entropy,
                                   st.image_results.c.boundary_iou, st.image_results.c.hd95)).all()
    assert trial["val_dice"] == pytest.approx(last_val)  # the kept weights are the last epoch's
    assert ((0 <= dice) & (dice <= 1)).all()
    # a v2 trial: every image has its diagnostics, entropy included, and a failure mode from the rule
    assert {mode for mode, *_ in diag} <= {"ok", "boundary", "missed object", "background leak", "empty prediction"}
    assert all(0 <= e <= 1 and 0 <= b <= 1 and h >= 0 for _, e, b, h in diag)
