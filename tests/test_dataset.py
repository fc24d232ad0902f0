"""core.data.dataset: reading the official layout, surviving real-world file quirks, caching."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.data.dataset as dataset
from core.data.dataset import DataError, ImageInfo, PreparedDataset, breed_of, detect_source, prepare_dataset, split_of
from tests.conftest import sample_root

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "oxford-pets-sample"


# --------------------------------------------------------------------------- helpers


def _trimap(w: int, h: int) -> np.ndarray:
    """Background frame, border ring, pet centre: all of 1, 2, 3."""
    t = np.full((h, w), 2, np.uint8)
    t[2:-2, 2:-2] = 3
    t[4:-4, 4:-4] = 1
    return t


def _write(root: Path, name: str, image: Image.Image | None = None, trimap: np.ndarray | None = None,
           fmt: str = "JPEG") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    image = image if image is not None else Image.new("RGB", (24, 16), (120, 60, 30))
    image.save(root / "images" / f"{name}.jpg", fmt)
    trimap = trimap if trimap is not None else _trimap(*image.size)
    Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")


def _splits(root: Path, trainval: list[str], test: list[str]) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trainval.txt").write_text("".join(f"{line}\n" for line in trainval))
    (root / "annotations" / "test.txt").write_text("".join(f"{line}\n" for line in test))


def _line(name: str, species: int = 1) -> str:
    return f"{name} 1 {species} 1"


def _tiny(root: Path, n_train: int = 3, n_test: int = 2) -> Path:
    train = [f"cat_{i}" for i in range(n_train)]
    test = [f"dog_{i}" for i in range(n_test)]
    for name in train + test:
        _write(root, name)
    _splits(root, [_line(n) for n in train], [_line(n, 2) for n in test])
    return root


class _Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


@pytest.fixture(scope="module")
def data_sample64(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare_dataset(sample_root("oxford-pets-sample"), 64, cache_dir=tmp_path_factory.mktemp("prepared"), log=_Log())


# --------------------------------------------------------------------------- the real sample


def test_real_sample_loads_every_listed_image(data_sample64: PreparedDataset) -> None:
    d = data_sample64
    assert len(d.infos) == 160 and d.skipped == []
    assert d.source == "oxford-pets" and d.name == "oxford-pets/oxford-pets-sample"
    assert d.images.shape == (160, 64, 64, 3) and d.images.dtype == np.uint8
    assert d.masks.shape == d.ignore.shape == (160, 64, 64) and d.masks.dtype == d.ignore.dtype == bool
    assert d.masks.any() and d.ignore.any() and not (d.ignore & ~d.masks).any()  # the band is part of the foreground
    assert Counter(i.breed for i in d.infos) == {"Abyssinian": 54, "Bengal": 53, "american_bulldog": 53}
    assert {i.breed: i.species for i in d.infos} == {"Abyssinian": "cat", "Bengal": "cat", "american_bulldog": "dog"}


def test_real_sample_splits_follow_test_list_and_name_hash(data_sample64: PreparedDataset) -> None:
    d = data_sample64
    test_names = {line.split()[0] for line in (SAMPLE / "annotations" / "test.txt").read_text().splitlines()}
    assert {i.name for i in d.infos if i.split == "test"} == test_names
    for info in d.infos:
        if info.split != "test":
            expect_val = int(hashlib.sha1(info.name.encode()).hexdigest(), 16) % 10 == 0
            assert info.split == ("val" if expect_val else "train"), info.name
    assert Counter(i.split for i in d.infos) == {"train": 90, "val": 10, "test": 60}


def test_real_sample_metadata_is_measured_on_the_original_files(data_sample64: PreparedDataset) -> None:
    info = next(i for i in data_sample64.infos if i.name == "Abyssinian_100")
    with Image.open(SAMPLE / "images" / "Abyssinian_100.jpg") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert (info.width, info.height) == im.size
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).mean() / 255
    assert info.brightness == pytest.approx(luma, abs=0.003)
    trimap = np.asarray(Image.open(SAMPLE / "annotations" / "trimaps" / "Abyssinian_100.png"))
    assert info.fg_fraction == pytest.approx(np.mean(trimap != 2))


def test_the_reader_turns_each_trimap_into_foreground_and_ignore_band(data_sample64: PreparedDataset) -> None:
    """Foreground = pet or border, ignore band = border, read from the trimap as scored (nearest to 64 px)."""
    d = data_sample64
    k = next(i for i, info in enumerate(d.infos) if info.name == "Abyssinian_100")
    with Image.open(SAMPLE / "annotations" / "trimaps" / "Abyssinian_100.png") as im:
        trimap = np.asarray(im.resize((64, 64), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(d.masks[k], np.isin(trimap, (1, 3)))
    np.testing.assert_array_equal(d.ignore[k], trimap == 3)
    assert 0 < d.ignore[k].sum() < d.masks[k].sum()


def test_truth_as_scored_is_what_the_decode_holds(data_sample64: PreparedDataset) -> None:
    k = len(data_sample64.infos) - 1
    info = data_sample64.infos[k]
    foreground, ignore = dataset.truth_as_scored(SAMPLE, info.name, (info.width, info.height), 64)
    np.testing.assert_array_equal(foreground, data_sample64.masks[k])
    np.testing.assert_array_equal(ignore, data_sample64.ignore[k])
    assert dataset.truth_as_scored(SAMPLE, "no_such_image", (8, 8), 64) == "missing trimap"


def test_read_truth_is_the_trimaps_foreground_and_band_at_the_files_size() -> None:
    with Image.open(SAMPLE / "annotations" / "trimaps" / "Abyssinian_100.png") as im:
        trimap = np.asarray(im)
    foreground, ignore = dataset.read_truth(SAMPLE, "Abyssinian_100")
    assert foreground.shape == ignore.shape == trimap.shape and foreground.dtype == ignore.dtype == bool
    np.testing.assert_array_equal(foreground, np.isin(trimap, (1, 3)))
    np.testing.assert_array_equal(ignore, trimap == 3)
    assert dataset.read_truth(SAMPLE, "no_such_image") == "missing trimap"


def test_indices_partition_the_dataset_in_order(data_sample64: PreparedDataset) -> None:
    d = data_sample64
    parts = [d.indices(s) for s in ("train", "val", "test")]
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(d.infos)))
    assert [d.infos[i].split for i in parts[2]] == ["test"] * 60
    with pytest.raises(ValueError):
        d.indices("validation")


def test_breed_is_the_name_without_its_number() -> None:
    assert breed_of("american_bulldog_12") == "american_bulldog"
    assert breed_of("Abyssinian_100") == "Abyssinian"
    assert breed_of("oddname") == "oddname"
    assert breed_of("great_pyrenees_x") == "great_pyrenees_x"


def test_split_of_is_stable_and_independent_of_other_images() -> None:
    assert split_of("anything", listed_in_test=True) == "test"
    vals = [n for n in (f"img_{i}" for i in range(1000)) if split_of(n, listed_in_test=False) == "val"]
    assert 60 < len(vals) < 140
    assert split_of(vals[0], listed_in_test=False) == "val"


# --------------------------------------------------------------------------- quirks


def test_odd_image_formats_and_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    root = tmp_path / "quirks"
    colour = (200, 40, 10)
    _write(root, "gif_1", Image.new("RGB", (24, 16), colour).convert("P"), fmt="GIF")
    _write(root, "rgba_1", Image.new("RGBA", (24, 16), colour + (0,)), fmt="PNG")  # alpha 0: dropped, not composited
    _write(root, "gray_1", Image.new("L", (24, 16), 90))
    _write(root, "cmyk_1", Image.new("CMYK", (24, 16), (0, 255, 255, 0)))
    _write(root, "la_1", Image.new("LA", (24, 16), (90, 128)), fmt="PNG")
    _write(root, "p_1", Image.new("RGB", (24, 16), colour).quantize(4), fmt="PNG")
    # a palette-mode trimap (the palette indices are the values) and a trimap of another size
    _write(root, "ptrimap_1")
    Image.fromarray(_trimap(24, 16)).convert("P").save(root / "annotations/trimaps/ptrimap_1.png")
    _write(root, "bigtrimap_1", trimap=_trimap(48, 32))
    names = ["gif_1", "rgba_1", "gray_1", "cmyk_1", "la_1", "p_1", "ptrimap_1", "bigtrimap_1"]
    _splits(root, [_line(n) for n in names[:-1]], [_line(names[-1])])

    d = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
    assert d.skipped == [] and [i.name for i in d.infos] == names
    assert d.images.shape == (8, 8, 8, 3)
    by = {info.name: k for k, info in enumerate(d.infos)}
    np.testing.assert_allclose(d.images[by["rgba_1"], 4, 4], colour, atol=2)
    np.testing.assert_allclose(d.images[by["gif_1"], 4, 4], colour, atol=8)
    assert np.all(np.abs(d.images[by["gray_1"]].astype(int) - 90) <= 2)
    assert d.images[by["cmyk_1"], 4, 4, 0] > 200 and d.images[by["cmyk_1"], 4, 4, 1:].max() < 40
    np.testing.assert_array_equal(d.masks[by["ptrimap_1"]], d.masks[by["gray_1"]])
    np.testing.assert_array_equal(d.ignore[by["ptrimap_1"]], d.ignore[by["gray_1"]])
    big = d.infos[by["bigtrimap_1"]]
    assert (big.width, big.height) == (24, 16)
    assert d.masks[by["bigtrimap_1"]].any() and d.ignore[by["bigtrimap_1"]].any()
    assert big.fg_fraction == pytest.approx(np.mean(_trimap(48, 32) != 2))


def test_broken_files_are_skipped_and_reported_in_one_line(tmp_path: Path) -> None:
    root = _tiny(tmp_path / "broken", n_train=3, n_test=2)
    _write(root, "truncated_1")
    data = (root / "images/truncated_1.jpg").read_bytes()
    (root / "images/truncated_1.jpg").write_bytes(data[: len(data) // 2])
    _write(root, "notrimap_1")
    (root / "annotations/trimaps/notrimap_1.png").unlink()
    _write(root, "emptytrimap_1")
    (root / "annotations/trimaps/emptytrimap_1.png").write_bytes(b"")
    _write(root, "badvalues_1", trimap=np.full((16, 24), 7, np.uint8))
    _write(root, "garbage_1")
    (root / "images/garbage_1.jpg").write_bytes(b"not an image at all")
    extra = ["truncated_1", "notrimap_1", "emptytrimap_1", "badvalues_1", "garbage_1", "absent_1"]
    lines = [_line(f"cat_{i}") for i in range(3)] + [_line(n) for n in extra]
    lines += ["# a comment", "", "cat_0 1 1 1", "too few fields", "weird_1 1 9 1"]
    _splits(root, lines, [_line(f"dog_{i}", 2) for i in range(2)])

    log = _Log()
    d = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=log)
    assert [i.name for i in d.infos] == ["cat_0", "cat_1", "cat_2", "dog_0", "dog_1"]
    assert sorted(d.skipped) == sorted([
        ("annotations/trainval.txt:12", "duplicate entry for cat_0"),
        ("annotations/trainval.txt:13", "malformed line"),
        ("annotations/trainval.txt:14", "malformed line"),
        ("images/truncated_1.jpg", "truncated or unreadable"),
        ("annotations/trimaps/notrimap_1.png", "missing trimap"),
        ("annotations/trimaps/emptytrimap_1.png", "empty trimap"),
        ("annotations/trimaps/badvalues_1.png", "trimap values outside {1,2,3}"),
        ("images/garbage_1.jpg", "truncated or unreadable"),
        ("images/absent_1.jpg", "missing image"),
    ])
    assert len(log) == 1 and "\n" not in log[0]
    assert log[0].startswith("skipped 9 of 14 images: ")
    assert "images/truncated_1.jpg (truncated or unreadable)" in log[0]
    assert "annotations/trimaps/notrimap_1.png (missing trimap)" in log[0]


# --------------------------------------------------------------------------- cache


def test_second_call_decodes_nothing_and_returns_the_same_arrays(tmp_path: Path, monkeypatch) -> None:
    root = _tiny(tmp_path / "ds")
    first = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded an image although the cache was valid")

    monkeypatch.setattr(dataset, "_decode_pair", must_not_decode)
    second = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.masks, first.masks)
    np.testing.assert_array_equal(second.ignore, first.ignore)
    assert second.masks.dtype == second.ignore.dtype == bool
    assert second.infos == first.infos and second.skipped == first.skipped
    assert all(isinstance(i, ImageInfo) for i in second.infos)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # no temp files left


def test_pets_keep_their_layout_and_no_group_or_path_through_the_cache(tmp_path: Path) -> None:
    root = _tiny(tmp_path / "ds")
    for _ in range(2):  # decoded, then from the cache
        d = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
        assert d.layout == "oxford-pets" and d.check is None
        assert all(i.group is None and i.path is None for i in d.infos)


def test_a_dataset_built_by_hand_takes_its_sources_layout() -> None:
    d = PreparedDataset(Path("x"), "synthetic", 8, [], np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 8, 8), bool))
    assert d.layout == "synthetic" and d.ignore is None


def test_the_cache_format_leads_its_file_name_and_an_old_format_is_not_read(tmp_path: Path) -> None:
    """The cache is shared by every checkout: a file of another format version is neither read nor deleted."""
    root = _tiny(tmp_path / "ds")
    d = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
    [path] = (tmp_path / "cache").iterdir()
    assert path.name.startswith(f"v{dataset.CACHE_VERSION}-") and dataset.CACHE_VERSION == 3
    old = tmp_path / "cache" / "0123456789abcdef-old.npz"  # version 2: trimaps, no masks
    np.savez(old, images=d.images, trimaps=np.full((5, 8, 8), 2, np.uint8), meta=np.zeros(1, np.uint8))
    assert dataset.load_cache(old, root, "oxford-pets", 8) is None
    prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
    assert old.exists()


def test_cache_is_rebuilt_when_a_file_or_the_size_changes(tmp_path: Path, monkeypatch) -> None:
    root = _tiny(tmp_path / "ds")
    prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
    calls: list[str] = []
    real = dataset._decode_pair
    monkeypatch.setattr(dataset, "_decode_pair", lambda r, name, s: calls.append(name) or real(r, name, s))

    prepare_dataset(root, 12, cache_dir=tmp_path / "cache", log=_Log())
    assert len(calls) == 5
    calls.clear()
    trimap = root / "annotations/trimaps/cat_1.png"
    st = trimap.stat()
    os.utime(trimap, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    d = prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())
    assert len(calls) == 5 and len(d.infos) == 5
    assert len(list((tmp_path / "cache").iterdir())) == 2  # sizes 8 and 12; the outdated size-8 file is gone


def test_unwritable_cache_warns_once_and_carries_on(tmp_path: Path) -> None:
    root = _tiny(tmp_path / "ds")
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    log = _Log()
    d = prepare_dataset(root, 8, cache_dir=not_a_dir / "sub", log=log)
    assert len(d.infos) == 5
    assert len(log) == 1 and log[0].startswith("warning: cannot write the dataset cache")


def test_default_cache_dir_follows_segsweep_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGSWEEP_CACHE", str(tmp_path / "c"))
    prepare_dataset(_tiny(tmp_path / "ds"), 8, log=_Log())
    assert len(list((tmp_path / "c" / "prepared").glob("*.npz"))) == 1


# --------------------------------------------------------------------------- errors


def test_missing_root_is_a_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; put the Oxford-IIIT Pet files there .*--data synthetic") as e:
        prepare_dataset(tmp_path / "nowhere", 8, log=_Log())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "annotations/test.txt").unlink(), r"test\.txt is missing"),
        (lambda root: (root / "annotations/trainval.txt").write_text("# only a comment\n\n"), r"trainval\.txt lists no images"),
        (lambda root: [p.write_bytes(b"x") for p in (root / "images").iterdir()], r"no usable images .* all 5 listed"),
        (lambda root: [(root / f"images/dog_{i}.jpg").unlink() for i in range(2)], r"no usable test images"),
        (lambda root: [(root / f"images/cat_{i}.jpg").unlink() for i in range(3)], r"no usable train images"),
    ],
)
def test_unusable_datasets_raise_data_error(tmp_path: Path, damage, message: str) -> None:
    root = _tiny(tmp_path / "ds")
    damage(root)
    with pytest.raises(DataError, match=message):
        prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log())


def test_detect_source_looks_for_the_synthetic_marker(tmp_path: Path) -> None:
    root = _tiny(tmp_path / "ds")
    assert detect_source(root) == "oxford-pets"
    (root / "SYNTHETIC.md").write_text("synthetic")
    assert detect_source(root) == "synthetic"
    assert prepare_dataset(root, 8, cache_dir=tmp_path / "cache", log=_Log()).name == "synthetic/ds"
