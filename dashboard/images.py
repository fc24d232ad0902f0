"""Pictures for the failure explorer: the image, its ground truth and the prediction overlay.

Files are read only from the dataset root recorded in the store: a name that resolves
outside that root (``..``, an absolute path, a symlink pointing elsewhere) is refused and
never opened. A missing or unreadable file becomes a grey placeholder with a short note.

Error classes are computed at the evaluation size (the stored mask's size, where the dice was
measured) and then enlarged onto a sharper copy of the photo for display.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.data.layout import TRIMAP_BACKGROUND, TRIMAP_BORDER, image_rel, pet_mask, trimap_rel

REFUSED = "refused: outside dataset root"

# Overlay colours (RGB), chosen to stay distinct under the common colour-vision deficiencies.
FP_COLOR = (230, 159, 0)    # orange: predicted pet where the ground truth is background
FN_COLOR = (86, 180, 233)   # sky blue: pet the model missed
TP_COLOR = (255, 255, 255)  # white tint: pet found
ALPHA = {"tp": 0.35, "fp": 0.7, "fn": 0.7}
LEGEND = (
    ("false positive: predicted pet, really background", FP_COLOR),
    ("false negative: pet the model missed", FN_COLOR),
    ("correct pet (white tint)", TP_COLOR),
)
TRUTH_SHADES = {"pet": 255, "border": 140, "background": 0}


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


def load_photo(root: str | Path, name: str, size: int) -> Loaded:
    """The image as (size, size, 3) uint8 RGB, squashed to a square as the models saw it."""
    im, note = _open(root, image_rel(name))
    if im is None:
        return Loaded(None, note)
    try:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except Exception:
        return Loaded(None, f"unreadable: {image_rel(name)}")
    return Loaded(np.asarray(rgb, dtype=np.uint8))


def load_trimap(root: str | Path, name: str, size: int) -> Loaded:
    """The trimap (core.data.layout's values) as (size, size) uint8, nearest-neighbour resized."""
    im, note = _open(root, trimap_rel(name))
    if im is None:
        return Loaded(None, note)
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return Loaded(np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)))


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


def truth_panel(trimap: np.ndarray, size: int) -> np.ndarray:
    """Ground truth as grey levels: pet white, border band grey, background black."""
    shades = np.full(trimap.shape, TRUTH_SHADES["pet"], np.uint8)
    shades[trimap == TRIMAP_BACKGROUND] = TRUTH_SHADES["background"]
    shades[trimap == TRIMAP_BORDER] = TRUTH_SHADES["border"]
    big = np.asarray(Image.fromarray(shades).resize((size, size), Image.Resampling.NEAREST))
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


def make_panels(root: str | Path | None, name: str, eval_size: int, display: int,
                preds: list[np.ndarray | None]) -> Panels:
    """Photo, ground truth and one overlay per predicted mask (None: no mask stored) for an image."""
    notes: list[str] = []
    if root is None:
        photo = trimap = Loaded(None, "dataset root not recorded")
    else:
        photo = load_photo(root, name, display)
        trimap = load_trimap(root, name, eval_size)
    for loaded in (photo, trimap):
        if loaded.note and loaded.note not in notes:
            notes.append(loaded.note)
    truth = None if trimap.array is None else pet_mask(trimap.array)
    overlays = []
    for pred in preds:
        if pred is None:
            overlays.append(placeholder(display, "no mask stored"))
            continue
        if pred.shape != (eval_size, eval_size):
            pred = np.asarray(Image.fromarray(pred.astype(np.uint8) * 255).resize(
                (eval_size, eval_size), Image.Resampling.NEAREST)) > 127
        overlays.append(overlay(photo.array, truth, pred, display))
    return Panels(
        photo=photo.array if photo.array is not None else placeholder(display, photo.note or "no image"),
        truth=truth_panel(trimap.array, display) if trimap.array is not None
        else placeholder(display, trimap.note or "no ground truth"),
        predictions=overlays,
        notes=notes,
    )


def legend_html() -> str:
    """The overlay colours as a one-line HTML legend (kept next to the gallery)."""
    def swatch(color: tuple[int, int, int]) -> str:
        return (f"<span style='display:inline-block;width:0.9em;height:0.9em;background:rgb{color};"
                f"border:1px solid #888;vertical-align:middle;margin:0 0.3em 0 0.8em'></span>")

    items = "".join(f"{swatch(c)}{text}" for text, c in LEGEND)
    truth = f"ground truth: white pet, grey border band (trimap {TRIMAP_BORDER}), black background"
    return f"<div style='font-size:0.9em'><b>Prediction overlay:</b>{items}<br><b>{truth}</b></div>"


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
