"""core.data.synthetic: a deterministic, varied synthetic set in the official layout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.data.synthetic as synthetic
from core.data.dataset import DataError, PreparedDataset, prepare_dataset
from core.data.synthetic import BREEDS, SYNTHETIC_MARKER, default_synthetic_root, generate_synthetic

N, SIZE = 120, 64


@pytest.fixture(scope="module")
def data_synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "set", n_images=N, image_size=SIZE, seed=7)


@pytest.fixture(scope="module")
def data_synth(data_synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare_dataset(data_synth_root, SIZE, cache_dir=tmp_path_factory.mktemp("prepared"), log=lambda m: None)


def _lines(root: Path, name: str) -> list[list[str]]:
    text = (root / "annotations" / name).read_text().splitlines()
    return [line.split() for line in text if line and not line.startswith("#")]


def test_loads_with_nothing_skipped_and_both_species(data_synth: PreparedDataset) -> None:
    d = data_synth
    assert len(d.infos) == N and d.skipped == []
    assert d.source == "synthetic" and d.name == "synthetic/set"
    assert Counter(i.species for i in d.infos) == {"cat": N // 2, "dog": N // 2}
    assert {i.breed for i in d.infos} == {b.name for b in BREEDS}
    assert {(i.width, i.height) for i in d.infos} == {(SIZE, SIZE)}


def test_difficulty_spreads_widely_within_every_breed(data_synth: PreparedDataset) -> None:
    fg = np.array([i.fg_fraction for i in data_synth.infos])
    light = np.array([i.brightness for i in data_synth.infos])
    assert fg.min() < 0.06 and fg.max() > 0.4
    assert light.min() < 0.12 and light.max() > 0.7
    for breed in BREEDS:
        mine = [i for i in data_synth.infos if i.breed == breed.name]
        f = [i.fg_fraction for i in mine]
        b = [i.brightness for i in mine]
        assert max(f) > 3 * min(f), breed.name
        assert max(b) - min(b) > 0.3, breed.name


def test_every_trimap_is_an_l_png_with_pet_background_and_border(data_synth_root: Path) -> None:
    for path in sorted((data_synth_root / "annotations" / "trimaps").iterdir()):
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            assert set(np.unique(np.asarray(im))) == {1, 2, 3}, path.name
    with Image.open(next((data_synth_root / "images").iterdir())) as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")


def test_split_files_use_the_official_format_and_test_fraction(data_synth_root: Path) -> None:
    trainval, test, listed = (_lines(data_synth_root, f) for f in ("trainval.txt", "test.txt", "list.txt"))
    assert len(test) == round(N * 0.3) and len(trainval) + len(test) == N
    assert sorted(map(tuple, listed)) == sorted(map(tuple, trainval + test))
    ids = {}
    for name, class_id, species, breed_id in listed:
        breed = name.rsplit("_", 1)[0]
        ids.setdefault(breed, set()).add((class_id, species, breed_id))
    assert all(len(v) == 1 for v in ids.values())  # each breed has one consistent set of ids
    by_species = Counter(species for (_, species, _), in ids.values())
    assert by_species == {"1": 3, "2": 3}
    assert sorted(int(c) for (c, _, _), in ids.values()) == list(range(1, 7))


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", n_images=12, image_size=48, seed=3)
    b = generate_synthetic(tmp_path / "b", n_images=12, image_size=48, seed=3)
    c = generate_synthetic(tmp_path / "c", n_images=12, image_size=48, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 12 + 4
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    pixels = {p.read_bytes() for p in (a / "images").iterdir()}
    assert pixels.isdisjoint(p.read_bytes() for p in (c / "images").iterdir())
    marker = (a / SYNTHETIC_MARKER).read_text()
    assert "seed=3" in marker and "n_images=12" in marker and "image_size=48" in marker


def test_complete_set_is_returned_without_regenerating(tmp_path: Path, monkeypatch) -> None:
    root = generate_synthetic(tmp_path / "s", n_images=6, image_size=32, seed=0)
    monkeypatch.setattr(synthetic, "_write_dataset", lambda *a: pytest.fail("regenerated a complete set"))
    assert generate_synthetic(tmp_path / "s", n_images=6, image_size=32, seed=0) == root


def test_other_parameters_replace_an_old_synthetic_set(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "s", n_images=6, image_size=32, seed=0)
    root = generate_synthetic(tmp_path / "s", n_images=8, image_size=32, seed=0)
    assert len(list((root / "images").iterdir())) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # nothing left beside it


def test_failure_midway_leaves_no_root_and_no_debris(tmp_path: Path, monkeypatch) -> None:
    real = synthetic.render_image
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(synthetic, "render_image", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate_synthetic(tmp_path / "s", n_images=6, image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_directory_that_is_not_synthetic(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="is not a synthetic dataset"):
        generate_synthetic(tmp_path / "mine", n_images=4, image_size=32)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("kwargs", [{"n_images": 1}, {"image_size": 16}, {"test_fraction": 1.0}])
def test_bad_parameters_raise_data_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError):
        generate_synthetic(tmp_path / "s", **kwargs)


def test_default_root_lives_in_the_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGSWEEP_CACHE", str(tmp_path))
    assert default_synthetic_root(128, 0, 1000) == tmp_path / "data" / "synthetic-128px-1000-s0"
