"""Find the image/mask pairs of a user's folder: paired folders, or two folders given apart.

Paired folders: anywhere under the root (a few levels deep), a folder holding an image folder
(`images`, `imgs`, `image`, `img`) beside a mask folder (`masks`, `mask`, `labels`, `label`, `gt`,
`ground_truth`, `annotations`, `segmentations`; any case, `Ground Truth` too). Folders on the way to it, or below the image folder,
named train/val/valid/test are the image's split; any other such folder (`benign/images`) is its
group. A mask is named after its image's stem plus a suffix detected from the files (`_mask`,
`_seg`, `-gt`, or none: the commonest one wins); `NAME_mask_1.png` beside `NAME_mask.png` is a
second mask of the same image, and the two are united.

With no such folders, a folder holding images and their masks side by side (`benign/x.png`,
`benign/x_mask.png`, BUSI's release) is read the same way, a mask being a file named after another
plus a suffix that says mask (`_mask`, `_seg`, `_gt`, `_label`, ...).

An image's name in the store is its path below the root without the image folder and extension
(`benign/benign (3)`), so it depends on the file alone and is unique in the dataset.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from core.data.splits import SPLIT_FOLDERS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SUPPORTED = "png, jpg/jpeg, tif/tiff, bmp"
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".dcm")
IMAGE_FOLDERS = ("images", "imgs", "image", "img")
MASK_FOLDERS = ("masks", "mask", "labels", "label", "gt", "ground_truth", "annotations", "segmentations")
# folder names match in any case and with or without spaces, '_' or '-': "Ground Truth" is ground_truth
MAX_DEPTH = 4  # how deep below the root image/mask folders are looked for


class LayoutError(ValueError):
    """The folder cannot be read as any supported layout; the message is one line for the user."""


@dataclass(frozen=True)
class Pair:
    """One image and its mask files (paths relative to the root, '/'-separated)."""

    name: str
    image: str
    masks: tuple[str, ...]
    folder_split: str | None  # from a split folder, None when none
    group: str | None  # from a group folder, None when none


@dataclass
class Scan:
    """What a folder holds, before any file is decoded."""

    layout: str
    root: Path
    pairs: list[Pair] = field(default_factory=list)
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)
    suffixes: Counter[str] = field(default_factory=Counter)  # mask suffix -> images paired with it
    ignored: list[str] = field(default_factory=list)  # files that are not images we read
    notes: list[str] = field(default_factory=list)
    foreground: tuple[int, ...] | None = None  # the layout's own foreground values (nnU-Net labels), None = non-zero
    extra: bytes = b""  # layout files that change the result (dataset.json), for the cache key


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def is_volume(name: str) -> bool:
    return name.lower().endswith(VOLUME_EXTENSIONS)


def stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def volume_error(where: Path, files: list[str]) -> LayoutError:
    return LayoutError(f"{where} holds volumes ({files[0]}{' ...' if len(files) > 1 else ''}); SegSweep reads 2-D "
                       f"images ({SUPPORTED}) with 2-D masks: export slices or frames to one of those")


def classify(parts: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(split, group) of the folders on an image's way from the root: split folders by name, the rest a group."""
    split = None
    group: list[str] = []
    for part in parts:
        if part.lower() in SPLIT_FOLDERS:
            split = SPLIT_FOLDERS[part.lower()]
        else:
            group.append(part)
    return split, "/".join(group) or None


# --------------------------------------------------------------------------- pairing by name


_MULTI = r"[_\- ]\(?\d{1,3}\)?"  # the index of a second, third ... mask: _1, -2, " (3)"


def _image_of(mask_stem: str, image_stems: set[str], exact: bool = True) -> tuple[str, str] | None:
    """(image stem, suffix) for the longest image stem the mask stem starts with at a word boundary
    (itself too, with suffix "", when `exact`)."""
    if exact and mask_stem in image_stems:
        return mask_stem, ""
    for i in range(len(mask_stem) - 1, 0, -1):
        if not mask_stem[i].isalnum() and mask_stem[:i] in image_stems:
            return mask_stem[:i], mask_stem[i:]
    return None


MASK_WORDS = re.compile(r"mask|seg|gt|label|anno|truth", re.IGNORECASE)  # what a mask suffix in an image folder says


def split_mixed(files: list[str]) -> tuple[list[str], list[str]]:
    """(images, masks) of one folder holding both, as BUSI's release does (`x.png`, `x_mask.png`): a mask
    is named after another file's stem plus a suffix that says mask (_mask, _seg, _gt, _label, ...)."""
    stems = {stem(f) for f in files}
    masks = set()
    for f in files:
        hit = _image_of(stem(f), stems, exact=False)
        if hit and MASK_WORDS.search(hit[1]):
            masks.add(f)
    return [f for f in files if f not in masks], sorted(masks)


def pair_by_name(image_files: list[str], mask_files: list[str]) -> tuple[dict[str, list[str]], list[str], list[str], str]:
    """Pair one folder's images with another's masks by name.

    Returns (image file -> its mask files, images without a mask, masks without an image, the
    detected suffix). The suffix is the commonest one the masks add to an image stem; masks that
    add it plus an index (`_mask_1`) are further masks of the same image.
    """
    by_stem: dict[str, str] = {}
    for f in sorted(image_files):
        by_stem.setdefault(stem(f), f)
    found = {m: _image_of(stem(m), set(by_stem)) for m in mask_files}
    counts = Counter(hit[1] for hit in found.values() if hit and not re.fullmatch(_MULTI, hit[1]))
    suffix = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))[0] if counts else ""
    extra = re.compile(re.escape(suffix) + _MULTI)
    paired: dict[str, list[str]] = {}
    lone_masks: list[str] = []
    for m in sorted(mask_files):
        hit = found[m]
        if hit and (hit[1] == suffix or extra.fullmatch(hit[1])):
            paired.setdefault(by_stem[hit[0]], []).append(m)
        else:
            lone_masks.append(m)
    for masks in paired.values():
        masks.sort(key=lambda m: (len(m), m))  # NAME_mask before NAME_mask_1
    lone_images = [f for f in sorted(image_files) if f not in paired]
    return paired, lone_images, lone_masks, suffix


# --------------------------------------------------------------------------- listing


def _files(folder: Path, beside: Path) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Image files per subfolder (relative, '' = the folder itself), other files, volume files; hidden
    ones skipped, and `beside` (the other folder of the pair, which may sit inside this one) too."""
    images: dict[str, list[str]] = {}
    other: list[str] = []
    volumes: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and Path(dirpath, d) != beside)
        sub = Path(dirpath).relative_to(folder).as_posix()
        sub = "" if sub == "." else sub
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if is_image(f):
                images.setdefault(sub, []).append(f)
            elif is_volume(f):
                volumes.append(f"{sub}/{f}".lstrip("/"))
            else:
                other.append(f"{sub}/{f}".lstrip("/"))
    return images, other, volumes


def _pair_folders(scan: Scan, image_dir: Path, mask_dir: Path, parts: tuple[str, ...]) -> None:
    """Add the pairs of one image folder and its mask folder (and their same-named subfolders) to `scan`."""
    root = scan.root
    images, other, volumes = _files(image_dir, mask_dir)
    masks, mask_other, mask_volumes = _files(mask_dir, image_dir)
    if volumes or mask_volumes:
        raise volume_error(image_dir if volumes else mask_dir, volumes or mask_volumes)

    def rel(folder: Path, sub: str, f: str) -> str:
        return (folder / sub / f).relative_to(root).as_posix()

    scan.ignored += [rel(image_dir, "", f) for f in other] + [rel(mask_dir, "", f) for f in mask_other]
    for sub in sorted(set(images) | set(masks)):
        if image_dir == mask_dir:  # one folder of both
            images[sub], masks[sub] = split_mixed(images[sub])
        paired, lone_images, lone_masks, suffix = pair_by_name(images.get(sub, []), masks.get(sub, []))
        sub_parts = tuple(p for p in sub.split("/") if p)
        split, group = classify(parts + sub_parts)
        for image, mask_files in paired.items():
            scan.pairs.append(Pair(name="/".join(parts + sub_parts + (stem(image),)), image=rel(image_dir, sub, image),
                                   masks=tuple(rel(mask_dir, sub, m) for m in mask_files),
                                   folder_split=split, group=group))
        if paired:
            scan.suffixes[suffix] += len(paired)
        scan.images_without_mask += [rel(image_dir, sub, f) for f in lone_images]
        scan.masks_without_image += [rel(mask_dir, sub, m) for m in lone_masks]


def _folder_key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def _named(children: list[str], names: tuple[str, ...]) -> str | None:
    """The child folder called one of `names` (the first name that matches), None when none is."""
    keys = {_folder_key(c): c for c in children}
    return next((keys[_folder_key(n)] for n in names if _folder_key(n) in keys), None)


def scan_paired_folders(root: Path) -> Scan:
    """Every image folder beside a mask folder under `root`, paired by name."""
    scan = Scan("paired-folders", root)
    sites = 0
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        parts = here.relative_to(root).parts
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(parts) >= MAX_DEPTH:
            dirnames[:] = []
            continue
        image_dir, mask_dir = _named(dirnames, IMAGE_FOLDERS), _named(dirnames, MASK_FOLDERS)
        if image_dir and mask_dir:
            sites += 1
            _pair_folders(scan, here / image_dir, here / mask_dir, parts)
            dirnames[:] = [d for d in dirnames if d not in (image_dir, mask_dir)]
    if not sites:
        return _scan_mixed_folders(scan)
    return scan


def _scan_mixed_folders(scan: Scan) -> Scan:
    """The topmost folders under the root whose files are images and their masks side by side."""
    for dirpath, dirnames, filenames in os.walk(scan.root):
        here = Path(dirpath)
        parts = here.relative_to(scan.root).parts
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if len(parts) < MAX_DEPTH else []
        if split_mixed([f for f in filenames if is_image(f)])[1]:
            _pair_folders(scan, here, here, parts)
            dirnames[:] = []
    if not scan.pairs:
        raise LayoutError(_no_layout(scan.root))
    scan.notes.append("images and masks side by side in one folder: a mask is an image's name plus a suffix saying mask")
    return scan


def scan_two_folders(images: Path, masks: Path) -> Scan:
    """--images DIR --masks DIR: the root is their common parent, the names are the images' paths below DIR."""
    root = Path(os.path.commonpath([images, masks]))
    if root in (images, masks):  # one inside the other: names stay relative to a folder above both
        root = root.parent
    scan = Scan("two-folders", root)
    _pair_folders(scan, images, masks, ())
    return scan


def _no_layout(root: Path) -> str:
    children = sorted(c.name for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")) if root.is_dir() else []
    seen = f" (it has {', '.join(children[:6])}{' ...' if len(children) > 6 else ''})" if children else ""
    return (f"no image folder beside a mask folder in {root}{seen}; expected e.g. images/ + masks/ (or imgs, "
            f"image + mask, labels, gt, ...), images beside their masks (x.png + x_mask.png), nnU-Net's "
            f"imagesTr/ + labelsTr/, or give --images DIR --masks DIR")
