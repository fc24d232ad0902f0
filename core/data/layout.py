"""The Oxford-IIIT Pet file layout and trimap values: the one place every module takes them from.

Only the Oxford-IIIT Pet reader (core/data/dataset.py) and the synthetic generator, which writes this
layout, know trimap values: the reader turns a trimap into the core's foreground mask and ignore band
(`trimap_truth`) as it reads it.

The official release, which the synthetic set also writes::

    images/<name>.jpg
    annotations/trimaps/<name>.png      1 = pet, 2 = background, 3 = border
    annotations/trainval.txt            lines "NAME CLASS_ID SPECIES BREED_ID" (SPECIES 1=cat, 2=dog)
    annotations/test.txt                the same, for the test split
    annotations/list.txt                every image, after a few '#' header lines

Paths are relative to the dataset root, with '/' separators, so the same strings serve for
files and for messages naming them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

LAYOUT_SOURCES = ("oxford-pets", "synthetic")  # datasets.source values read from this layout


def has_breeds(source: str | None) -> bool:
    """Whether a dataset of this datasets.source has breeds and species (its split files name them). None, a
    dataset no store row describes, counts as this layout: stores before the user's own folders held no other."""
    return source is None or source in LAYOUT_SOURCES


def has_ignore_band(source: str | None) -> bool:
    """Whether a dataset of this datasets.source has an ignore band (its trimaps' border); None as in has_breeds."""
    return source is None or source in LAYOUT_SOURCES


TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
TRIMAP_VALUES = (TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER)

IMAGES_DIR = "images"
ANNOTATIONS_DIR = "annotations"
TRIMAPS_DIR = f"{ANNOTATIONS_DIR}/trimaps"
TRAINVAL_LIST = f"{ANNOTATIONS_DIR}/trainval.txt"
TEST_LIST = f"{ANNOTATIONS_DIR}/test.txt"
ALL_LIST = f"{ANNOTATIONS_DIR}/list.txt"
SPLIT_LISTS = (TRAINVAL_LIST, TEST_LIST)  # what the loader reads; list.txt is informational


def image_rel(name: str) -> str:
    """An image's path relative to the root: images/NAME.jpg."""
    return f"{IMAGES_DIR}/{name}.jpg"


def trimap_rel(name: str) -> str:
    """A trimap's path relative to the root: annotations/trimaps/NAME.png."""
    return f"{TRIMAPS_DIR}/{name}.png"


def image_path(root: str | Path, name: str) -> Path:
    return Path(root) / image_rel(name)


def trimap_path(root: str | Path, name: str) -> Path:
    return Path(root) / trimap_rel(name)


A = TypeVar("A")


def trimap_foreground(trimap: A) -> A:
    """The foreground mask of a trimap (numpy array or torch tensor), bool: pet and border are foreground.

    The border band is the pet's ambiguous outline; counting it as foreground is the lab reports'
    convention, and the border-aware dice ignores it instead (`trimap_truth`'s ignore band).
    """
    return trimap != TRIMAP_BACKGROUND


def trimap_truth(trimap: A) -> tuple[A, A]:
    """(foreground, ignore band) of a trimap, bool each: foreground = pet or border, ignore = border."""
    return trimap_foreground(trimap), trimap == TRIMAP_BORDER
