"""`python -m jobs.check_data`: what it prints, its exit codes and one-line errors; and a job that trains on
a user's folder prints the same check and records the layout, groups and paths in the store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from core.store import schema
from core.store.db import Store
from jobs import check_data
from jobs import train as train_job


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_busi_sample_is_usable_and_reported_in_a_few_lines(busi_root: Path, capsys) -> None:
    """The check README's "Your own data" describes, line by line; the splits are the hash rule's, so they are
    pinned too."""
    assert check_data.main(["--data-root", str(busi_root)]) == 0
    assert _lines(capsys.readouterr().out) == [f"jobs.check_data: {line}" for line in [
        f"layout: paired-folders in {busi_root}",
        'pairs: 197 images with a mask (mask name suffix "_mask"); 0 images without a mask; 0 masks without an image',
        "mask files: 168 1-bit {0,1}, 34 RGB {0}; foreground = non-zero; 5 images with several masks, united",
        "masks resized to their image: 0; empty masks (background only): 34; unreadable files: 0",
        "images: 176x151 to 256x256 px, each resized to 64x64 (aspect ratio not kept)",
        "splits: 145 train / 10 val / 42 test",
        "  no split folders: split by a hash of each name (or --group-by key), 70/10/20 train/val/test",
        "groups: benign 110, malignant 53, normal 34",
        "usable: 197 images",
    ]]


def test_the_pets_sample_gets_a_one_line_summary(pets_root: Path, capsys) -> None:
    assert check_data.main(["--data-root", str(pets_root)]) == 0
    out = _lines(capsys.readouterr().out)
    assert out[0] == f"jobs.check_data: layout: oxford-pets in {pets_root}; 160 images (90 train / 10 val / 60 test)"


@pytest.mark.parametrize("make, fragment", [
    (lambda root: None, "does not exist"),
    (lambda root: (root / "photos").mkdir(parents=True), "no image folder beside a mask folder"),
    (lambda root: [(root / d).mkdir(parents=True) for d in ("images", "masks")], "no image with a mask found"),
    (lambda root: [(root / d).mkdir(parents=True) for d in ("imagesTr", "labelsTr")]
     and (root / "imagesTr" / "a_0000.nii.gz").write_bytes(b"\0"), "holds volumes"),
])
def test_unusable_data_exits_1_with_a_one_line_reason(make, fragment, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    make(root)
    assert check_data.main(["--data-root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jobs.check_data: error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_wrong_foreground_shows_what_was_read_then_why_it_is_unusable(busi_root: Path, capsys) -> None:
    benign = busi_root / "benign"
    assert check_data.main(["--images", str(benign / "images"), "--masks", str(benign / "mask"),
                            "--foreground", "255"]) == 1
    out, err = capsys.readouterr()
    assert "layout: two-folders" in out and "114 1-bit {0,1}; foreground = values 255 (--foreground)" in out
    assert err.strip() == (f"jobs.check_data: error: every mask in {benign} is empty (no foreground pixel with "
                           f"foreground = values 255 (--foreground)); check --foreground")


@pytest.mark.parametrize("argv, code, fragment", [
    (["--data-root", "x", "--foreground", "white"], 2, "expected whole mask values"),
    (["--data-root", "x", "--group-by", "p(\\d"], 2, "not a regular expression"),
    ([], 2, "give the folder to check"),
    (["--images", "somewhere"], 1, "--images and --masks go together"),
])
def test_flag_errors_are_one_line(argv, code, fragment, capsys) -> None:
    try:
        result = check_data.main(argv)
    except SystemExit as exc:
        result = exc.code
    err = capsys.readouterr().err
    assert result == code and fragment in err and err.count("\n") == 1


def test_a_training_run_on_a_users_folder_records_layout_groups_and_paths(busi_root: Path, tmp_path: Path,
                                                                           capsys) -> None:
    root = tmp_path / "lesions"
    for cls, split, files in (("benign", "train", slice(0, 10)), ("malignant", "train", slice(0, 6)),
                              ("benign", "test", slice(10, 14)), ("malignant", "test", slice(6, 9))):
        for path in sorted((busi_root / cls / "images").glob("*.png"))[files]:
            (root / split / cls / "images").mkdir(parents=True, exist_ok=True)
            (root / split / cls / "masks").mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").resize((40, 32)).save(root / split / cls / "images" / path.name)
            mask = np.asarray(Image.open(busi_root / cls / "mask" / f"{path.stem}_mask.png")) != 0
            Image.fromarray(mask.astype(np.uint8) * 255).resize((40, 32)).save(
                root / split / cls / "masks" / f"{path.stem}_mask.png")
    db = f"sqlite:///{tmp_path / 'results.db'}"
    assert train_job.main(["--data-root", str(root), "--arch", "unet", "--width", "0.125", "--epochs", "1",
                           "--image-size", "32", "--batch-size", "4", "--db", db, "--no-progress", "--name", "own"]) == 0
    out = capsys.readouterr().out
    assert f"jobs.train: layout: paired-folders in {root}" in out and "jobs.train: groups: benign 14, malignant 9" in out
    store = Store(db, read_only=True)
    with store.engine.connect() as conn:
        assert conn.execute(select(schema.datasets.c.name, schema.datasets.c.source, schema.datasets.c.layout)).all() \
            == [("folder/lesions", "folder", "paired-folders")]
        rows = conn.execute(select(schema.images.c.name, schema.images.c.split, schema.images.c.group_name,
                                   schema.images.c.path, schema.images.c.breed)).all()
        tested = conn.execute(select(schema.image_results.c.image_id)).all()
    assert len(rows) == 23 and len(tested) == 7
    first = next(r for r in rows if r.name.startswith("test/malignant/"))
    assert first.split == "test" and first.group_name == "malignant" and first.breed == ""
    assert first.path == f"{first.name.replace('test/malignant/', 'test/malignant/images/')}.png"
    assert (root / first.path).is_file()
    [trial] = store.study_trials("own/unet")
    assert trial["state"] == "complete" and trial["dataset"] == "folder/lesions"
