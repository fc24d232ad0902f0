"""Issue 11, cost: what the per-image diagnostics add to a trial's test evaluation at 256 px.

    .venv/bin/python benchmarks/eval_diagnostics.py                # ~2 min on 2 CPUs
    .venv/bin/python benchmarks/eval_diagnostics.py --report-only  # exit 0 even on a MISS

The test evaluation is `core.training.loop.predict` on the real sample's test images at the
trial's size. Variants take turns (medians of interleaved rounds, the machine is shared):

* predict                 the evaluation without diagnostics (dice, IoU, border-aware dice, loss, masks)
* predict + diagnostics   the same with diagnostics=True, as run_trial calls it
* diagnostics alone       core.metrics.image_diagnostics on pet-shaped logits (each test image's true
                          mask with smooth noise: ragged outlines, holes and false blobs), batch by batch

An untrained model's masks are not pet-shaped (often empty or full, which is cheap for the
connected components and HD95), so the figure held against the target is the realistic one:
(predict + diagnostics alone) / predict. The in-predict ratio is printed beside it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks._common import (
    DEFAULT_DATA,
    finish,
    header,
    interleave,
    median,
    paired_ratio,
    parser,
    positive_int,
    verdict,
)

TARGET = 1.20  # diagnostics may add at most 20% to the test evaluation


def pet_logits(truths, seed: int = 0):
    """(N, 1, S, S) float32 logits: confident on the true mask, with smooth noise that moves the outline,
    punches holes and raises a few false blobs, as a half-trained model's predictions look."""
    import cv2
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    size = truths.shape[-1]
    out = np.empty((len(truths), 1, size, size), np.float32)
    for i, truth in enumerate(truths):
        noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 40)
        noise /= noise.std() + 1e-6
        out[i, 0] = 4.0 * (2.0 * truth - 1.0) + 3.0 * noise
    return torch.from_numpy(out)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "eval_diagnostics.py")
    p.add_argument("--arch", default="unet")
    p.add_argument("--width", type=float, default=1.0, help="model width (the full preset's is 1.0)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--images", type=positive_int, default=16, help="test images evaluated per round")
    p.add_argument("--batch-size", type=positive_int, default=16, help="the full preset's batch size")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from core.data.dataset import prepare_dataset
    from core.metrics import image_diagnostics
    from core.models import build_model
    from core.training.loop import TrainConfig, predict

    header("test evaluation with and without the per-image diagnostics", args)
    data = prepare_dataset(args.data.resolve(), args.image_size, log=lambda _msg: None)
    test = data.indices("test")[: args.images]
    if len(test) == 0:
        raise SystemExit(f"error: no test images in {args.data}")
    cfg = TrainConfig(arch=args.arch, width=args.width, image_size=args.image_size, batch_size=args.batch_size,
                      device="cpu")
    torch.manual_seed(0)
    model = build_model(args.arch, width=args.width).eval()
    truths = data.masks[test].astype(np.float32)
    logits = pet_logits(truths)
    targets = torch.from_numpy(truths[:, None])

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    def diagnostics_alone() -> None:
        for start in range(0, len(test), args.batch_size):
            image_diagnostics(logits[start:start + args.batch_size], targets[start:start + args.batch_size])

    predict(model, data, test[:2], cfg, batch_size=args.batch_size, diagnostics=True)  # warm-up
    results = interleave({
        "predict": lambda: timed(lambda: predict(model, data, test, cfg, batch_size=args.batch_size)),
        "predict + diagnostics": lambda: timed(lambda: predict(model, data, test, cfg, batch_size=args.batch_size,
                                                               diagnostics=True)),
        "diagnostics alone": lambda: timed(diagnostics_alone),
    }, args.rounds)

    n = len(test)
    print(f"-- {n} test images at {args.image_size} px, {args.arch} width {args.width}, batch {args.batch_size}, "
          f"medians of {args.rounds} interleaved rounds:")
    for name, values in results.items():
        print(f"   {name:<22} {median(values):8.3f} s  ({1000 * median(values) / n:7.1f} ms per image)")
    realistic = [(pr + d) / pr for pr, d in zip(results["predict"], results["diagnostics alone"])]
    in_predict = paired_ratio(results["predict + diagnostics"], results["predict"])
    print(f"RATIO (predict + diagnostics on pet-shaped masks) / predict = {median(realistic):.3f}x   "
          f"(in predict, untrained model's masks: {in_predict:.3f}x)")
    ok = verdict(f"test evaluation with diagnostics at {args.image_size} px, relative to without",
                 median(realistic), TARGET, higher_is_better=False)
    return finish([ok], args.report_only)


if __name__ == "__main__":
    sys.exit(main())
