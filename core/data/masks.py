"""Read a user's mask file, whatever its convention, as a binary foreground array.

Masks arrive as 0/1 or 0/255 grayscale, 1-bit, palette (label indices), 16-bit label images, or RGB
(gray stored in three channels, or colours). Foreground is every non-zero value, unless the user
names the foreground values (`--foreground 255`, `--foreground 1,2`); a colour RGB mask has no
single value per pixel, so there foreground is every non-black pixel. How each mask was read (its
kind and value set) is returned, so the data check can show it: a 0/255 mask read as 0/1 is the
classic silent error of segmentation data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_LISTED_VALUES = 8  # a value set longer than this is summarised ("{0..255} (37 values)")
SOFT_VALUES = 8  # a gray mask with more values than this looks soft or JPEG-saved, not binary


@dataclass(frozen=True)
class MaskRead:
    """A mask as read: foreground (H, W) bool, its kind ("1-bit", "grayscale", ...) and value set."""

    foreground: np.ndarray
    kind: str
    values: tuple[int, ...]  # distinct values per pixel (label indices for palette); () for colour RGB

    @property
    def described(self) -> str:
        """Kind and values in a few characters, e.g. "1-bit {0,1}", "grayscale {0,255}"."""
        return f"{self.kind} {format_values(self.values)}" if self.values else self.kind


def format_values(values: tuple[int, ...]) -> str:
    """{0,255}, or {0..254} (200 values) when there are many."""
    if len(values) <= MAX_LISTED_VALUES:
        return "{" + ",".join(str(v) for v in values) + "}"
    return f"{{{values[0]}..{values[-1]}}} ({len(values)} values)"


def parse_foreground(text: str) -> tuple[int, ...]:
    """"255", "1,2" or "128-255" -> the foreground values; ValueError with a one-line message otherwise."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise ValueError(f"expected whole mask values or ranges separated by commas (e.g. 255, 1,2 or "
                             f"128-255), got {text!r}")
        values.update(range(int(low), int(high if dash else low) + 1))
    return tuple(sorted(values))


def format_foreground(values: tuple[int, ...]) -> str:
    """Foreground values as typed: "255", "1,2", "128-255"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a},{b}" if b == a + 1 else f"{a}-{b}" for a, b in runs)


def read_mask(path: Path, foreground: tuple[int, ...] | None = None) -> MaskRead | str:
    """The mask at `path` as foreground and how it was read, or the reason it cannot be read."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
            if mode in ("LA", "PA"):  # gray or palette with alpha: the alpha is not part of the label
                arr = arr[..., 0]
    except Exception:
        return "truncated or unreadable mask"
    if arr.ndim == 3:
        colour = arr[..., :3]
        if all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[2])):
            arr, kind = colour[..., 0], "RGB"  # gray stored in three channels
        else:
            if foreground is not None:
                return "colour RGB mask: --foreground names gray values, which a colour mask does not have"
            return MaskRead(colour.any(axis=2), "RGB colour", ())
    else:
        kind = {"1": "1-bit", "L": "grayscale", "P": "palette", "LA": "grayscale", "PA": "palette"}.get(mode, f"{mode} labels")
    if arr.size == 0:
        return "empty image"
    values = tuple(int(v) for v in np.unique(arr))
    fg = arr != 0 if foreground is None else np.isin(arr, foreground)
    return MaskRead(np.asarray(fg, dtype=bool), kind, values)
