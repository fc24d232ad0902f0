"""Find the pairs of an nnU-Net raw dataset folder (2-D images only).

    imagesTr/NAME_0000.png   labelsTr/NAME.png     training cases (channel 0000 is the image)
    imagesTs/NAME_0000.png   labelsTs/NAME.png     optional: the test split, where it has labels
    dataset.json             optional: labels ({"background": 0, "lesion": 1}) and file_ending

Foreground is every label but background. A folder of volumes (.nii.gz and the like) is refused
with one line saying what is read.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from core.data.folders import LayoutError, Pair, Scan, is_image, is_volume, stem, volume_error

CASE = re.compile(r"(.+)_(\d{4})")  # NAME_0000: case NAME, channel 0000


def is_nnunet(root: Path) -> bool:
    return root.is_dir() and any(c.is_dir() and c.name.lower() == "imagestr" for c in root.iterdir())


def _child(root: Path, name: str) -> Path | None:
    return next((c for c in sorted(root.iterdir()) if c.is_dir() and c.name.lower() == name.lower()), None)


def _background_and_labels(meta: dict) -> tuple[int, list[int]]:
    """Background value and every label value, from dataset.json's labels (v2 name->value or v1 value->name)."""
    labels = meta.get("labels") or {}
    pairs: list[tuple[str, int]] = []
    for k, v in labels.items():
        if isinstance(v, int) and not isinstance(v, bool):
            pairs.append((str(k), v))  # v2: {"background": 0, "lesion": 1}
        elif str(k).isdigit():
            pairs.append((str(v), int(k)))  # v1: {"0": "background", "1": "lesion"}
    background = next((v for k, v in pairs if k.lower() == "background"), 0)
    return background, sorted({v for _, v in pairs})


def _read_meta(root: Path) -> tuple[dict, bytes]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}, b""
    raw = path.read_bytes()
    try:
        meta = json.loads(raw)
    except ValueError:
        raise LayoutError(f"{path} is not valid JSON; fix it or remove it (labels are then read as 0 = background)") from None
    if not isinstance(meta, dict):
        raise LayoutError(f"{path} is not a JSON object; expected nnU-Net's dataset.json")
    return meta, raw


def scan_nnunet(root: Path) -> Scan:
    """imagesTr/labelsTr as train (val taken from it by the hash rule), imagesTs/labelsTs as test."""
    meta, raw = _read_meta(root)
    ending = str(meta.get("file_ending", ""))
    if ending and is_volume(f"x{ending}"):
        raise LayoutError(f"{root} is an nnU-Net dataset of volumes (file_ending {ending}); SegSweep reads 2-D "
                          f"images (png, jpg/jpeg, tif/tiff, bmp): convert the cases to 2-D slices first")
    scan = Scan("nnunet", root, extra=raw)
    background, labels = _background_and_labels(meta)
    if background != 0:
        scan.foreground = tuple(v for v in labels if v != background)
    extra_channels = 0
    for images_name, labels_name, split in (("imagesTr", "labelsTr", "train"), ("imagesTs", "labelsTs", "test")):
        images_dir = _child(root, images_name)
        if images_dir is None:
            continue
        labels_dir = _child(root, labels_name)
        files = sorted(f.name for f in images_dir.iterdir() if f.is_file() and not f.name.startswith("."))
        volumes = [f for f in files if is_volume(f)]
        if volumes:
            raise volume_error(images_dir, volumes)
        label_files = {stem(f.name): f.name for f in sorted(labels_dir.iterdir())
                       if f.is_file() and is_image(f.name)} if labels_dir else {}
        used: set[str] = set()
        for f in (f for f in files if is_image(f)):
            m = CASE.fullmatch(stem(f))
            case, channel = (m.group(1), m.group(2)) if m else (stem(f), "0000")
            if channel != "0000":
                extra_channels += 1
                continue
            image_rel = f"{images_dir.name}/{f}"
            if case in label_files:
                used.add(case)
                name = case if split == "train" else f"{images_dir.name}/{case}"
                scan.pairs.append(Pair(name, image_rel, (f"{labels_dir.name}/{label_files[case]}",), split, None))
            elif split == "train" or labels_dir is not None:
                scan.images_without_mask.append(image_rel)
            # imagesTs without labelsTs: nnU-Net's unlabelled test cases, not ours to score
        scan.masks_without_image += [f"{labels_dir.name}/{f}" for c, f in label_files.items() if c not in used]
        scan.ignored += [f"{images_dir.name}/{f}" for f in files if not is_image(f)]
        if split == "test" and labels_dir is None and files:
            scan.notes.append(f"{images_dir.name} has no {labels_name}: its images are not used (no masks to score)")
    if extra_channels:
        scan.notes.append(f"{extra_channels} extra channel files (NAME_0001 ...) skipped: channel 0000 is the image")
    if scan.pairs:
        scan.suffixes[""] = len(scan.pairs)
    return scan
