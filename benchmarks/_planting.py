"""Planting wrong masks for benchmarks/label_errors.py: the kinds of error, and a dataset's test masks at their own
size, read as the loader reads them, planted in memory or, in the copy a sweep trains on, in its files too. Only
own_size_mask, as_scored and write_mask, side by side, touch core.data's mask rules (reading, scoring size, files).
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

KINDS = ("erased", "grown", "shrunk", "shifted", "swapped")


# -- kinds of error ----------------------------------------------------------------------------------------

def grow(mask: np.ndarray) -> np.ndarray:
    """The mask widened until its area is about doubled (or the image is full)."""
    if not mask.any():
        return mask.copy()
    outside = ndimage.distance_transform_edt(~mask)
    reach = np.sort(outside[~mask])
    if not len(reach):
        return mask.copy()
    radius = reach[min(int(mask.sum()), len(reach)) - 1]
    return mask | (outside <= radius)


def shrink(mask: np.ndarray) -> np.ndarray:
    """The mask narrowed to about half its area (its inner half by distance to the edge)."""
    inside = ndimage.distance_transform_edt(mask)
    depth = np.sort(inside[mask])[::-1]
    if not len(depth):
        return mask.copy()
    cut = depth[len(depth) // 2]  # distances come in steps: of >= and >, the one nearer half the area
    deep, deeper = inside >= cut, inside > cut
    return min((deep, deeper), key=lambda m: abs(int(m.sum()) - len(depth) / 2))


def shift(mask: np.ndarray) -> np.ndarray:
    """The mask moved right and down by half its extent, at least a fifth of the image (no wrap-around)."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return mask.copy()
    dy = max(int(np.ptp(rows) / 2), h // 5)
    dx = max(int(np.ptp(cols) / 2), w // 5)
    out = np.zeros_like(mask)
    # away from the image's nearer edge, so most of the mask stays inside
    sy = dy if rows.mean() < h / 2 else -dy
    sx = dx if cols.mean() < w / 2 else -dx
    src = mask[max(0, -sy):h - max(0, sy), max(0, -sx):w - max(0, sx)]
    out[max(0, sy):max(0, sy) + src.shape[0], max(0, sx):max(0, sx) + src.shape[1]] = src
    return out


def resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask resized (nearest) to another image's (height, width)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.Resampling.NEAREST)) > 0


def planted_mask(kind: str, mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The wrong mask of one kind; `other` is another test image's mask (for 'swapped')."""
    if kind == "erased":
        return np.zeros_like(mask)
    if kind == "swapped":
        return resized(other, mask.shape)
    return {"grown": grow, "shrunk": shrink, "shifted": shift}[kind](mask)


# -- the dataset's masks: the only code here that uses core.data's mask rules ------------------------------

def own_size_mask(root: Path, name: str, pair, foreground: tuple[int, ...] | None = None) -> np.ndarray:
    """A test image's mask at its own size as the loader reads it: Oxford's foreground (its trimap's ignore band
    counts as foreground) or, for a folder's `pair` (core.data.folders.Pair), the union of its mask files."""
    from core.data.dataset import read_truth
    from core.data.folder_dataset import read_pair

    mask = read_truth(root, name) if pair is None else read_pair(root, pair, foreground).mask
    if mask is None or isinstance(mask, str):
        raise RuntimeError(f"cannot read the mask of {name} in {root}: {mask or 'unreadable files'}")
    return mask[0] if pair is None else mask


def as_scored(mask: np.ndarray, image_wh: tuple[int, int], size: int) -> np.ndarray:
    """A mask (bool) at its file's size as the sweep scores it (core.data.dataset.mask_as_scored)."""
    from core.data.dataset import mask_as_scored

    return mask_as_scored(np.asarray(mask, dtype=bool), image_wh, size)


def write_mask(root: Path, name: str, pair, mask: np.ndarray) -> None:
    """A planted mask into the dataset's files, in its layout: Oxford's trimap, or a folder's first mask file (the
    others removed)."""
    from core.data.layout import TRIMAP_BACKGROUND, TRIMAP_PET, trimap_path

    if pair is None:
        Image.fromarray(np.where(mask, TRIMAP_PET, TRIMAP_BACKGROUND).astype(np.uint8)).save(trimap_path(root, name))
        return
    first, *rest = pair.masks
    for extra in rest:
        (root / extra).unlink()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(root / first)


class DatasetMasks:
    """A dataset folder's test masks at their own size, read as the loader reads them; `write` and `drop_object`
    plant in memory, and with `files` in the folder's files too (the copy a sweep trains on). `kind` is the
    layout: "oxford-pets" (a trimap per image) or "folder" (the user's own, read by core.data.sources: an image
    may have several mask files, one object each, as BUSI's NAME_mask.png and NAME_mask_1.png)."""

    def __init__(self, root: Path, names: list[str], files: bool = False):
        from core.data.sources import detect_layout, scan_folder

        self.root, self.files = root, files
        self.kind = "oxford-pets" if detect_layout(root) == "oxford-pets" else "folder"
        scan = None if self.kind == "oxford-pets" else scan_folder(root)
        self.foreground = scan.foreground if scan else None
        pairs = {p.name: p for p in scan.pairs} if scan else {}
        self.pairs = {n: pairs.get(n) for n in names}  # None: Oxford's trimap
        self.masks = {n: own_size_mask(root, n, self.pairs[n], self.foreground) for n in names}

    def in_memory(self) -> "DatasetMasks":
        """A copy whose plantings stay in memory (the files untouched), so many can be scored against one sweep."""
        other = copy.copy(self)
        other.files, other.masks, other.pairs = False, dict(self.masks), dict(self.pairs)
        return other

    def read(self, name: str) -> np.ndarray:
        return self.masks[name]

    def objects(self, name: str) -> int:
        pair = self.pairs[name]
        return 1 if pair is None else len(pair.masks)

    def write(self, name: str, mask: np.ndarray) -> None:
        self.masks[name] = mask
        if self.files:
            write_mask(self.root, name, self.pairs[name], mask)

    def drop_object(self, name: str) -> None:
        """The mask keeps all of its mask files' objects but the last's."""
        pair = self.pairs[name]
        kept = replace(pair, masks=pair.masks[:-1])
        if self.files:
            (self.root / pair.masks[-1]).unlink()
        self.pairs[name], self.masks[name] = kept, own_size_mask(self.root, name, kept, self.foreground)


def plant(dataset: DatasetMasks, test_names: list[str], share: float, seed: int, first_kind: int = 0) -> dict[str, str]:
    """Give `share` of the test images (those with a non-empty mask) a wrong mask, the kinds in turn from
    KINDS[first_kind]; returns name -> kind."""
    rng = np.random.default_rng(seed)
    masks = {name: dataset.read(name) for name in test_names}
    candidates = [n for n in test_names if masks[n].any()]
    k = max(1, round(share * len(test_names)))
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:k]]
    two = [n for n in chosen if dataset.objects(n) > 1] + [n for n in candidates if dataset.objects(n) > 1 and n not in chosen]
    kinds: dict[str, str] = {}
    if dataset.kind == "folder" and two:  # one mask of several files loses one
        if two[0] not in chosen:
            chosen[-1] = two[0]
        kinds[two[0]] = "object removed"
        dataset.drop_object(two[0])
    rest = [n for n in chosen if n not in kinds]
    keep = [n for n in candidates if n not in chosen]
    for j in range(len(rest)):
        kind = KINDS[(first_kind + j) % len(KINDS)]
        # a mask is grown where it can double: the smallest one left (a pet filling the frame has no room)
        name = min(rest, key=lambda n: masks[n].mean()) if kind == "grown" else rest[0]
        rest.remove(name)
        other = masks[keep[int(rng.integers(len(keep)))]] if keep else masks[name][::-1]
        dataset.write(name, planted_mask(kind, masks[name], other))
        kinds[name] = kind
    return kinds


def planted_truths(files: DatasetMasks, names: list[str], wh: list[tuple[int, int]], clean: np.ndarray, size: int,
                   share: float, seed: int, first_kind: int = 0) -> tuple[np.ndarray, dict[str, str]]:
    """The test truths at evaluation size (N, S, S) after planting in memory with `seed`, kinds from
    KINDS[first_kind] (the files untouched), and name -> kind of the planted ones; `clean` are the unplanted
    truths."""
    memory = files.in_memory()
    kinds = plant(memory, names, share, seed, first_kind)
    truth = clean.astype(bool).copy()
    for k, name in enumerate(names):
        if name in kinds:
            truth[k] = as_scored(memory.read(name), wh[k], size)
    return truth, kinds
