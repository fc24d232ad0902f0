"""Read a user's folder of images and binary masks into a PreparedDataset, with its data check.

The folder's pairs (core/data/folders.py, core/data/nnunet.py) are decoded like Oxford-IIIT Pet's
(core/data/dataset.py: any image mode, squashed to image_size x image_size) into the same
PreparedDataset: a boolean foreground mask (core/data/masks.py) and no ignore band, so training,
evaluation and the store read every dataset alike. Several masks of one
image are united; a mask of another size than its image is resized to it (nearest) and counted.
An image whose file or any of whose masks cannot be read is skipped and named in the check.
An image's group (images.group_name) is its group folder (benign/), else its --group-by key.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from core.data.check import DataCheck
from core.data.dataset import DataError, ImageInfo, PreparedDataset, Decoded, cached, decoded, open_rgb, stacked
from core.data.folders import Pair, Scan, stem
from core.data.masks import SOFT_VALUES, format_foreground, read_mask
from core.data.splits import assign_splits, compile_group_by, group_key
from core.machine import usable_cores

SOURCE = "folder"  # datasets.source of a user's own data


class UnusableData(DataError):
    """The folder was read but cannot be trained on; `check` says what was found."""

    def __init__(self, message: str, check: DataCheck):
        super().__init__(message)
        self.check = check


@dataclass
class _Read:
    """One pair decoded, or the files that stopped it."""

    decoded: Decoded | None = None   # at image_size
    image: Image.Image | None = None  # at its own size
    mask: np.ndarray | None = None  # (H, W) bool foreground
    kinds: list[str] = field(default_factory=list)
    soft: int = 0  # masks with more than SOFT_VALUES values
    resized: list[str] = field(default_factory=list)
    unreadable: list[list[str]] = field(default_factory=list)


def read_pair(root: Path, pair: Pair, foreground: tuple[int, ...] | None) -> _Read:
    """One pair at its own size: the image (RGB) and the union of its masks (bool), or
    the files that stopped it. What the dataset decodes, and what a per-sample reader (the reports'
    loop in benchmarks/) reads on every access."""
    out = _Read()
    try:
        image = open_rgb(root / pair.image)
    except Exception:
        out.unreadable.append([pair.image, "truncated or unreadable image"])
        return out
    union = np.zeros((image.height, image.width), dtype=bool)
    for rel in pair.masks:
        mask = read_mask(root / rel, foreground)
        if isinstance(mask, str):
            out.unreadable.append([rel, mask])
            continue
        out.kinds.append(mask.described)
        out.soft += len(mask.values) > SOFT_VALUES
        fg = mask.foreground
        if fg.shape != union.shape:
            out.resized.append(rel)
            fg = np.asarray(Image.fromarray(fg).resize(image.size, Image.Resampling.NEAREST), dtype=bool)
        union |= fg
    if not out.unreadable:
        out.image, out.mask = image, union
    return out


def _read_pair(root: Path, pair: Pair, image_size: int, foreground: tuple[int, ...] | None) -> _Read:
    out = read_pair(root, pair, foreground)
    if out.image is not None and out.mask is not None:
        out.decoded = decoded(out.image, out.mask, image_size)
    return out


def _fingerprint(scan: Scan, foreground: tuple[int, ...] | None, group_by: str | None) -> str:
    """Every file read (size, mtime), the pairing, and the options that change the result."""
    h = hashlib.sha1(json.dumps([scan.layout, foreground, group_by, scan.images_without_mask,
                                 scan.masks_without_image, scan.ignored, scan.notes, dict(scan.suffixes)]).encode())
    h.update(scan.extra)
    for pair in scan.pairs:
        h.update(json.dumps([pair.name, pair.folder_split, pair.group]).encode())
        for rel in (pair.image, *pair.masks):
            try:
                st = (scan.root / rel).stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()


def _foreground_words(given: tuple[int, ...] | None, scan: Scan) -> str:
    if given is not None:
        return f"values {format_foreground(given)} (--foreground)"
    if scan.foreground is not None:
        return f"labels {format_foreground(scan.foreground)} (every label but background, dataset.json)"
    return "non-zero"


def prepare_folder(scan: Scan, image_size: int, *, foreground: tuple[int, ...] | None = None,
                   group_by: str | None = None, cache_dir: Path | None = None,
                   log: Callable[[str], None] = print) -> PreparedDataset:
    """Decode a scanned folder at image_size x image_size (cached like Oxford-IIIT Pet), with its check.

    Raises UnusableData (a DataError, one line, with the check) when it cannot be trained on.
    """
    try:
        pattern = compile_group_by(group_by) if group_by else None
    except ValueError as exc:
        raise DataError(f"--group-by: {exc}") from None
    keys = [group_key(stem(pair.image.rsplit("/", 1)[-1]), pattern) for pair in scan.pairs]
    try:
        plan = assign_splits([p.folder_split for p in scan.pairs], [k or p.name for k, p in zip(keys, scan.pairs)])
    except ValueError as exc:
        raise DataError(str(exc)) from None
    fg = foreground if foreground is not None else scan.foreground
    variant = f"{scan.layout}:{fg}:{group_by}"

    def build() -> PreparedDataset:
        return _decode_all(scan, image_size, fg, plan.splits, keys, plan.notes, group_by,
                           _foreground_words(foreground, scan))

    ds = cached(cache_dir, scan.root, image_size, SOURCE, _fingerprint(scan, fg, group_by), build, log, variant)
    assert ds.check is not None
    ds.variant = "; ".join(([f"foreground {format_foreground(foreground)}"] if foreground is not None else [])
                           + ([f"group-by {group_by}"] if group_by else []))
    problem = ds.check.problem()
    if problem:
        raise UnusableData(problem, ds.check)
    return ds


def _splits_of(keys: list[str | None], splits: list[str]) -> dict[str, set[str]]:
    """--group-by key -> the splits its images are in."""
    out: dict[str, set[str]] = {}
    for key, split in zip(keys, splits):
        if key:
            out.setdefault(key, set()).add(split)
    return out


def _decode_all(scan: Scan, image_size: int, foreground: tuple[int, ...] | None, splits: list[str],
                keys: list[str | None], notes: list[str], group_by: str | None, fg_words: str) -> PreparedDataset:
    """Decode every pair on a thread pool (PIL releases the GIL), keeping the scan's order."""
    workers = max(1, min(usable_cores(), len(scan.pairs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reads = list(pool.map(lambda p: _read_pair(scan.root, p, image_size, foreground), scan.pairs))
    check = DataCheck(layout=scan.layout, root=str(scan.root), image_size=image_size, pairs=len(scan.pairs),
                      images_without_mask=scan.images_without_mask, masks_without_image=scan.masks_without_image,
                      suffixes=dict(scan.suffixes), foreground=fg_words, ignored=scan.ignored,
                      notes=notes + scan.notes, group_by=group_by)
    infos: list[ImageInfo] = []
    kept: list[Decoded] = []
    kinds: Counter[str] = Counter()
    for pair, read, split, key in zip(scan.pairs, reads, splits, keys):
        kinds.update(read.kinds)
        check.resized += read.resized
        check.unreadable += read.unreadable
        check.united += len(pair.masks) > 1
        if read.decoded is None:
            continue
        d = read.decoded
        group = pair.group or key
        infos.append(ImageInfo(name=pair.name, split=split, breed="", species="", width=d.width, height=d.height,
                               brightness=d.brightness, fg_fraction=d.fg_fraction, group=group, path=pair.image))
        kept.append(d)
    check.mask_kinds = dict(kinds)
    soft = sum(read.soft for read in reads)
    if soft and foreground is None:
        check.notes.append(f"{soft} masks hold more than {SOFT_VALUES} values, as soft or JPEG-saved masks do; every "
                           f"non-zero value counts as foreground: give e.g. --foreground 128-255 to threshold them")
    check.empty = sum(1 for i in infos if i.fg_fraction == 0)
    check.splits = dict(Counter(i.split for i in infos))
    check.groups = dict(Counter(i.group for i in infos if i.group))
    if infos and not check.splits.get("val"):
        check.notes.append("no val images: training validates on its train images")
    if infos:
        check.sizes = [[min(i.width for i in infos), min(i.height for i in infos),
                        max(i.width for i in infos), max(i.height for i in infos)]]
    if group_by is not None:
        check.group_keys = len({k for k in keys if k})
        check.unmatched_group_by = sum(1 for k in keys if not k)
        spread = sorted(k for k, s in _splits_of(keys, splits).items() if len(s) > 1)
        if spread:
            check.notes.append(f"{len(spread)} --group-by keys have images in several split folders "
                               f"({', '.join(spread[:3])}{', ...' if len(spread) > 3 else ''}): the folders' splits are kept")
    images, masks, ignore = stacked(kept, image_size)
    return PreparedDataset(
        root=scan.root, source=SOURCE, image_size=image_size, infos=infos, images=images, masks=masks, ignore=ignore,
        skipped=[(f, why) for f, why in check.unreadable], layout=scan.layout, check=check)
