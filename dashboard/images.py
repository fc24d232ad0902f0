"""Pictures for the failure explorer: the image, its ground truth and the prediction overlay.

Files are read only from the dataset root recorded in the store: a name that resolves
outside that root (``..``, an absolute path, a symlink pointing elsewhere) is refused and
never opened. A missing or unreadable file becomes a grey placeholder with a short note.

The ground truth is the one the evaluation scored, where the store keeps it (schema v4
truth_masks), so an overlay never differs from what was measured; an older store's is rebuilt
by the Oxford-IIIT Pet reader (core.data.dataset), which also gives the ignore band shaded grey where the
data has one. Error classes are computed at the evaluation size (the stored
mask's size, where the dice was measured) and then enlarged onto a sharper copy of the photo for
display. Photos are squashed to a square, as the models saw them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.data.dataset import mask_as_scored
from core.data.layout import image_rel, trimap_rel, trimap_truth
from core.store.mask_png import decode_mask

REFUSED = "refused: outside dataset root"

# Overlay colours (RGB), chosen to stay distinct under the common colour-vision deficiencies.
FP_COLOR = (230, 159, 0)    # orange: predicted foreground where the ground truth is background
FN_COLOR = (86, 180, 233)   # sky blue: foreground the model missed
TP_COLOR = (255, 255, 255)  # white tint: foreground found
ALPHA = {"tp": 0.35, "fp": 0.7, "fn": 0.7}
LEGEND = (
    ("false positive: predicted object, really background", FP_COLOR),
    ("false negative: object the model missed", FN_COLOR),
    ("correct object (white tint)", TP_COLOR),
)
TRUTH_SHADES = {"foreground": 255, "ignore": 140, "background": 0}


@dataclass(frozen=True)
class ImageFiles:
    """Where one image's pictures come from: its file, its ground truth as scored, the file of its ignore band."""

    root: str | None             # the dataset root the store recorded (None: not recorded)
    image: str                   # the image file relative to root ('/'-separated)
    band: str | None = None      # data with an ignore band: the file it is read from (Oxford-IIIT Pet's trimap)
    truth_png: bytes | None = None  # v4: the ground truth exactly as scored at the evaluation size (1-bit PNG)


def image_files(root: str | None, name: str, path: str | None, band: bool, truth_png: bytes | None = None) -> ImageFiles:
    """An image's files from its store row: images.path where recorded (the user's own folders), else the Oxford
    layout's images/NAME.jpg; the trimap holding the ignore band only where the data has one (`band`)."""
    return ImageFiles(root, path or image_rel(name), trimap_rel(name) if band else None, truth_png)


@dataclass
class Loaded:
    """An array, or None with the reason it could not be shown."""

    array: np.ndarray | None
    note: str | None = None


def resolve_inside(root: str | Path, relative: str) -> Path | None:
    """root/relative, resolved; None when it lands outside root (path traversal, outbound symlink)."""
    try:
        base = Path(root).resolve()
        path = (base / relative).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return path if path.is_relative_to(base) else None


def _open(root: str | Path, relative: str) -> tuple[Image.Image | None, str | None]:
    path = resolve_inside(root, relative)
    if path is None:
        return None, REFUSED
    if not path.is_file():
        return None, f"missing: {relative}"
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy(), None
    except Exception:  # truncated, not an image, unsupported mode
        return None, f"unreadable: {relative}"


def _rgb(im: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGB; 16-bit and float images (microscopy, medical TIFFs) stretched to their own range."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        im = Image.fromarray(((arr - lo) / (hi - lo) * 255 if hi > lo else arr * 0).astype(np.uint8))
    return im.convert("RGB")


def load_photo(root: str | Path, relative: str, size: int) -> Loaded:
    """The image file at root/relative as (size, size, 3) uint8 RGB, squashed to a square as the models saw it."""
    im, note = _open(root, relative)
    if im is None:
        return Loaded(None, note)
    try:
        rgb = _rgb(im).resize((size, size), Image.Resampling.BILINEAR)
    except Exception:
        return Loaded(None, f"unreadable: {relative}")
    return Loaded(np.asarray(rgb, dtype=np.uint8))


def image_wh(root: str | Path, relative: str) -> tuple[int, int] | None:
    """An image file's (width, height) from its header, without decoding it; None if it cannot be read."""
    path = resolve_inside(root, relative)
    try:
        with Image.open(path) as im:  # type: ignore[arg-type]
            return im.size
    except Exception:
        return None


def load_band(root: str | Path, relative: str, size: int,
              photo_wh: tuple[int, int] | None = None) -> tuple[Loaded, np.ndarray | None]:
    """(foreground, ignore band) of the Oxford-IIIT Pet trimap at root/relative at (size, size), bool, exactly as
    the evaluation scored them (core.data.dataset.mask_as_scored: to the photo's size `photo_wh` first, then
    to size; core.data.layout.trimap_truth)."""
    im, note = _open(root, relative)
    if im is None:
        return Loaded(None, note), None
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    foreground, ignore = trimap_truth(mask_as_scored(arr, photo_wh or (arr.shape[1], arr.shape[0]), size))
    return Loaded(foreground), ignore


def placeholder(size: int, note: str) -> np.ndarray:
    """A grey square with the note written on it, shown instead of a picture we cannot show."""
    im = Image.new("RGB", (size, size), (96, 96, 96))
    draw = ImageDraw.Draw(im)
    words, lines, line = note.split(), [], ""
    for word in words:  # crude wrap at ~22 characters
        if len(line) + len(word) > 22 and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines):
        draw.text((6, 6 + 12 * i), text, fill=(240, 240, 240))
    return np.asarray(im)


def _enlarge(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127


def truth_panel(truth: np.ndarray, size: int, ignore: np.ndarray | None = None) -> np.ndarray:
    """Ground truth as grey levels: foreground white, background black, and where an ignore band of the same size
    is given, the band grey (the pixels border-aware dice leaves out)."""
    shades = np.where(truth.astype(bool), TRUTH_SHADES["foreground"], TRUTH_SHADES["background"]).astype(np.uint8)
    if ignore is not None and ignore.shape == truth.shape:
        shades[ignore.astype(bool)] = TRUTH_SHADES["ignore"]
    big = np.asarray(Image.fromarray(shades).resize((size, size), Image.Resampling.NEAREST))
    return np.repeat(big[..., None], 3, axis=2)


def fit(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask at (size, size): nearest-neighbour, as the evaluation resizes masks."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127


def vote_panel(share: np.ndarray, size: int) -> np.ndarray:
    """The models' vote share per pixel as grey levels: white = every model says foreground, black = none."""
    grey = np.clip(np.asarray(share, np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.NEAREST))
    return np.repeat(big[..., None], 3, axis=2)


def error_classes(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """True-positive, false-positive and false-negative masks of two same-size bool masks."""
    truth, pred = truth.astype(bool), pred.astype(bool)
    return {"tp": truth & pred, "fp": pred & ~truth, "fn": truth & ~pred}


def overlay(photo: np.ndarray | None, truth: np.ndarray | None, pred: np.ndarray, size: int) -> np.ndarray:
    """The prediction over the photo: false positives orange, false negatives blue, hits white-tinted.

    `truth` and `pred` are bool masks at the evaluation size; without a ground truth (file
    missing) the prediction is drawn as a plain white tint.
    """
    base = photo.astype(np.float32) if photo is not None else np.full((size, size, 3), 60, np.float32)
    base = base * 0.75
    if truth is None:
        classes = {"tp": pred.astype(bool)}
    else:
        classes = error_classes(truth, pred)
    colors = {"tp": TP_COLOR, "fp": FP_COLOR, "fn": FN_COLOR}
    for kind, mask in classes.items():
        m = _enlarge(mask, size)
        a = ALPHA[kind]
        base[m] = base[m] * (1 - a) + np.array(colors[kind], np.float32) * a
    return np.clip(base + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Panels:
    """What one gallery row shows, each (display, display, 3) uint8, and notes for what is missing."""

    photo: np.ndarray
    truth: np.ndarray
    predictions: list[np.ndarray]
    notes: list[str]


def make_panels(files: ImageFiles, eval_size: int, display: int, preds: list[np.ndarray | None]) -> Panels:
    """Photo, ground truth and one overlay per predicted mask (None: no mask stored) for an image.

    The truth is files.truth_png (as scored) where stored, else the foreground read with the ignore band; the
    band, where the data has one, is shaded grey.
    """
    notes: list[str] = []
    missing = Loaded(None, "dataset root not recorded")
    photo = load_photo(files.root, files.image, display) if files.root is not None else missing
    read, ignore = Loaded(None), None
    if files.band is not None:
        read, ignore = (load_band(files.root, files.band, eval_size, image_wh(files.root, files.image))
                        if files.root is not None else (missing, None))
    truth = None
    if files.truth_png is not None:
        truth = fit(decode_mask(files.truth_png), eval_size)
    elif read.array is not None:
        truth = read.array
    for loaded in (photo, read if truth is None else Loaded(None)):
        if loaded.note and loaded.note not in notes:
            notes.append(loaded.note)
    overlays = []
    for pred in preds:
        if pred is None:
            overlays.append(placeholder(display, "no mask stored"))
            continue
        overlays.append(overlay(photo.array, truth, fit(pred, eval_size), display))
    return Panels(
        photo=photo.array if photo.array is not None else placeholder(display, photo.note or "no image"),
        truth=truth_panel(truth, display, ignore) if truth is not None
        else placeholder(display, read.note or "no ground truth stored"),
        predictions=overlays,
        notes=notes,
    )


def legend_html(band: bool = True, title: str = "Prediction overlay") -> str:
    """The overlay colours as a one-line HTML legend (kept next to the gallery), and the ignore band only where
    the data has one (`band`)."""
    def swatch(color: tuple[int, int, int]) -> str:
        return (f"<span style='display:inline-block;width:0.9em;height:0.9em;background:rgb{color};"
                f"border:1px solid #888;vertical-align:middle;margin:0 0.3em 0 0.8em'></span>")

    items = "".join(f"{swatch(c)}{text}" for text, c in LEGEND)
    grey = ", grey ignore band (left out of border-aware dice)" if band else ""
    truth = f"ground truth as scored: white object{grey}, black background"
    return f"<div style='font-size:0.9em'><b>{title}:</b>{items}<br><b>{truth}</b></div>"


def strip(panels: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Same-height panels side by side with white gaps: one picture per gallery example."""
    height = max(p.shape[0] for p in panels)
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if p.shape[0] != height:
            p = np.asarray(Image.fromarray(p).resize((p.shape[1] * height // p.shape[0], height)))
        parts.extend([spacer, p] if i else [p])
    return np.concatenate(parts, axis=1)
