"""Read an Oxford-IIIT Pet style dataset into fixed-size arrays, once, with an on-disk cache.

The layout is the official release's (core/data/layout.py spells it out): images/*.jpg,
annotations/trimaps/*.png, annotations/trainval.txt and test.txt. The official test list is our test split; trainval is split into train and val by a hash of
the image name, so an image's split never depends on which other images exist.

Real files are messy, so what can be converted is converted and the rest is skipped:

* images of any mode PIL opens (GIF/PNG named .jpg, L, P, LA, RGBA, CMYK) become RGB. Alpha is
  dropped, not composited: the stored colour channels are what the trimap was drawn on.
  EXIF orientation is ignored for the same reason (trimaps match the raw pixel grid).
* a trimap whose size differs from its image is resized to the image size (NEAREST) and kept.
* truncated/unreadable images, missing/empty/unreadable trimaps, trimaps with values outside
  {1, 2, 3}, split lines naming absent images, malformed or duplicate split lines are skipped,
  and all of them are reported in ONE log line.

Decoding is the slow part, so the resized arrays are cached (uncompressed .npz, written
atomically) under a key of the root, size and a fingerprint of every file involved.

Every image, of any size and aspect ratio, is resized to image_size x image_size (bilinear) and its
mask the same way (nearest): squashed, not cropped or padded, so the whole frame is seen; training,
evaluation, the stored masks and the dashboard's overlays all use these arrays.

The core holds every dataset as a boolean foreground mask plus an optional boolean ignore band:
this reader is where trimaps stop (core.data.layout.trimap_truth: foreground = pet or border,
ignore = border). A user's own folder (core/data/folder_dataset.py) becomes the same
PreparedDataset with no ignore band.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from core.data.check import DataCheck
from core.data.layout import (
    SPLIT_LISTS,
    TEST_LIST,
    TRAINVAL_LIST,
    TRIMAP_VALUES,
    image_rel,
    trimap_path,
    trimap_rel,
    trimap_truth,
)
from core.machine import usable_cores

SPLITS = ("train", "val", "test")
CACHE_VERSION = 3  # 2: layout, groups, paths and the data check ride along; 3: masks + ignore band, no trimaps
SPECIES_NAMES = {1: "cat", 2: "dog"}
SYNTHETIC_MARKER = "SYNTHETIC.md"  # written last by the synthetic generator: a complete synthetic root


class DataError(Exception):
    """A user-facing problem with the dataset; the message is one line meant for the user."""


@dataclass(frozen=True)
class ImageInfo:
    """Per-image metadata, measured on the original full-size image and trimap."""

    name: str
    split: str
    breed: str
    species: str
    width: int
    height: int
    brightness: float
    fg_fraction: float
    group: str | None = None  # a group folder or --group-by key (a patient, video, class); None = none
    path: str | None = None  # the image file below the root, '/'-separated; None = the layout's rule (images/NAME.jpg)


@dataclass(eq=False)  # arrays make field-wise == meaningless
class PreparedDataset:
    """A whole dataset decoded and resized to image_size x image_size, in split-file order."""

    root: Path
    source: str
    image_size: int
    infos: list[ImageInfo]
    images: np.ndarray
    masks: np.ndarray  # (N, S, S) bool: the foreground
    ignore: np.ndarray | None = None  # (N, S, S) bool: pixels the border-aware dice leaves out; None = no band
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = ""  # one of core.store.schema.LAYOUTS; "" = the source's own (oxford-pets, synthetic)
    check: DataCheck | None = None  # what reading a user's folder found (None for Oxford-IIIT Pet and synthetic)
    variant: str = ""  # the reading options that change masks or splits ("group-by p(\\d+)"); "" = the defaults

    def __post_init__(self) -> None:
        self.layout = self.layout or self.source

    @property
    def name(self) -> str:
        """Key of this dataset in the results store, e.g. "oxford-pets/oxford-pets-sample", "folder/busi".

        Reading options that change masks or splits are part of it ("folder/busi [foreground 255]"):
        an image's stored split and foreground share are those of the options it was read with."""
        return f"{self.source}/{self.root.name}" + (f" [{self.variant}]" if self.variant else "")

    def indices(self, split: str) -> np.ndarray:
        """int64 positions of the images of `split`, in dataset order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.array([i for i, info in enumerate(self.infos) if info.split == split], dtype=np.int64)


def cache_root() -> Path:
    """Base directory for everything SegSweep caches ($SEGSWEEP_CACHE or ~/.cache/segsweep)."""
    return Path(os.environ.get("SEGSWEEP_CACHE", Path.home() / ".cache" / "segsweep"))


def detect_source(root: Path) -> str:
    """ "synthetic" when root holds the synthetic generator's marker file, else "oxford-pets"."""
    return "synthetic" if (Path(root) / SYNTHETIC_MARKER).exists() else "oxford-pets"


def split_of(name: str, listed_in_test: bool) -> str:
    """Split of an image: test.txt -> test; trainval.txt -> val for 1 in 10 names (by sha1)."""
    if listed_in_test:
        return "test"
    return "val" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10 == 0 else "train"


def breed_of(name: str) -> str:
    """Breed from an image name: "american_bulldog_12" -> "american_bulldog"."""
    stem, _, number = name.rpartition("_")
    return stem if stem and number.isdigit() else name


# --------------------------------------------------------------------------- split files


@dataclass(frozen=True)
class _Entry:
    name: str
    split: str
    species: str


def _read_split_files(root: Path) -> tuple[list[_Entry], list[tuple[str, str]], int, bytes]:
    """Parse trainval.txt and test.txt -> (entries, skipped lines, lines listed, raw bytes)."""
    entries: list[_Entry] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    listed = 0
    raw = b""
    for rel in SPLIT_LISTS:
        path = root / rel
        if not path.is_file():
            raise DataError(f"{path} is missing; expected the official {rel} split file")
        data = path.read_bytes()
        raw += rel.encode() + b"\0" + data + b"\0"
        file_listed = 0
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            listed += 1
            file_listed += 1
            fields = line.split()
            if (
                len(fields) != 4
                or not all(f.isdigit() for f in fields[1:])
                or int(fields[2]) not in SPECIES_NAMES
                or "/" in fields[0]
                or "\\" in fields[0]
                or fields[0] in (".", "..")
            ):
                skipped.append((f"{rel}:{lineno}", "malformed line"))
                continue
            name = fields[0]
            if name in seen:
                skipped.append((f"{rel}:{lineno}", f"duplicate entry for {name}"))
                continue
            seen.add(name)
            split = split_of(name, listed_in_test=rel == TEST_LIST)
            entries.append(_Entry(name, split, SPECIES_NAMES[int(fields[2])]))
        if file_listed == 0:
            raise DataError(f"{path} lists no images; expected lines 'NAME CLASS_ID SPECIES BREED_ID'")
    return entries, skipped, listed, raw


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    """One image and its masks at the training size, with what was measured on the full-size files."""

    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool foreground
    ignore: np.ndarray | None  # (S, S) bool ignore band, None where the data has none
    width: int
    height: int
    brightness: float
    fg_fraction: float


def open_rgb(path: Path) -> Image.Image:
    """Fully decode an image file (whatever its real format) as RGB; raises on truncation."""
    with Image.open(path) as im:
        im.load()  # forces the decode, so truncated files raise here
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth grayscale
            arr = np.asarray(im, dtype=np.float64)
            peak = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            return Image.fromarray(np.clip(arr * 255.0 / peak, 0, 255).astype(np.uint8)).convert("RGB")
        return im.convert("RGB")


def _open_trimap(path: Path) -> np.ndarray | str:
    """Trimap as a 2-D uint8 array, or the reason it is unusable."""
    if not path.is_file():
        return "missing trimap"
    if path.stat().st_size == 0:
        return "empty trimap"
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)  # for "P" mode these are palette indices, which is what we want
    except Exception:
        return "truncated or unreadable trimap"
    if arr.ndim == 3:  # RGB(A) trimap: usable only if it is really gray
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[2], 3))):
            return "trimap is not single-channel"
        arr = arr[..., 0]
    if arr.size == 0:
        return "empty trimap"
    if not np.isin(arr, TRIMAP_VALUES).all():
        return "trimap values outside {1,2,3}"
    return arr.astype(np.uint8)


def _decode_pair(root: Path, name: str, image_size: int) -> Decoded | tuple[str, str]:
    """Decode, measure and resize one image and its trimap; returns (path, reason) on failure."""
    image_at, trimap_at = image_rel(name), trimap_rel(name)
    if not (root / image_at).is_file():
        return image_at, "missing image"
    try:
        image = open_rgb(root / image_at)
    except Exception:
        return image_at, "truncated or unreadable"
    trimap = _open_trimap(root / trimap_at)
    if isinstance(trimap, str):
        return trimap_at, trimap
    foreground, ignore = trimap_truth(trimap)
    return decoded(image, foreground, image_size, ignore)


def mask_as_scored(mask: np.ndarray, image_wh: tuple[int, int], image_size: int) -> np.ndarray:
    """A full-size mask (bool) or label map (uint8) as training and evaluation see it: to its image's size
    (width, height) first where it differs, then to image_size x image_size, nearest both times; same dtype.
    The one rule for the truth at evaluation size: the decode, the upgrade's rebuilt truths and the
    dashboard's overlays use it."""
    arr = np.asarray(mask)
    im = Image.fromarray(arr.astype(np.uint8))
    if im.size != tuple(image_wh):
        im = im.resize(tuple(int(v) for v in image_wh), Image.Resampling.NEAREST)
    return np.asarray(im.resize((image_size, image_size), Image.Resampling.NEAREST)).astype(arr.dtype)


def read_truth(root: str | Path, name: str) -> tuple[np.ndarray, np.ndarray] | str:
    """One Oxford-layout image's (foreground, ignore band) at its file's size, bool each, read from its
    trimap as the decode reads it, or the reason the trimap is unusable."""
    trimap = _open_trimap(trimap_path(root, name))
    return trimap if isinstance(trimap, str) else trimap_truth(trimap)


def truth_as_scored(root: str | Path, name: str, image_wh: tuple[int, int],
                    image_size: int) -> tuple[np.ndarray, np.ndarray] | str:
    """One Oxford-layout image's (foreground, ignore band) at image_size, bool each, read from its trimap
    as the decode reads it, or the reason the trimap is unusable (the upgrade rebuilds old stores' truths so)."""
    truth = read_truth(root, name)
    if isinstance(truth, str):
        return truth
    foreground, ignore = truth
    return mask_as_scored(foreground, image_wh, image_size), mask_as_scored(ignore, image_wh, image_size)


def image_as_scored(image: Image.Image, image_size: int) -> np.ndarray:
    """An RGB image brought to image_size x image_size (bilinear, antialiased), (S, S, 3) uint8: the one rule
    for training, evaluation and the store's copy of it (truth_masks.image)."""
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decoded(image: Image.Image, mask: np.ndarray, image_size: int, ignore: np.ndarray | None = None) -> Decoded:
    """Measure a full-size RGB image and its foreground mask (bool, with an optional ignore band of the
    mask's size), then bring them to image_size x image_size: masks to the image's size first if they
    differ, then image bilinear, masks nearest."""
    width, height = image.size
    brightness = float(np.asarray(image.convert("L"), dtype=np.float64).mean() / 255.0)  # L = ITU-R 601 luma
    mask = np.asarray(mask, dtype=bool)
    fg_fraction = float(np.mean(mask))
    return Decoded(
        image=image_as_scored(image, image_size),
        mask=mask_as_scored(mask, image.size, image_size),
        ignore=None if ignore is None else mask_as_scored(np.asarray(ignore, dtype=bool), image.size, image_size),
        width=width,
        height=height,
        brightness=brightness,
        fg_fraction=fg_fraction,
    )


# --------------------------------------------------------------------------- cache


def _fingerprint(root: Path, entries: list[_Entry], split_bytes: bytes) -> str:
    """Hash of split files plus size and mtime of every referenced image and trimap."""
    h = hashlib.sha1(split_bytes)
    for entry in entries:
        for rel in (image_rel(entry.name), trimap_rel(entry.name)):
            try:
                st = (root / rel).stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()


def cache_name(root: Path, image_size: int, source: str, fingerprint: str) -> tuple[str, str]:
    """(file name, stem prefix shared by every file of this root and size in this format). The format
    version leads the name, so code of another version (another worktree sharing the cache) neither
    reads nor, dropping its stale files, deletes it."""
    base = [CACHE_VERSION, str(root), image_size, source]
    prefix = f"v{CACHE_VERSION}-" + hashlib.sha1(json.dumps(base).encode()).hexdigest()[:16]
    key = hashlib.sha1(json.dumps(base + [fingerprint]).encode()).hexdigest()
    return f"{prefix}-{key}.npz", prefix


def load_cache(path: Path, root: Path, source: str, image_size: int) -> PreparedDataset | None:
    """The dataset cached at `path`, or None when there is none or it is unreadable or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            images, masks = npz["images"], npz["masks"]
            ignore = npz["ignore"] if "ignore" in npz.files else None
        infos = [ImageInfo(**d) for d in meta["infos"]]
        skipped = [(p, r) for p, r in meta["skipped"]]
        check = DataCheck.from_dict(meta["check"]) if meta.get("check") else None
        layout = str(meta.get("layout", ""))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None  # unreadable or stale cache: rebuild it
    if len(infos) != len(images) or images.shape[1:] != (image_size, image_size, 3) or masks.dtype != bool:
        return None
    return PreparedDataset(root, source, image_size, infos, images, masks, ignore, skipped, layout, check)


def write_cache(path: Path, ds: PreparedDataset, prefix: str) -> None:
    """Write arrays and metadata to `path` atomically (temp file + os.replace); drop stale versions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"infos": [asdict(i) for i in ds.infos], "skipped": ds.skipped, "layout": ds.layout,
                       "check": ds.check.as_dict() if ds.check else None}).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            bands = {} if ds.ignore is None else {"ignore": ds.ignore}
            np.savez(f, images=ds.images, masks=ds.masks, **bands, meta=np.frombuffer(meta, dtype=np.uint8))
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f"{prefix}-*.npz"):  # same root and size, older files
        if stale != path:
            stale.unlink(missing_ok=True)


def cached(cache_dir: Path | None, root: Path, image_size: int, source: str, fingerprint: str,
           build: Callable[[], PreparedDataset], log: Callable[[str], None], variant: str = "") -> PreparedDataset:
    """The dataset from the cache (cache_dir, default cache_root()/"prepared") when its fingerprint
    matches, else `build()` written there; a cache that cannot be written is a warning, not an error.
    `variant` tells apart datasets read from one root in different ways (a layout, two folders)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "prepared"
    filename, prefix = cache_name(root, image_size, f"{source}:{variant}" if variant else source, fingerprint)
    ds = load_cache(cache_dir / filename, root, source, image_size)
    if ds is None:
        ds = build()
        try:
            write_cache(cache_dir / filename, ds, prefix)
        except OSError as exc:
            log(f"warning: cannot write the dataset cache in {cache_dir} ({exc.strerror or exc}); continuing without it")
    return ds


# --------------------------------------------------------------------------- public entry point


def _format_skipped(skipped: list[tuple[str, str]], listed: int) -> str:
    items = ", ".join(f"{p} ({r})" for p, r in skipped)
    return f"skipped {len(skipped)} of {listed} images: {items}"


def prepare_dataset(
    root: str | Path,
    image_size: int,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> PreparedDataset:
    """Decode every usable image of an Oxford-IIIT Pet style dataset at image_size x image_size.

    Results are cached under cache_dir (default: cache_root()/"prepared"), so a second call with
    unchanged files decodes nothing. Skipped files are reported in one line through `log`.
    Raises DataError (one-line message) when the dataset as a whole is unusable.
    """
    if image_size < 1:
        raise DataError(f"image size must be a positive number of pixels, got {image_size}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(
            f"dataset root {root} does not exist; put the Oxford-IIIT Pet files there "
            "(images/, annotations/) or use --data synthetic"
        )
    source = detect_source(root)
    entries, line_skips, listed, split_bytes = _read_split_files(root)

    ds = cached(cache_dir, root, image_size, source, _fingerprint(root, entries, split_bytes),
                lambda: _decode_all(root, source, image_size, entries, line_skips), log)

    if ds.skipped:
        log(_format_skipped(ds.skipped, listed))
    _check_usable(ds, root, listed)
    return ds


def _decode_all(
    root: Path, source: str, image_size: int, entries: list[_Entry], skipped: list[tuple[str, str]]
) -> PreparedDataset:
    """Decode all entries on a thread pool (PIL releases the GIL), keeping split-file order."""
    workers = max(1, min(usable_cores(), len(entries)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda e: _decode_pair(root, e.name, image_size), entries))
    infos: list[ImageInfo] = []
    kept: list[Decoded] = []
    skipped = list(skipped)
    for entry, result in zip(entries, results):
        if not isinstance(result, Decoded):
            skipped.append(result)
            continue
        infos.append(
            ImageInfo(
                name=entry.name,
                split=entry.split,
                breed=breed_of(entry.name),
                species=entry.species,
                width=result.width,
                height=result.height,
                brightness=result.brightness,
                fg_fraction=result.fg_fraction,
            )
        )
        kept.append(result)
    images, masks, ignore = stacked(kept, image_size)
    return PreparedDataset(root=root, source=source, image_size=image_size, infos=infos, images=images,
                           masks=masks, ignore=ignore, skipped=skipped)


def stacked(items: list[Decoded], image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images, masks, ignore band) arrays of decoded images; the band is None when no image has one."""
    s = image_size
    images = np.stack([d.image for d in items]) if items else np.zeros((0, s, s, 3), np.uint8)
    masks = np.stack([d.mask for d in items]) if items else np.zeros((0, s, s), bool)
    if all(d.ignore is None for d in items):
        return images, masks, None
    empty = np.zeros((s, s), bool)
    return images, masks, np.stack([empty if d.ignore is None else d.ignore for d in items])


def _check_usable(ds: PreparedDataset, root: Path, listed: int) -> None:
    if not ds.infos:
        raise DataError(f"no usable images in {root}: all {listed} listed images were skipped")
    splits = {info.split for info in ds.infos}
    for split, listfile in (("test", TEST_LIST), ("train", TRAINVAL_LIST)):
        if split not in splits:
            raise DataError(f"no usable {split} images in {root} (check {listfile} and the files it names)")
