"""Train/val/test splits of a user's folder: the folder's own where it has one, else a stable hash.

An image's split depends only on its own key (its name, or the part of its file name --group-by
names: a patient, video or scene), never on which other files exist: sha1 of the key picks one
of 100 buckets, 70 train / 10 val / 20 test. Split folders (train/, val/ or valid/, test/; nnU-Net's
imagesTs) are kept as they are; a split no folder provides is taken from the train images by the
same hash rule, so a folder with only train/ and test/ gets its val from train/.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
SHARES = {"train": 70, "val": 10, "test": 20}  # percent of keys, when the folder has no split of its own
SPLIT_FOLDERS = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test", "ts": "test"}  # folder name (any case) -> split
HASH_RULE = "/".join(str(SHARES[s]) for s in SPLITS) + " train/val/test"


def hash_split(key: str) -> str:
    """The split of a key by the hash rule (SHARES)."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100
    if bucket < SHARES["train"]:
        return "train"
    return "val" if bucket < SHARES["train"] + SHARES["val"] else "test"


def compile_group_by(pattern: str) -> re.Pattern[str]:
    """--group-by's regular expression; ValueError with a one-line message when it is not one."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None


def group_key(file_stem: str, group_by: re.Pattern[str] | None) -> str | None:
    """The part of a file name that --group-by names (first capture group, else the whole match);
    None when there is no pattern or it does not match."""
    if group_by is None:
        return None
    m = group_by.search(file_stem)
    if m is None:
        return None
    return next((g for g in m.groups() if g), None) or m.group(0) or None


@dataclass(frozen=True)
class SplitPlan:
    splits: list[str]  # one per item, in order
    notes: list[str]  # one line each: how the splits were made


def assign_splits(folder_splits: list[str | None], keys: list[str]) -> SplitPlan:
    """Each item's split from its folder split (None = none) and its key (name or group key)."""
    given = {s for s in folder_splits if s is not None}
    if not given:
        return SplitPlan([hash_split(k) for k in keys],
                         [f"no split folders: split by a hash of each name (or --group-by key), {HASH_RULE}"])
    notes = [f"split folders: {', '.join(s for s in SPLITS if s in given)}"]
    missing = [s for s in SPLITS if s not in given and s != "train"]
    if "train" not in given and None not in folder_splits:
        raise ValueError(f"the split folders hold no train images (found {', '.join(sorted(given))}); "
                         f"add a train/ folder or leave the split to SegSweep by removing the split folders")
    for split in missing if "train" in given else []:
        notes.append(f"no {split} folder: {split} is taken from train by a hash of each name "
                     f"({SHARES[split]} in 100)")
    out: list[str] = []
    loose = 0
    for given_split, key in zip(folder_splits, keys):
        if given_split is None:
            loose += 1
            out.append(hash_split(key))
        elif given_split == "train" and hash_split(key) in missing:
            out.append(hash_split(key))
        else:
            out.append(given_split)
    if loose:
        notes.append(f"{loose} images outside the split folders: split by a hash of each name, {HASH_RULE}")
    return SplitPlan(out, notes)
