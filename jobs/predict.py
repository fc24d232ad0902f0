"""`python -m jobs.predict`: segment new images with what a sweep found.

The model is the architecture's result as the dashboard's Home names it (core.training.result),
its checkpoint checked against the sha256 the sweep recorded. Each image is read as the data layer
reads it (core.data.dataset.open_rgb: any format PIL opens, any mode, 16-bit grey included) and
brought to the trained size S x S by the one size rule (core.data.dataset.image_as_scored:
squashed, bilinear), then predicted exactly as the trial's evaluation predicted its test images:
the training loop's normalisation, flip TTA and ensemble members where the trial used them, on the
device, precision and memory layout the trainer chose (core.training.loop.evaluation_logits).

How the prediction is brought back: the squash is inverted for masks as for truths, nearest
neighbour: the S x S mask (and probability map) is resized to the image's own width x height, each
original pixel taking the prediction of the grid cell it lies in. So a written mask resized back to
S x S by the truth's rule (nearest) is the mask the evaluation scored, pixel for pixel, for any
image at least S pixels on each side.

Writes OUT/<name>.png (0/255 masks; <name> is the file's path below --images without its
extension, or the dataset's image name with --data-root), with --probabilities
OUT/probabilities/<name>.png (8-bit, 255 = foreground for sure), and OUT/predictions.csv.
Reading and writing run on a thread pool beside the forward pass.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from core.data.dataset import DataError, image_as_scored, open_rgb
from core.data.folders import IMAGE_EXTENSIONS, SUPPORTED
from core.data.layout import image_rel
from core.data.sources import load_data
from core.machine import usable_cores
from core.metrics import predicted_mask
from core.training.loop import evaluation_batch
from core.training.result import Result, ResultError, choose, describe, load, reading
from jobs import cli

PROG = "jobs.predict"
PROBABILITIES = "probabilities"  # OUT/probabilities/<name>.png
CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("name", "width", "height", "foreground_share", "mean_confidence", "trial")
PREFETCH = 3  # batches decoded ahead of the forward pass


class InputError(Exception):
    """The images or the output folder cannot be used as given; one line for the user."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    cli.add_result_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", default=None, help=f"a folder of images ({SUPPORTED}; subfolders too)")
    src.add_argument("--data-root", default=None, help="a dataset folder, read as jobs.sweep reads it")
    p.add_argument("--out", required=True, help="folder for the masks and predictions.csv (created)")
    p.add_argument("--probabilities", action="store_true", help="also write 8-bit foreground probability maps")
    p.add_argument("--device", type=cli.device_name, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda")
    p.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help="images per forward pass (default: the evaluation's, at least 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# -- which images ---------------------------------------------------------------------------------

@dataclass
class Item:
    """One image to segment: its output name, and its file or (--data-root) its decoded array and size."""

    name: str
    path: Path | None = None
    image: np.ndarray | None = None   # (S, S, 3) uint8, already at the trained size
    size: tuple[int, int] | None = None  # (width, height) of the original


def folder_items(folder: Path, out: Path) -> list[Item]:
    """The image files below `folder` (by extension, sorted, the output folder left out), named by their path
    below it without the extension."""
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder")
    out = out.resolve()
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file() or path.resolve().is_relative_to(out):
            continue
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in found:
            raise InputError(f"{found[name].name} and {path.name} in {path.parent} would both be written as "
                             f"{name}.png; rename one")
        found[name] = path
    if not found:
        raise InputError(f"no images in {folder} (looked for {SUPPORTED}, subfolders too)")
    return [Item(name, path) for name, path in found.items()]


def dataset_items(root: str, image_size: int, log: Callable[[str], None]) -> tuple[list[Item], list[tuple[str, str]]]:
    """A dataset folder's images as jobs.sweep reads them (layout recognised, cached), and the files it skipped."""
    data = load_data("auto", root, image_size, log=log)
    items = [Item(info.name, Path(data.root) / (info.path or image_rel(info.name)), data.images[i],
                  (info.width, info.height)) for i, info in enumerate(data.infos)]
    return items, list(data.skipped)


def output_paths(out: Path, name: str, probabilities: bool) -> list[Path]:
    paths = [out / f"{name}.png"]
    return paths + [out / PROBABILITIES / f"{name}.png"] if probabilities else paths


def check_output(out: Path, inputs: Path, dataset: bool) -> None:
    """Refuse an output folder that is the input folder or, for a dataset, inside it: masks written there
    would overwrite images (or masks) or be read as data by the next sweep."""
    out, inputs = out.resolve(), inputs.resolve()
    if out == inputs:
        raise InputError(f"--out {out} is the input folder: the masks would overwrite or mix with the images; "
                         f"give another folder")
    if dataset and out.is_relative_to(inputs):
        raise InputError(f"--out {out} is inside the dataset folder {inputs}: the masks would overwrite its files or "
                         f"be read as data by the next sweep; give a folder outside it")


def check_clashes(out: Path, items: list[Item], probabilities: bool) -> None:
    """Refuse when a file to be written is one of the images to read (e.g. through a link)."""
    sources = {item.path.resolve() for item in items if item.path is not None}
    written = [p for item in items for p in output_paths(out, item.name, probabilities)] + [out / CSV_NAME]
    clash = next((p for p in written if p.resolve() in sources), None)
    if clash is not None:
        raise InputError(f"--out {out.resolve()} would overwrite the input image {clash.resolve()}; "
                         f"give another folder")


# -- reading, predicting, writing --------------------------------------------------------------------

def decode(item: Item, image_size: int) -> tuple[np.ndarray, tuple[int, int]] | str:
    """The item at the trained size and its original (width, height), or why it cannot be read."""
    if item.image is not None and item.size is not None:
        return item.image, item.size
    assert item.path is not None
    try:
        image = open_rgb(item.path)
    except Exception:
        return "truncated or unreadable"
    return image_as_scored(image, image_size), image.size


Batch = tuple[list[Item], np.ndarray, list[tuple[int, int]]]


def batches(items: list[Item], image_size: int, batch_size: int, pool: ThreadPoolExecutor,
            skipped: list[tuple[str, str]]) -> Iterator[Batch]:
    """Batches of decoded images in input order, PREFETCH batches decoded ahead on `pool`; unreadable
    items are left out and added to `skipped`."""
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    ahead: deque[tuple[list[Item], list[Future]]] = deque()
    for k in range(len(chunks) + PREFETCH):
        if k < len(chunks):
            ahead.append((chunks[k], [pool.submit(decode, item, image_size) for item in chunks[k]]))
        if k < PREFETCH or not ahead:
            continue
        chunk, futures = ahead.popleft()
        kept, arrays, sizes = [], [], []
        for item, future in zip(chunk, futures):
            result = future.result()
            if isinstance(result, str):
                skipped.append((str(item.path or item.name), result))
                continue
            kept.append(item)
            arrays.append(result[0])
            sizes.append(result[1])
        if kept:
            yield kept, np.stack(arrays), sizes


def at_own_size(grid: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An S x S uint8 map brought to the image's (width, height): the size rule inverted, nearest neighbour."""
    image = Image.fromarray(grid)
    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.NEAREST)


def write_one(out: Path, name: str, mask: np.ndarray, prob: np.ndarray, size: tuple[int, int],
              probabilities: bool) -> tuple[float, float]:
    """Write one image's mask (and probability map) at its own size; (foreground share of the written mask,
    mean confidence: the predicted class's probability averaged over the S x S grid the model saw)."""
    mask_image = at_own_size(np.where(mask, 255, 0).astype(np.uint8), size)
    path = out / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_image.save(path, compress_level=1)  # masks compress well anyway; level 1 keeps writing cheap
    if probabilities:
        prob_path = out / PROBABILITIES / f"{name}.png"
        prob_path.parent.mkdir(parents=True, exist_ok=True)
        at_own_size(np.rint(prob * 255).astype(np.uint8), size).save(prob_path, compress_level=1)
    share = float(np.count_nonzero(np.asarray(mask_image))) / (size[0] * size[1])
    return share, float(np.maximum(prob, 1 - prob).mean())


def io_threads(device: torch.device) -> int:
    """Threads that read and write beside the forward pass. On a GPU, every core: the device does the rest.
    On a CPU, half the cores: torch's own threads take all of them, and a reader that preempts one of them
    stalls the others at their next barrier (on 2 busy cores one reader kept up as well as two)."""
    cores = usable_cores()
    return cores if device.type == "cuda" else max(1, cores // 2)


def run(result: Result, items: list[Item], out: Path, *, batch_size: int, probabilities: bool,
        progress: bool = True) -> tuple[list[dict], list[tuple[str, str]]]:
    """Segment `items` into `out`: (predictions.csv rows in input order, skipped files with the reason)."""
    size = result.cfg.image_size
    skipped: list[tuple[str, str]] = []
    rows: dict[str, dict] = {}
    trial = f"{result.row['study']} #{result.row['number']}"
    bar = tqdm(total=len(items), desc="predict", unit="image", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=io_threads(result.device)) as pool:
        writes: deque[tuple[Item, tuple[int, int], Future]] = deque()

        def collect(limit: int) -> None:
            while len(writes) > limit:
                item, (w, h), future = writes.popleft()
                share, confidence = future.result()
                rows[item.name] = dict(name=item.name, width=w, height=h, foreground_share=round(share, 6),
                                       mean_confidence=round(confidence, 6), trial=trial)
                bar.update(1)

        for chunk, images, sizes in batches(items, size, batch_size, pool, skipped):
            logits = result.logits(torch.from_numpy(images))
            masks = predicted_mask(logits).cpu().numpy()
            probs = torch.sigmoid(logits).float().cpu().numpy()
            for item, mask, prob, wh in zip(chunk, masks, probs, sizes):
                writes.append((item, wh, pool.submit(write_one, out, item.name, mask, prob, wh, probabilities)))
            collect(limit=2 * batch_size)  # the writes of the batch before stay in flight beside this forward pass
        collect(limit=0)
    bar.update(len(skipped))
    bar.close()
    return [rows[item.name] for item in items if item.name in rows], skipped


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).expanduser()
    say = lambda msg: print(f"{PROG}: {msg}", file=sys.stderr)  # noqa: E731
    try:
        with reading(args.db) as store:
            row, chosen = choose(store, args.sweep, args.arch, args.trial)
        check_output(out, Path(args.images or args.data_root).expanduser(), dataset=args.data_root is not None)
        if args.images is not None:
            items = folder_items(Path(args.images).expanduser(), out)
            skipped_before: list[tuple[str, str]] = []
        else:
            items, skipped_before = dataset_items(args.data_root, int(row["image_size"]), say)
        check_clashes(out, items, args.probabilities)
        result = load(row, args.device, chosen, warn=say)
    except (ResultError, InputError, DataError) as exc:
        cli.user_error(PROG, str(exc), code=2)
    batch_size = args.batch_size or evaluation_batch(result.cfg)
    print(f"{PROG}: {describe(result)}: {result.chosen}")
    print(f"{PROG}: {len(items)} images -> {out} on {result.device} in {result.precision}, batches of {batch_size}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        rows, skipped = run(result, items, out, batch_size=batch_size, probabilities=args.probabilities,
                            progress=not args.no_progress)
        write_csv(out / CSV_NAME, rows)
    except OSError as exc:
        cli.user_error(PROG, f"cannot write to {exc.filename or out}: {exc.strerror or exc}", code=2)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the masks written so far are kept, predictions.csv is not written",
              file=sys.stderr)
        return 130
    skipped = skipped_before + skipped
    if skipped:
        print(f"{PROG}: skipped {len(skipped)} unreadable file{'s' if len(skipped) > 1 else ''}: "
              + ", ".join(f"{p} ({why})" for p, why in skipped), file=sys.stderr)
    if not rows:
        cli.user_error(PROG, f"none of the {len(items)} images could be read", code=2)
    print(f"{PROG}: wrote {len(rows)} masks{' and probability maps' if args.probabilities else ''} and "
          f"{out / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
