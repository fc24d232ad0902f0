"""Which data a job trains on: the real Oxford-IIIT Pet set, or the built-in synthetic one.

`auto` prefers real data (already on disk, else downloaded) and falls back to the synthetic
set with a warning; the choice is visible in every run's `dataset` column.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.data.dataset import DataError, PreparedDataset, cache_root, prepare_dataset
from core.data.download import DownloadError, ensure_oxford_pets, looks_complete
from core.data.synthetic import default_synthetic_root, generate_synthetic

DATA_CHOICES = ("auto", "oxford-pets", "synthetic")
SYNTHETIC_IMAGES = 1000
SYNTHETIC_SIZE = 128


def default_pets_root() -> Path:
    """Where the real dataset is looked for, and downloaded to, when no --data-root is given."""
    return cache_root() / "data" / "oxford-iiit-pet"


def load_data(data: str = "auto", root: str | Path | None = None, image_size: int = 64, seed: int = 0,
              synthetic_images: int = SYNTHETIC_IMAGES, log: Callable[[str], None] = print) -> PreparedDataset:
    """Prepare the dataset a job asked for; raises DataError with a one-line message when it cannot."""
    if data not in DATA_CHOICES:
        raise DataError(f"unknown data source {data!r}; choose from {', '.join(DATA_CHOICES)}")
    if root is not None:
        root = Path(root).expanduser()
        if data == "synthetic" and not looks_complete(root):
            log(f"generating the synthetic set ({synthetic_images} images) in {root}")
            try:
                generate_synthetic(root, n_images=synthetic_images, image_size=max(SYNTHETIC_SIZE, image_size),
                                   seed=seed)
            except OSError as exc:  # read-only or full disk, a parent that is a file, ...
                raise DataError(f"cannot write the synthetic set to {root}: {exc.strerror or exc}") from exc
            return prepare_dataset(root, image_size, log=log)
        if not root.exists():
            raise DataError(f"data root {root} does not exist; put the Oxford-IIIT Pet files there "
                            f"(images/, annotations/) or use --data synthetic")
        if not root.is_dir():
            raise DataError(f"data root {root} is a file, not a folder; give the folder holding images/ and "
                            f"annotations/")
        return prepare_dataset(root, image_size, log=log)

    if data in ("auto", "oxford-pets"):
        pets = default_pets_root()
        try:
            if not looks_complete(pets):
                log(f"Oxford-IIIT Pet not found in {pets}; downloading it")
            return prepare_dataset(ensure_oxford_pets(pets), image_size, log=log)
        except DownloadError as exc:
            if data == "oxford-pets":
                raise DataError(str(exc)) from exc
            log(f"warning: {exc}")
            log("warning: using the built-in SYNTHETIC dataset instead; results are not Oxford-IIIT Pet results")
    size = max(SYNTHETIC_SIZE, image_size)
    root = default_synthetic_root(size, seed, synthetic_images)
    if not looks_complete(root):
        log(f"generating the synthetic set ({synthetic_images} images, {size} px) in {root}")
    generate_synthetic(root, n_images=synthetic_images, image_size=size, seed=seed)  # returns at once when present
    return prepare_dataset(root, image_size, log=log)
