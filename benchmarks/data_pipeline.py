"""Training samples/s of the cached pipeline vs decoding every epoch, same run.

    .venv/bin/python benchmarks/data_pipeline.py
    .venv/bin/python benchmarks/data_pipeline.py --image-size 256

Variants take turns, each one full pass (an "epoch") over the sample's train+val images,
batch 8, nothing but the data (no model):

* decode    the lab reports' Dataset (benchmarks/train_throughput.py): PIL decodes the JPEG and
            trimap, albumentations resizes, flips, rotates, jitters and normalises, every epoch;
            DataLoader(batch_size=8, shuffle=True) defaults.
* cached    core's training loader (`core.training.loop._train_loader`, what `fit` iterates): the uint8
            arrays `prepare_dataset` decoded once, augmented at the training size, uint8 batches
            normalised by `Normalizer` as fit does.
* cached, no augmentation   the same with augmentation off (`_plain_batches`: array slices).

Also: how long the one-off decode that fills the cache takes, and loading the cache back.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    DEFAULT_DATA,
    finish,
    header,
    interleave,
    median,
    no_dataset,
    paired_ratio,
    parser,
    positive_int,
    set_threads,
    verdict,
)
from benchmarks.reference_loop import ReportsDataset

CACHE_TARGET = 1.0  # cached samples/s over decode-every-epoch samples/s: caching must pay


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/data_pipeline.py")
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--images", type=int, default=0, help="use only this many images (0 = all trainval images)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="an Oxford-IIIT Pet style folder")
    args = p.parse_args(argv)

    set_threads(args.threads)
    import cv2
    import numpy as np
    import torch

    from core.data.augment import AugmentConfig
    from core.data.dataset import prepare_dataset
    from core.training.loop import TrainConfig, Normalizer, _train_loader

    header("data pipeline: cached arrays vs decode every epoch", args)
    if no_dataset(args.data):
        return 2
    root = args.data.resolve()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data = prepare_dataset(root, args.image_size, cache_dir=Path(tmp), log=lambda _: None)
        first = time.perf_counter() - started
        started = time.perf_counter()
        data = prepare_dataset(root, args.image_size, cache_dir=Path(tmp), log=lambda _: None)
        again = time.perf_counter() - started

    idx = np.concatenate([data.indices("train"), data.indices("val")])
    if args.images > 0:
        idx = idx[:args.images]
    names = [data.infos[i].name for i in idx]
    n = len(idx)
    print(f"   {n} images, batch {args.batch_size}, {args.image_size} px; prepare_dataset: decode + cache "
          f"{first:.2f} s ({n and len(data.infos) / first:.0f} images/s), from the cache {again:.3f} s")

    normalize = Normalizer(device, channels_last=False)
    reference = torch.utils.data.DataLoader(ReportsDataset(root, names, args.image_size), batch_size=args.batch_size,
                                            shuffle=True)

    def decode_epoch() -> float:
        cv2.setNumThreads(-1)  # OpenCV's default, as in a lab-report process (core's loader sets 0, process-wide)
        started, seen = time.perf_counter(), 0
        for images, masks in reference:
            seen += len(images)
        return seen / (time.perf_counter() - started)

    def cached(augment: AugmentConfig):
        cfg = TrainConfig(image_size=args.image_size, batch_size=args.batch_size, augment=augment, device="cpu")
        epoch, _ = _train_loader(data, idx, cfg, device, torch.Generator().manual_seed(0))
        rounds = iter(range(1 << 30))  # each round is the next epoch: a new order and augmentation

        def run() -> float:
            started, seen = time.perf_counter(), 0
            for images, masks in epoch(next(rounds)):
                x, target, _ = normalize(images, masks)  # what fit does next, so both end as float batches
                seen += len(x)
            return seen / (time.perf_counter() - started)
        return run

    results = interleave({
        "decode every epoch": decode_epoch,
        "cached + augmentation": cached(AugmentConfig.reports()),
        "cached, no augmentation": cached(AugmentConfig.none()),
    }, args.rounds)
    print(f"-- samples/s, median of {args.rounds} interleaved epochs:")
    for name, values in results.items():
        print(f"   {name:<26} {median(values):9.0f} samples/s")
    ratio = paired_ratio(results["cached + augmentation"], results["decode every epoch"])
    plain = paired_ratio(results["cached, no augmentation"], results["decode every epoch"])
    print(f"RATIO cached+augmentation / decode-every-epoch = {ratio:.1f}x")
    print(f"RATIO cached-no-augmentation / decode-every-epoch = {plain:.1f}x")
    print("      (no speed target for this figure; the check below only guards that caching pays)")
    return finish([verdict("cached pipeline faster than decoding every epoch", ratio, CACHE_TARGET)], args.report_only)


if __name__ == "__main__":
    sys.exit(main())
