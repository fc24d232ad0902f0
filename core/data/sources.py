"""Which data a job trains on: the user's own folder, the real Oxford-IIIT Pet set, or the synthetic one.

With --data-root the folder's layout is recognised (detect_layout): the synthetic set (its marker
file), Oxford-IIIT Pet (annotations/trainval.txt or annotations/trimaps/), nnU-Net raw (imagesTr/),
else paired image and mask folders; --images/--masks name two folders anywhere. Without a folder,
`auto` is the synthetic set (offline, generated once into the cache); real pets only on request
(`oxford-pets`, downloaded when absent). The choice is visible in every run's `dataset` column.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.data.dataset import SYNTHETIC_MARKER, DataError, PreparedDataset, cache_root, prepare_dataset
from core.data.download import DownloadError, ensure_oxford_pets, looks_complete
from core.data.folder_dataset import prepare_folder
from core.data.folders import LayoutError, Scan, scan_paired_folders, scan_two_folders
from core.data.layout import TRAINVAL_LIST, TRIMAPS_DIR
from core.data.nnunet import is_nnunet, scan_nnunet
from core.data.synthetic import default_synthetic_root, generate_synthetic

DATA_CHOICES = ("auto", "folder", "oxford-pets", "synthetic")
SYNTHETIC_IMAGES = 600  # the default synthetic set: jobs.train and the quick sweep train on the same one
SYNTHETIC_SIZE = 128


def default_pets_root() -> Path:
    """Where the real dataset is looked for, and downloaded to, when no --data-root is given."""
    return cache_root() / "data" / "oxford-iiit-pet"


def detect_layout(root: Path) -> str:
    """How the folder at `root` is laid out: one of core.store.schema.LAYOUTS but two-folders."""
    if (root / SYNTHETIC_MARKER).exists():
        return "synthetic"
    if (root / TRAINVAL_LIST).is_file() or (root / TRIMAPS_DIR).is_dir():
        return "oxford-pets"
    return "nnunet" if is_nnunet(root) else "paired-folders"


def scan_folder(root: str | Path | None = None, images: str | Path | None = None,
                masks: str | Path | None = None) -> Scan:
    """The pairs of a user's folder (`root`), or of two folders (`images`, `masks`); DataError when none can be read."""
    try:
        if images is not None or masks is not None:
            if images is None or masks is None:
                raise DataError("--images and --masks go together: give both folders")
            images, masks = Path(images).expanduser().resolve(), Path(masks).expanduser().resolve()
            for flag, folder in (("--images", images), ("--masks", masks)):
                if not folder.is_dir():
                    raise DataError(f"{flag} {folder} is not a folder")
            return scan_two_folders(images, masks)
        assert root is not None
        root = Path(root).expanduser().resolve()
        return scan_nnunet(root) if detect_layout(root) == "nnunet" else scan_paired_folders(root)
    except LayoutError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:  # a folder we may not list
        raise DataError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None


def load_data(data: str = "auto", root: str | Path | None = None, image_size: int = 64, seed: int = 0,
              synthetic_images: int = SYNTHETIC_IMAGES, log: Callable[[str], None] = print, *,
              images: str | Path | None = None, masks: str | Path | None = None,
              foreground: tuple[int, ...] | None = None, group_by: str | None = None) -> PreparedDataset:
    """Prepare the dataset a job asked for; raises DataError with a one-line message when it cannot.

    `images`/`masks` (two folders), `foreground` and `group_by` are for a user's own folder.
    """
    if data not in DATA_CHOICES:
        raise DataError(f"unknown data source {data!r}; choose from {', '.join(DATA_CHOICES)}")
    folder_options = dict(foreground=foreground, group_by=group_by, log=log)
    if images is not None or masks is not None:
        if data not in ("auto", "folder") or root is not None:
            raise DataError("--images/--masks name the data themselves: leave out --data-root and --data")
        return prepare_folder(scan_folder(images=images, masks=masks), image_size, **folder_options)
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
            raise DataError(f"data root {root} does not exist; give the folder holding your images and masks "
                            f"(or the Oxford-IIIT Pet files), or use --data synthetic")
        if not root.is_dir():
            raise DataError(f"data root {root} is a file, not a folder; give the folder holding your images and masks")
        layout = detect_layout(root) if data in ("auto", "folder") else data
        if layout in ("oxford-pets", "synthetic"):
            return prepare_dataset(root, image_size, log=log)
        return prepare_folder(scan_folder(root), image_size, **folder_options)
    if data == "folder":
        raise DataError("--data folder needs --data-root DIR, or --images DIR --masks DIR")

    if data == "oxford-pets":  # only when asked for: never a silent 800 MB download
        pets = default_pets_root()
        try:
            if not looks_complete(pets):
                log(f"Oxford-IIIT Pet not found in {pets}; downloading it")
            return prepare_dataset(ensure_oxford_pets(pets), image_size, log=log)
        except DownloadError as exc:
            raise DataError(str(exc)) from exc
    # no folder named ("auto" or "synthetic"): the built-in synthetic set, offline
    size = max(SYNTHETIC_SIZE, image_size)
    root = default_synthetic_root(size, seed, synthetic_images)
    if not looks_complete(root):
        log(f"generating the synthetic set ({synthetic_images} images, {size} px) in {root}")
    generate_synthetic(root, n_images=synthetic_images, image_size=size, seed=seed)  # returns at once when present
    return prepare_dataset(root, image_size, log=log)
