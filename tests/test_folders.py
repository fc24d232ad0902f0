"""A user's own folder: each layout and mask convention, built from the BUSI sample inside the test,
read into the same arrays as the pets, and what the data check says about it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.data.folder_dataset as folder_dataset
from core.data.check import summary_lines
from core.data.dataset import DataError, PreparedDataset
from core.data.folder_dataset import UnusableData
from core.data.masks import format_foreground, parse_foreground
from core.data.sources import detect_layout, load_data
from core.data.splits import hash_split

SIZE = 32


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def lesions(busi_root: Path) -> list[tuple[str, Image.Image, np.ndarray]]:
    """Twelve BUSI images with a lesion, (name, small non-square RGB image, bool mask of its size)."""
    out = []
    for path in sorted((busi_root / "benign" / "images").glob("*.png"))[:12]:
        mask = np.asarray(Image.open(busi_root / "benign" / "mask" / f"{path.stem}_mask.png")) != 0
        size = (48, 36)  # non-square on purpose
        image = Image.open(path).convert("RGB").resize(size, Image.Resampling.BILINEAR)
        small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        assert small.any()
        out.append((path.stem, image, small))
    return out


def _load(root: Path, **options) -> PreparedDataset:
    return load_data("auto", root, SIZE, log=_quiet, **options)


def _expected(mask: np.ndarray) -> np.ndarray:
    """The one rule: the mask squashed to SIZE x SIZE, nearest."""
    return np.asarray(Image.fromarray(mask).resize((SIZE, SIZE), Image.Resampling.NEAREST))


def _write_pairs(root: Path, lesions, mask_as=lambda m: Image.fromarray(m.astype(np.uint8) * 255), suffix="_mask",
                 images="images", masks="masks", ext=".png", mask_ext=".png") -> None:
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    for name, image, mask in lesions:
        image.save(root / images / f"{name}{ext}")
        mask_as(mask).save(root / masks / f"{name}{suffix}{mask_ext}")


def _by_name(ds: PreparedDataset) -> dict[str, int]:
    return {info.name: i for i, info in enumerate(ds.infos)}


# --------------------------------------------------------------------------- paired folders, mask conventions


def test_0_255_masks_with_a_seg_suffix_pair_by_name_and_read_as_binary(tmp_path: Path, lesions) -> None:
    _write_pairs(tmp_path / "set", lesions, suffix="_seg")
    ds = _load(tmp_path / "set")
    assert ds.layout == "paired-folders" and ds.source == "folder" and ds.name == "folder/set"
    assert ds.check.pairs == 12 and ds.check.suffixes == {"_seg": 12}
    assert ds.check.mask_kinds == {"grayscale {0,255}": 12} and ds.check.foreground == "non-zero"
    assert ds.masks.dtype == bool and ds.ignore is None  # foreground and background, no ignore band
    at = _by_name(ds)
    for name, _, mask in lesions:
        assert np.array_equal(ds.masks[at[name]], _expected(mask))
        assert ds.infos[at[name]].path == f"images/{name}.png" and ds.infos[at[name]].group is None
    assert ds.images.shape == (12, SIZE, SIZE, 3) and ds.infos[0].width == 48 and ds.infos[0].height == 36


def test_a_folder_has_no_ignore_band_so_border_aware_dice_is_dice(tmp_path: Path, lesions) -> None:
    import torch

    from core.training.loop import TrainConfig, predict

    class Bright(torch.nn.Module):  # foreground where the normalised red channel is above the mean: a partial hit
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1]

    _write_pairs(tmp_path / "set", lesions)
    ds = _load(tmp_path / "set")
    assert ds.ignore is None
    cfg = TrainConfig(image_size=SIZE, device="cpu", flip_tta=False)
    pred = predict(Bright(), ds, np.arange(len(ds.infos)), cfg, with_masks=False)
    assert len(pred.dice) == 12 and 0 < pred.dice.mean() < 1
    np.testing.assert_array_equal(pred.dice_no_border, pred.dice)


def test_0_1_masks_without_a_suffix_and_an_explicit_foreground(tmp_path: Path, lesions) -> None:
    _write_pairs(tmp_path / "set", lesions, suffix="", masks="Ground Truth", mask_as=lambda m: Image.fromarray(m.astype(np.uint8)))
    ds = _load(tmp_path / "set", foreground=(1,))
    assert ds.check.suffixes == {"": 12} and ds.check.mask_kinds == {"grayscale {0,1}": 12}
    assert ds.check.foreground == "values 1 (--foreground)" and ds.name == "folder/set [foreground 1]"
    at = _by_name(ds)
    assert all(np.array_equal(ds.masks[at[n]], _expected(m)) for n, _, m in lesions)


def test_one_bit_and_rgb_masks_are_read_by_their_kind(tmp_path: Path, lesions) -> None:
    def mixed(mask: np.ndarray) -> Image.Image:
        mixed.n += 1
        if mixed.n % 2:
            return Image.fromarray(mask).convert("1")
        return Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB")
    mixed.n = 0
    _write_pairs(tmp_path / "set", lesions, mask_as=mixed, masks="Labels")
    ds = _load(tmp_path / "set")
    assert ds.check.mask_kinds == {"1-bit {0,1}": 6, "RGB {0,255}": 6}
    at = _by_name(ds)
    assert all(np.array_equal(ds.masks[at[n]], _expected(m)) for n, _, m in lesions)


def test_colour_masks_take_every_non_black_pixel_and_refuse_gray_values(tmp_path: Path, lesions) -> None:
    def red(mask: np.ndarray) -> Image.Image:
        rgb = np.zeros(mask.shape + (3,), np.uint8)
        rgb[mask] = (200, 30, 30)
        return Image.fromarray(rgb)
    _write_pairs(tmp_path / "set", lesions, mask_as=red)
    ds = _load(tmp_path / "set")
    assert ds.check.mask_kinds == {"RGB colour": 12}
    at = _by_name(ds)
    assert all(np.array_equal(ds.masks[at[n]], _expected(m)) for n, _, m in lesions)
    with pytest.raises(UnusableData, match=r"none of the 12 image/mask pairs .* could be read \(first: masks/.*: "
                                           r"colour RGB mask: --foreground names gray values"):
        _load(tmp_path / "set", foreground=(255,))


def test_palette_masks_take_their_foreground_from_the_values_named(tmp_path: Path, lesions) -> None:
    def palette(mask: np.ndarray) -> Image.Image:
        im = Image.fromarray(np.where(mask, 2, 1).astype(np.uint8), mode="P")  # 1 = background label here
        im.putpalette([0, 0, 0, 40, 40, 40, 255, 0, 0] + [0] * 759)
        return im
    _write_pairs(tmp_path / "set", lesions, mask_as=palette)
    ds = _load(tmp_path / "set", foreground=(2,))
    assert ds.check.mask_kinds == {"palette {1,2}": 12}
    at = _by_name(ds)
    assert all(np.array_equal(ds.masks[at[n]], _expected(m)) for n, _, m in lesions)
    with pytest.raises(UnusableData, match=r"every mask .* is empty .*check --foreground"):
        _load(tmp_path / "set", foreground=(7,))


def test_jpeg_saved_masks_get_a_note_and_a_foreground_range_thresholds_them(tmp_path: Path, lesions) -> None:
    _write_pairs(tmp_path / "set", lesions, mask_ext=".jpg")
    loose = _load(tmp_path / "set")
    assert any(n.startswith("12 masks hold more than 8 values") for n in loose.check.notes)
    ds = _load(tmp_path / "set", foreground=parse_foreground("128-255"))
    assert ds.check.foreground == "values 128-255 (--foreground)" and not any("more than" in n for n in ds.check.notes)
    at = _by_name(ds)
    agree = np.mean([np.mean(ds.masks[at[n]] == _expected(m)) for n, _, m in lesions])
    assert agree > 0.99 and ds.masks.sum() < loose.masks.sum()


def test_foreground_values_parse_and_print_as_typed() -> None:
    assert parse_foreground("255") == (255,) and parse_foreground("1, 2") == (1, 2)
    assert format_foreground(parse_foreground("128-255")) == "128-255"
    assert format_foreground(parse_foreground("1,2,5")) == "1,2,5"
    for bad in ("white", "3-1", "", "1,,2"):
        with pytest.raises(ValueError, match="expected whole mask values"):
            parse_foreground(bad)


def test_several_masks_of_one_image_are_united(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    biggest = max(range(len(lesions)), key=lambda k: lesions[k][2].sum())
    _write_pairs(root, lesions[:biggest] + lesions[biggest + 1:])
    name, image, mask = lesions[biggest]
    image.save(root / "images" / f"{name}.png")
    middle = int(np.nonzero(mask)[0].mean())  # a row through the lesion: each half holds part of it
    top, bottom = mask.copy(), mask.copy()
    top[middle:], bottom[:middle] = False, False
    Image.fromarray(top.astype(np.uint8) * 255).save(root / "masks" / f"{name}_mask.png")
    Image.fromarray(bottom.astype(np.uint8) * 255).save(root / "masks" / f"{name}_mask_1.png")
    ds = _load(root)
    assert ds.check.united == 1 and ds.check.pairs == 12 and ds.check.masks_without_image == []
    assert ds.check.mask_kinds == {"grayscale {0,255}": 13}
    assert np.array_equal(ds.masks[_by_name(ds)[name]], _expected(mask))


def test_a_mask_of_another_size_is_resized_to_its_image_and_counted(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions)
    name, _, mask = lesions[3]
    big = Image.fromarray(mask.astype(np.uint8) * 255).resize((96, 72), Image.Resampling.NEAREST)
    big.save(root / "masks" / f"{name}_mask.png")
    ds = _load(root)
    assert ds.check.resized == [f"masks/{name}_mask.png"]
    assert np.array_equal(ds.masks[_by_name(ds)[name]], _expected(mask))
    assert "masks resized to their image: 1 (masks/" in "\n".join(summary_lines(ds.check))


def test_missing_counterparts_are_counted_and_named_and_the_rest_is_used(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions)
    (root / "masks" / f"{lesions[0][0]}_mask.png").unlink()
    (root / "images" / f"{lesions[1][0]}.png").unlink()
    (root / "images" / "notes.txt").write_text("not an image")
    ds = _load(root)
    assert ds.check.pairs == 10 and len(ds.infos) == 10
    assert ds.check.images_without_mask == [f"images/{lesions[0][0]}.png"]
    assert ds.check.masks_without_image == [f"masks/{lesions[1][0]}_mask.png"]
    assert ds.check.ignored == ["images/notes.txt"]
    pairs_line = summary_lines(ds.check)[1]
    assert f"1 images without a mask (images/{lesions[0][0]}.png)" in pairs_line
    assert f"1 masks without an image (masks/{lesions[1][0]}_mask.png)" in pairs_line


def test_empty_masks_are_background_only_images(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions)
    for name, _, mask in lesions[:3]:
        Image.fromarray(np.zeros(mask.shape, np.uint8)).convert("RGB").save(root / "masks" / f"{name}_mask.png")
    ds = _load(root)
    assert ds.check.empty == 3 and len(ds.infos) == 12
    assert ds.check.mask_kinds == {"grayscale {0,255}": 9, "RGB {0}": 3}
    assert (ds.masks[_by_name(ds)[lesions[0][0]]] == 0).all()


def test_names_with_spaces_and_every_image_format(tmp_path: Path, lesions) -> None:
    root = tmp_path / "my data"
    (root / "imgs").mkdir(parents=True)
    (root / "Mask").mkdir()
    exts = [".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".png"]
    for (name, image, mask), ext in zip(lesions, exts * 2):
        image.save(root / "imgs" / f"{name} (x){ext}")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Mask" / f"{name} (x)-mask.png")
    ds = _load(root)
    assert ds.check.pairs == 12 and ds.check.suffixes == {"-mask": 12} and ds.check.unreadable == []
    assert {Path(i.path).suffix for i in ds.infos} == set(exts)
    assert all(i.name.endswith(" (x)") for i in ds.infos)


def test_unreadable_files_are_named_and_skipped(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions)
    (root / "images" / f"{lesions[0][0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "masks" / f"{lesions[1][0]}_mask.png").write_bytes(b"")
    ds = _load(root)
    assert len(ds.infos) == 10
    assert sorted(ds.check.unreadable) == [[f"images/{lesions[0][0]}.png", "truncated or unreadable image"],
                                           [f"masks/{lesions[1][0]}_mask.png", "empty file"]]


# --------------------------------------------------------------------------- split and group folders


def test_split_and_group_folders_give_each_image_its_split_and_group(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root / "train" / "benign", lesions[:6], masks="mask")
    _write_pairs(root / "train" / "malignant", lesions[6:9], masks="mask")
    _write_pairs(root / "test" / "benign", lesions[9:], masks="mask")
    ds = _load(root)
    assert ds.check.groups == {"benign": 9, "malignant": 3}
    test = {i.name for i in ds.infos if i.split == "test"}
    assert test == {f"test/benign/{n}" for n, _, _ in lesions[9:]}
    val = [i for i in ds.infos if i.split == "val"]
    assert all(hash_split(i.name) == "val" and i.name.startswith("train/") for i in val)
    assert any(line.startswith("no val folder: val is taken from train") for line in ds.check.notes)
    info = ds.infos[_by_name(ds)[f"train/malignant/{lesions[6][0]}"]]
    assert info.group == "malignant" and info.path == f"train/malignant/images/{lesions[6][0]}.png"


def test_split_folders_inside_the_image_and_mask_folders(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions[:8], images="images/train", masks="masks/train")
    _write_pairs(root, lesions[8:10], images="images/val", masks="masks/val")
    _write_pairs(root, lesions[10:], images="images/test", masks="masks/test")
    ds = _load(root)
    assert ds.check.splits == {"train": 8, "val": 2, "test": 2} and ds.check.groups == {}
    assert ds.infos[0].name == f"test/{lesions[10][0]}"


def test_split_folders_without_train_are_a_one_line_error(tmp_path: Path, lesions) -> None:
    _write_pairs(tmp_path / "set" / "valid", lesions[:6])
    _write_pairs(tmp_path / "set" / "test", lesions[6:])
    with pytest.raises(DataError, match=r"the split folders hold no train images \(found test, val\)"):
        _load(tmp_path / "set")


def test_hash_splits_are_stable_when_files_are_added_or_removed(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions[:8])
    first = {i.name: i.split for i in _load(root).infos}
    _write_pairs(root, lesions)
    (root / "images" / f"{lesions[0][0]}.png").unlink()
    second = {i.name: i.split for i in _load(root).infos}
    assert all(second[n] == s for n, s in first.items() if n in second) and len(second) == 11
    assert all(s == hash_split(n) for n, s in second.items())


def test_group_by_keeps_a_patients_images_in_one_split(tmp_path: Path, lesions) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, (_, image, mask) in enumerate(lesions):
        name = f"patient{k % 4}_frame{k}"
        image.save(root / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
    ds = _load(root, group_by=r"patient(\d+)")
    by_patient: dict[str, set[str]] = {}
    for info in ds.infos:
        by_patient.setdefault(info.group, set()).add(info.split)
    assert set(by_patient) == {"0", "1", "2", "3"} and all(len(s) == 1 for s in by_patient.values())
    assert all(by_patient[p] == {hash_split(p)} for p in by_patient)
    assert ds.check.group_keys == 4 and ds.check.unmatched_group_by == 0
    assert ds.name == r"folder/set [group-by patient(\d+)]"  # its splits are not the default reading's
    (root / "test" / "images").mkdir(parents=True)  # patient 0 again, in a test folder
    (root / "test" / "masks").mkdir()
    lesions[0][1].save(root / "test" / "images" / "patient0_frame99.png")
    Image.fromarray(lesions[0][2].astype(np.uint8) * 255).save(root / "test" / "masks" / "patient0_frame99.png")
    ds = _load(root, group_by=r"patient(\d+)")
    assert any(n.startswith("1 --group-by keys have images in several split folders (0)") for n in ds.check.notes)
    with pytest.raises(DataError, match="--group-by: not a regular expression"):
        _load(root, group_by="patient(")


# --------------------------------------------------------------------------- nnU-Net, two folders, errors


def test_nnunet_raw_with_dataset_json(tmp_path: Path, lesions) -> None:
    root = tmp_path / "Dataset001_Busi"
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "US"}, "labels": {"background": 0, "lesion": 1},
                                                   "numTraining": 9, "file_ending": ".png"}))
    for k, (_, image, mask) in enumerate(lesions):
        part = "Ts" if k >= 9 else "Tr"
        image.save(root / f"images{part}" / f"case_{k:03d}_0000.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / f"labels{part}" / f"case_{k:03d}.png")
    ds = _load(root)
    assert detect_layout(root) == "nnunet" and ds.layout == "nnunet"
    assert ds.check.pairs == 12 and ds.check.splits.get("test") == 3
    assert {i.name for i in ds.infos if i.split == "test"} == {f"imagesTs/case_{k:03d}" for k in (9, 10, 11)}
    assert ds.infos[0].path == "imagesTr/case_000_0000.png"
    assert np.array_equal(ds.masks[0], _expected(lesions[0][2]))


def test_nnunet_labels_without_a_zero_background_follow_dataset_json(tmp_path: Path, lesions) -> None:
    root = tmp_path / "nn"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 1, "lesion": 2, "edge": 3}}))
    for k, (_, image, mask) in enumerate(lesions):
        image.save(root / "imagesTr" / f"c{k}_0000.png")
        Image.fromarray(np.where(mask, 2, 1).astype(np.uint8)).save(root / "labelsTr" / f"c{k}.png")
    ds = _load(root)
    assert ds.check.foreground.startswith("labels 2,3")
    assert np.array_equal(ds.masks[_by_name(ds)["c0"]], _expected(lesions[0][2]))


def test_nifti_volumes_are_a_one_line_error_naming_what_is_read(tmp_path: Path) -> None:
    root = tmp_path / "nn"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "case_0000.nii.gz").write_bytes(b"\0" * 64)
    with pytest.raises(DataError) as info:
        _load(root)
    assert "\n" not in str(info.value) and "volumes" in str(info.value) and "png, jpg/jpeg" in str(info.value)
    (root / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    with pytest.raises(DataError, match=r"nnU-Net dataset of volumes \(file_ending .nii.gz\)"):
        _load(root)


def test_two_folders_anywhere(tmp_path: Path, lesions) -> None:
    _write_pairs(tmp_path / "a", lesions, images="frames", masks="x")
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").rename(tmp_path / "b" / "truth")
    ds = load_data("auto", None, SIZE, log=_quiet, images=tmp_path / "a" / "frames", masks=tmp_path / "b" / "truth")
    assert ds.layout == "two-folders" and ds.root == tmp_path.resolve() and ds.check.pairs == 12
    assert ds.infos[0].path == f"a/frames/{lesions[0][0]}.png" and ds.infos[0].name == lesions[0][0]


def test_two_folders_with_the_masks_inside_the_image_folder(tmp_path: Path, lesions) -> None:
    _write_pairs(tmp_path / "polyps", lesions, images=".", masks="masks")
    ds = load_data("auto", None, SIZE, log=_quiet, images=tmp_path / "polyps", masks=tmp_path / "polyps" / "masks")
    assert ds.check.pairs == 12 and ds.check.images_without_mask == [] and ds.root == tmp_path.resolve()
    assert ds.infos[0].path == f"polyps/{lesions[0][0]}.png"


def test_images_and_masks_side_by_side_as_busis_release_ships_them(tmp_path: Path, lesions) -> None:
    root = tmp_path / "Dataset_BUSI_with_GT"
    _write_pairs(root / "benign", lesions[:8], images=".", masks=".")
    _write_pairs(root / "malignant", lesions[8:], images=".", masks=".")
    (root / "malignant" / "scan_v2.png").write_bytes((root / "malignant" / f"{lesions[8][0]}.png").read_bytes())
    ds = _load(root)
    assert ds.layout == "paired-folders" and ds.check.pairs == 12 and ds.check.groups == {"benign": 8, "malignant": 4}
    assert ds.check.images_without_mask == ["malignant/scan_v2.png"] and ds.check.suffixes == {"_mask": 12}
    assert ds.infos[0].name == f"benign/{lesions[0][0]}" and ds.infos[0].path == f"benign/{lesions[0][0]}.png"
    same = load_data("auto", None, SIZE, log=_quiet, images=root / "benign", masks=root / "benign")
    assert same.check.pairs == 8 and same.check.masks_without_image == []


def test_a_folder_without_pairs_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError) as info:
        _load(tmp_path)
    assert "no image folder beside a mask folder" in str(info.value) and "(it has photos)" in str(info.value)


def test_the_pets_and_synthetic_layouts_are_detected_as_before(pets_root: Path, tmp_path: Path) -> None:
    assert detect_layout(pets_root) == "oxford-pets"
    (tmp_path / "SYNTHETIC.md").write_text("")
    assert detect_layout(tmp_path) == "synthetic"
    ds = load_data("auto", pets_root, SIZE, log=_quiet)
    assert ds.layout == "oxford-pets" and ds.check is None and ds.infos[0].path is None


# --------------------------------------------------------------------------- cache


def test_the_cache_serves_a_second_read_and_an_option_change_rebuilds(tmp_path: Path, lesions, monkeypatch) -> None:
    root = tmp_path / "set"
    _write_pairs(root, lesions)
    first = _load(root)
    real = folder_dataset._read_pair
    calls: list[str] = []
    monkeypatch.setattr(folder_dataset, "_read_pair", lambda r, p, s, f: calls.append(p.name) or real(r, p, s, f))
    again = _load(root)
    assert calls == [] and again.layout == "paired-folders" and again.check == first.check
    assert [i.group for i in again.infos] == [i.group for i in first.infos]
    _load(root, foreground=(255,))
    assert len(calls) == 12


# --------------------------------------------------------------------------- the real sample


def test_busi_sample_is_read_as_its_release_ships_it(busi_root: Path) -> None:
    ds = _load(busi_root)
    c = ds.check
    assert ds.layout == "paired-folders" and c.pairs == 197 and len(ds.infos) == 197
    assert c.suffixes == {"_mask": 197} and c.united == 5  # NOTICE.md says four; five ship with a _mask_1
    assert c.mask_kinds == {"1-bit {0,1}": 168, "RGB {0}": 34} and c.empty == 34
    assert c.groups == {"benign": 110, "malignant": 53, "normal": 34}
    assert c.images_without_mask == [] and c.masks_without_image == [] and c.unreadable == [] and c.resized == []
    assert sum(c.splits.values()) == 197 and all(c.splits[s] > 0 for s in ("train", "val", "test"))
