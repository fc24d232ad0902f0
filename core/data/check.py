"""What reading a user's folder found, in a few lines: the data check's report.

`python -m jobs.check_data` prints it, and each job prints the same lines before it trains, so
what a sweep trained on is never a guess: which layout was recognised, how masks were read
(a 0/255 mask read as 0/1, or the reverse, shows here), what was skipped and how the splits fell.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.data.splits import SPLITS

NAMED = 3  # files named per problem; the rest are counted


@dataclass
class DataCheck:
    """Counts and names gathered while a folder is scanned and decoded (JSON-serialisable, cached with the arrays)."""

    layout: str
    root: str
    image_size: int
    pairs: int = 0  # images with at least one mask file
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)
    suffixes: dict[str, int] = field(default_factory=dict)  # mask name suffix -> images paired with it
    united: int = 0  # images with several mask files, united into one
    mask_kinds: dict[str, int] = field(default_factory=dict)  # "1-bit {0,1}" -> mask files read so
    foreground: str = "non-zero"
    resized: list[str] = field(default_factory=list)  # masks of another size than their image
    empty: int = 0  # usable images whose mask has no foreground
    unreadable: list[list[str]] = field(default_factory=list)  # [file, reason]
    ignored: list[str] = field(default_factory=list)  # files that are not images we read
    sizes: list[list[int]] = field(default_factory=list)  # [min w, min h, max w, max h] of the usable images
    splits: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    group_by: str | None = None  # the pattern, when given
    group_keys: int = 0  # distinct --group-by keys
    unmatched_group_by: int = 0  # images --group-by did not match (each its own key)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataCheck:
        return cls(**d)

    @property
    def usable(self) -> int:
        return sum(self.splits.values())

    def problem(self) -> str | None:
        """Why the data cannot be trained on (one line), or None when it can."""
        if self.pairs == 0:
            lone = f" ({len(self.images_without_mask)} images without a mask, {len(self.masks_without_image)} masks " \
                   f"without an image: are the names paired?)" if self.images_without_mask or self.masks_without_image else ""
            return f"no image with a mask found in {self.root}{lone}"
        if self.usable == 0:
            first = f" (first: {self.unreadable[0][0]}: {self.unreadable[0][1]})" if self.unreadable else ""
            return f"none of the {self.pairs} image/mask pairs in {self.root} could be read{first}"
        for split in ("train", "test"):
            if not self.splits.get(split):
                return f"no usable {split} images in {self.root}"
        if self.empty == self.usable:
            return (f"every mask in {self.root} is empty (no foreground pixel with foreground = {self.foreground}); "
                    f"check --foreground")
        return None


def _some(files: list[str]) -> str:
    if not files:
        return ""
    more = f", ... {len(files) - NAMED} more" if len(files) > NAMED else ""
    return " (" + ", ".join(files[:NAMED]) + more + ")"


def summary_lines(c: DataCheck) -> list[str]:
    """The report, a few lines: layout, pairs, masks, problems, splits, groups."""
    suffix = ", ".join(f'"{s}"' for s in c.suffixes if s) or "none"
    lines = [f"layout: {c.layout} in {c.root}",
             f"pairs: {c.pairs} images with a mask (mask name suffix {suffix}); "
             f"{len(c.images_without_mask)} images without a mask{_some(c.images_without_mask)}; "
             f"{len(c.masks_without_image)} masks without an image{_some(c.masks_without_image)}"]
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(c.mask_kinds.items(), key=lambda kv: -kv[1])) or "none read"
    lines.append(f"mask files: {kinds}; foreground = {c.foreground}; {c.united} images with several masks, united")
    unreadable = [f"{f}: {why}" for f, why in c.unreadable]
    lines.append(f"masks resized to their image: {len(c.resized)}{_some(c.resized)}; empty masks "
                 f"(background only): {c.empty}; unreadable files: {len(c.unreadable)}{_some(unreadable)}")
    if c.sizes:
        w0, h0, w1, h1 = c.sizes[0]
        lines.append(f"images: {w0}x{h0} to {w1}x{h1} px, each resized to {c.image_size}x{c.image_size} "
                     f"(aspect ratio not kept)")
    if c.ignored:
        lines.append(f"ignored: {len(c.ignored)} files that are not png, jpg/jpeg, tif/tiff or bmp{_some(c.ignored)}")
    lines.append("splits: " + " / ".join(f"{c.splits.get(s, 0)} {s}" for s in SPLITS))
    lines += [f"  {note}" for note in c.notes]
    if c.groups:
        biggest = sorted(c.groups.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{g} {n}" for g, n in (sorted(c.groups.items()) if len(biggest) <= 8 else biggest[:5]))
        lines.append(f"groups: {shown}" if len(biggest) <= 8 else f"groups: {len(biggest)}, the largest {shown}, ...")
    if c.group_by is not None:
        lines.append(f"--group-by {c.group_by!r}: {c.group_keys} keys; {c.unmatched_group_by} images matched nothing "
                     f"(each is its own key)")
    return lines
