"""`python -m jobs.predict`: the result's masks at each image's own size, equal to the evaluation's, and
every bad input as one line; the result's checkpoint kept and its sha256 recorded."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from core.data.synthetic import generate_synthetic
from core.models.pretrained import file_sha256
from core.store import db as st
from core.store.db import Store, decode_mask
from jobs import predict
from jobs import sweep as sweep_job
from jobs import train as train_job
from tests.fake_training import FakeTraining

REPO = Path(__file__).resolve().parents[1]
_TRAINED: dict[str, tuple[str, dict]] = {}  # one tiny training per dataset for the whole session (test_export too)


def trained(tmp_path_factory: pytest.TempPathFactory, key: str, *data_args: str, image_size: int = 32,
            members: int = 2, epochs: int = 1) -> tuple[str, dict]:
    """(database, its one trial's row) after a short run (lr 3e-3) of a tiny unet (flip TTA) on the data."""
    if key not in _TRAINED:
        folder = tmp_path_factory.mktemp(f"trained-{key}")
        db = str(folder / "results.db")
        code = train_job.main([*data_args, "--arch", "unet", "--width", "0.125", "--members", str(members),
                               "--epochs", str(epochs), "--lr", "3e-3", "--image-size", str(image_size), "--db", db, "--no-progress",
                               "--name", key, "--checkpoint", str(folder / "weights.pt")])
        assert code == 0
        [row] = Store(db, read_only=True).study_trials(f"{key}/unet")
        _TRAINED[key] = db, row
    return _TRAINED[key]


def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "predict-synthetic"
    return path if (path / "SYNTHETIC.md").exists() else generate_synthetic(path, n_images=40, image_size=64, seed=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, Path]:
    root = synthetic_root(tmp_path_factory)
    db, row = trained(tmp_path_factory, "synthetic", "--data", "synthetic", "--data-root", str(root), epochs=6)
    return db, row, root


def stored_masks(db: str, trial_id: int) -> dict[str, np.ndarray]:
    """Image name -> the mask the store holds for the trial (evaluation size)."""
    store = Store(db, read_only=True)
    with store.engine.connect() as conn:
        rows = conn.execute(select(st.images.c.name, st.masks.c.png)
                            .join_from(st.masks, st.images, st.images.c.id == st.masks.c.image_id)
                            .where(st.masks.c.trial_id == trial_id)).all()
    return {name: decode_mask(png).astype(bool) for name, png in rows}


def at_evaluation_size(path: Path, size: int) -> np.ndarray:
    """A written mask brought to the evaluation size by the truth's rule (nearest)."""
    return np.asarray(Image.open(path).resize((size, size), Image.Resampling.NEAREST)) > 0


def assert_masks_equal_the_store(db: str, row: dict, out: Path) -> int:
    expected = stored_masks(db, row["id"])
    share = np.mean([m.mean() for m in expected.values()])
    assert 0.05 < share < 0.95, f"a trivial model ({share:.3f} foreground) would prove nothing"
    for name, mask in expected.items():
        mine = at_evaluation_size(out / f"{name}.png", row["image_size"])
        assert np.array_equal(mine, mask), f"{name}: {np.count_nonzero(mine != mask)} pixels differ"
    return len(expected)


def run_main(argv: list[str], capsys, main=predict.main) -> tuple[int, str, str]:
    """A job's main in this process: (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the result's weights -------------------------------------------------------------------------

@pytest.mark.parametrize("keep", ["none", "best", "all"])
def test_the_result_keeps_its_checkpoint_whatever_keep_checkpoints_says(tmp_path: Path, db_url: str, keep: str,
                                                                         monkeypatch) -> None:
    root = generate_synthetic(tmp_path / "data", n_images=24, image_size=64, seed=1)
    curves = {}
    fake = FakeTraining(lambda lr, epoch: curves.setdefault(round(lr, 10), 0.3 + 0.1 * len(curves)))
    monkeypatch.setattr(sweep_job, "run_trial", fake)
    assert sweep_job.main(["--data", "synthetic", "--data-root", str(root), "--db", db_url, "--name", "t",
                           "--archs", "unet", "--trials", "3", "--epochs", "1", "--image-size", "32", "--width",
                           "0.125", "--pruner", "none", "--no-progress", "--keep-checkpoints", keep]) == 0
    rows = Store(db_url, read_only=True).study_trials("t/unet")
    from core.store import selection
    result = selection.best_trial(rows)
    assert result is not None and selection.is_refit(result["params"])
    assert result["checkpoint"] and Path(result["checkpoint"]).is_file()
    kept = sorted(r["number"] for r in rows if r["checkpoint"])
    on_disk = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "checkpoints" / "t" / "unet").glob("trial-*.pt"))
    assert kept == on_disk
    assert kept == ([r["number"] for r in rows] if keep == "all" else [result["number"]])


def test_a_trial_records_its_checkpoint_sha256_and_the_precision_it_was_evaluated_in(synthetic) -> None:
    import torch

    _, row, _ = synthetic
    assert row["checkpoint_sha256"] == file_sha256(Path(row["checkpoint"]))
    meta = torch.load(row["checkpoint"], weights_only=True)
    assert meta["device"] == "cpu" and meta["amp"] in ("bf16", "off") and isinstance(meta["channels_last"], bool)


# -- masks --------------------------------------------------------------------------------------------

def test_masks_brought_to_the_evaluation_size_equal_the_stored_ones_on_the_synthetic_set(synthetic, tmp_path,
                                                                                         capsys) -> None:
    db, row, root = synthetic
    out = tmp_path / "preds"
    code, stdout, _ = run_main(["--db", db, "--images", str(root / "images"), "--out", str(out), "--probabilities",
                                "--no-progress"], capsys)
    assert code == 0, stdout
    assert "unet trial 0" in stdout and "flip TTA" in stdout and "2 members" in stdout
    assert assert_masks_equal_the_store(db, row, out) > 0
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    assert [r["name"] for r in rows] == names and {r["trial"] for r in rows} == {"synthetic/unet #0"}
    for r in rows[:5]:
        mask = np.asarray(Image.open(out / f"{r['name']}.png"))
        prob = np.asarray(Image.open(out / "probabilities" / f"{r['name']}.png"))
        with Image.open(root / "images" / f"{r['name']}.jpg") as image:
            assert mask.shape == prob.shape == (image.height, image.width) == (int(r["height"]), int(r["width"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert float(r["foreground_share"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert np.array_equal(mask > 0, prob >= 128)
        assert 0.5 <= float(r["mean_confidence"]) <= 1


def test_pets_sample_masks_equal_the_stored_ones(pets_root: Path, tmp_path_factory, tmp_path, capsys) -> None:
    db, row = trained(tmp_path_factory, "pets", "--data", "oxford-pets", "--data-root", str(pets_root),
                      image_size=64, members=1, epochs=3)
    out = tmp_path / "preds"
    code, stdout, _ = run_main(["--db", db, "--images", str(pets_root / "images"), "--out", str(out),
                                "--no-progress"], capsys)
    assert code == 0, stdout
    assert assert_masks_equal_the_store(db, row, out) == 60


def test_busi_sample_masks_equal_the_stored_ones_names_with_spaces(busi_root: Path, tmp_path_factory, tmp_path,
                                                                   capsys) -> None:
    db, row = trained(tmp_path_factory, "busi", "--data", "auto", "--data-root", str(busi_root), image_size=64,
                      members=1, epochs=3)
    out = tmp_path / "preds"
    code, stdout, _ = run_main(["--db", db, "--data-root", str(busi_root), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, stdout
    assert assert_masks_equal_the_store(db, row, out) > 0
    assert (out / "benign" / "benign (1).png").is_file()


def test_other_sizes_modes_and_names_come_back_at_their_own_size_and_unreadable_files_are_named(
        synthetic, tmp_path, capsys) -> None:
    db, _, _ = synthetic
    folder = tmp_path / "new images"
    (folder / "sub dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (41, 97, 4), dtype=np.uint8), "RGBA").save(folder / "wide one.png")
    Image.fromarray(rng.integers(0, 65535, (120, 50), dtype=np.uint16)).save(folder / "sub dir" / "tall 16bit.tif")
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "photo.JPG")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, stdout, err = run_main(["--db", db, "--images", str(folder), "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    for name, size in (("wide one", (97, 41)), ("sub dir/tall 16bit", (50, 120)), ("photo", (200, 300))):
        with Image.open(out / f"{name}.png") as mask:
            assert mask.size == size and mask.mode == "L"
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken.png (truncated or unreadable)" in skipped[0] and "notes" not in err
    with open(out / "predictions.csv", newline="") as f:
        assert [(r["name"], r["width"], r["height"]) for r in csv.DictReader(f)] == [
            ("photo", "200", "300"), ("sub dir/tall 16bit", "50", "120"), ("wide one", "97", "41")]


# -- bad input: one line, exit 2 ------------------------------------------------------------------------

def one_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("jobs.predict: error:") and "Traceback" not in err, err
    assert fragment in err, err


def test_a_store_without_a_complete_trial_is_one_line(tmp_path: Path, capsys) -> None:
    store = Store(tmp_path / "r.db")
    store.start_trial(sweep="s", study="s/unet", arch="unet", number=0, params={}, device="cpu", dataset="d",
                      image_size=32)
    (tmp_path / "images").mkdir()
    code, _, err = run_main(["--db", str(tmp_path / "r.db"), "--images", str(tmp_path / "images"),
                             "--out", str(tmp_path / "out")], capsys)
    one_line(code, err, "has no complete trial yet")


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "was altered since the sweep wrote it"),
])
def test_a_missing_or_altered_checkpoint_is_one_line(synthetic, tmp_path, capsys, damage, fragment) -> None:
    import shutil

    db, row, root = synthetic
    copy = tmp_path / "r.db"
    shutil.copy(db, copy)
    weights = tmp_path / "weights.pt"
    shutil.copy(row["checkpoint"], weights)
    Store(copy).set_checkpoint(row["id"], str(weights), sha256=row["checkpoint_sha256"])
    damage(weights)
    code, _, err = run_main(["--db", str(copy), "--images", str(root / "images"), "--out", str(tmp_path / "o")], capsys)
    one_line(code, err, fragment)


def test_an_empty_folder_is_one_line(synthetic, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    code, _, err = run_main(["--db", synthetic[0], "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                            capsys)
    one_line(code, err, "no images in")


def test_an_output_folder_that_would_overwrite_the_images_is_one_line(synthetic, tmp_path, capsys) -> None:
    db, _, root = synthetic
    folder = tmp_path / "images"
    (folder / "masks").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(folder / "a.png")
    code, _, err = run_main(["--db", db, "--images", str(folder), "--out", str(folder / "masks" / "..")], capsys)
    one_line(code, err, "is the input folder")
    # a dataset folder: its images/ (same names) or anywhere below it would overwrite or add to its data
    code, _, err = run_main(["--db", db, "--data-root", str(root), "--out", str(root / "images")], capsys)
    one_line(code, err, "is inside the dataset folder")
    # --out inside --images is fine: the masks do not replace an image, and are not read back as images
    Image.new("RGB", (40, 40)).save(folder / "masks" / "a.png")  # e.g. a first run's mask
    code, stdout, err = run_main(["--db", db, "--images", str(folder), "--out", str(folder / "masks"),
                                  "--no-progress"], capsys)
    assert code == 0 and "1 images" in stdout and "skipped" not in err


def test_an_output_file_that_is_an_input_image_is_one_line(synthetic, tmp_path, capsys) -> None:
    db = synthetic[0]
    inputs, out = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    out.mkdir()
    Image.new("RGB", (40, 40)).save(inputs / "sub" / "x.png")
    (out / "sub").symlink_to(inputs / "sub")  # out/sub/x.png is the input image itself
    code, _, err = run_main(["--db", db, "--images", str(inputs), "--out", str(out)], capsys)
    one_line(code, err, "would overwrite the input image")


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "jobs.predict", "--db", str(tmp_path / "none.db"), "--images",
                           str(tmp_path / "images"), "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    one_line(proc.returncode, proc.stderr, "no results database at")


# -- the dashboard -------------------------------------------------------------------------------------

def test_home_shows_the_predict_and_export_commands_of_each_result(synthetic, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    db, _, _ = synthetic
    monkeypatch.setenv("RESULTS_DB", db)
    at = AppTest.from_file(str(REPO / "dashboard" / "Home.py"), default_timeout=90)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [code] = [c.value for c in at.code if "jobs.predict" in c.value]
    assert f"python -m jobs.predict --db {db} --sweep synthetic --arch unet --images YOUR_IMAGES" in code
    assert f"python -m jobs.export --db {db} --sweep synthetic --arch unet --format onnx --out unet.onnx" in code
