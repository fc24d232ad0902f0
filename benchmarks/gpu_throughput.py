"""Training images/s on a CUDA GPU at 256 px, and the FLOP fraction achieved.

    .venv/bin/python benchmarks/gpu_throughput.py
    .venv/bin/python benchmarks/gpu_throughput.py --no-compile --steps 10

Without CUDA it prints one line saying so and exits 0 (nothing was measured, so nothing missed).

Per architecture, variants take turns on one fixed batch already on the GPU (data loading is
benchmarks/data_pipeline.py's business). Each is the trainer's own training step, built by
`core.training.loop.build_step` as `fit` builds it (model setup, autocast, fused AdamW, gradient
scaler and clipping, the SegmentationLoss) from a TrainConfig that differs only as named:

* fp32 NCHW              TrainConfig(amp="off", channels_last=False), run with TF32 off: the plain recipe
* trainer                TrainConfig() on CUDA: autocast in the dtype `select_amp` picks (bf16 where
                         supported) and channels_last
* trainer + compile      TrainConfig(compile=True), as the full preset runs on CUDA; its compile time
                         is printed
* trainer + cudnn.benchmark   the trainer's step with cuDNN's autotuner on, which the trainer does not
                         turn on: what it would be worth (not judged)

FLOP fraction = 3 x count_flops(model) x images/s over the dense matmul FLOP/s of the same
dtype, measured in the same run (fp32 with TF32 off for the fp32 variant, the autocast dtype otherwise).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from typing import Iterator

from benchmarks._common import (
    dtype_name,
    finish,
    header,
    interleave,
    matmul_flops,
    median,
    paired_ratio,
    parser,
    positive_int,
    trainer_step,
    verdict,
)

FLOP_TARGET = 0.60


@contextlib.contextmanager
def cuda_backends(tf32: bool | None = None, cudnn_benchmark: bool | None = None) -> Iterator[None]:
    """torch's CUDA backend flags set for one variant's calls and put back after (None: left as they are)."""
    import torch

    flags = {}
    if tf32 is not None:
        flags.update({(torch.backends.cuda.matmul, "allow_tf32"): tf32, (torch.backends.cudnn, "allow_tf32"): tf32})
    if cudnn_benchmark is not None:
        flags[(torch.backends.cudnn, "benchmark")] = cudnn_benchmark
    before = {key: getattr(*key) for key in flags}
    for (owner, name), value in flags.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name), value in before.items():
            setattr(owner, name, value)


def measure(args: argparse.Namespace, device: str = "cuda") -> list[bool]:
    """Every architecture's variants, interleaved; prints the figures and returns the verdicts."""
    import torch

    from core.models import count_flops
    from core.training.loop import TrainConfig

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    verdicts: list[bool] = []
    for arch in [a for a in args.archs.split(",") if a]:
        trainer = TrainConfig(arch=arch, width=args.width, image_size=args.image_size, batch_size=args.batch_size,
                              device=device)
        base = "fp32 NCHW"
        # name -> (TrainConfig, backend flags for its calls, whether it is a trainer configuration to judge)
        specs = {base: (dataclasses.replace(trainer, amp="off", channels_last=False), dict(tf32=False), False),
                 "trainer": (trainer, {}, True)}
        if not args.no_compile:
            specs["trainer + compile"] = (dataclasses.replace(trainer, compile=True), {}, True)
        specs["trainer + cudnn.benchmark"] = (trainer, dict(cudnn_benchmark=True), False)

        runs, warm, dtypes, labels, models = {}, {}, {}, {}, {}
        for name, (cfg, flags, _) in specs.items():
            with cuda_backends(**flags):
                started = time.perf_counter()
                step = trainer_step(cfg)
                for _ in range(3):
                    step.run()
                sync()
                warm[name] = time.perf_counter() - started

            def run(step=step, flags=flags) -> float:
                with cuda_backends(**flags):
                    sync()
                    started = time.perf_counter()
                    for _ in range(args.steps):
                        step.run()
                    sync()
                    return args.steps * args.batch_size / (time.perf_counter() - started)

            runs[name], dtypes[name], models[name] = run, step.amp or torch.float32, step.model
            labels[name] = (f"{name} (TF32 off)" if name == base else
                            f"{name} ({dtype_name(step.amp)}, {'channels_last' if step.channels_last else 'NCHW'})")
        flops_per_image = 3 * count_flops(models["trainer"], args.image_size)
        amp = dtypes["trainer"]
        peak: dict = {torch.float32: [], amp: []}

        def yardstick(dtype) -> float:
            with cuda_backends(tf32=False):
                peak[dtype].append(matmul_flops(args.matmul_size, 5, dtype, device))
            return 0.0

        runs["matmul fp32"] = lambda: yardstick(torch.float32)
        if amp != torch.float32:
            runs["matmul amp"] = lambda: yardstick(amp)
        results = interleave(runs, args.rounds)
        print(f"-- {arch} (width {args.width}, {args.image_size} px, batch {args.batch_size}, "
              f"{flops_per_image / 3 / 1e9:.1f} GFLOP forward per image), medians of {args.rounds} rounds x {args.steps} steps")
        print(f"   dense matmul {args.matmul_size}^2: " + ", ".join(
            f"{dtype_name(None if d == torch.float32 else d)} {median(v) / 1e12:.1f} TFLOP/s" for d, v in peak.items()))
        best_frac = 0.0
        for name, (_, _, judged) in specs.items():
            ips = median(results[name])
            frac = flops_per_image * ips / median(peak[dtypes[name]])
            if judged:
                best_frac = max(best_frac, frac)
            extra = f", first 3 steps incl. compile {warm[name]:.0f} s" if "compile" in name else ""
            print(f"   {labels[name]:<52} {ips:8.1f} img/s  x{paired_ratio(results[name], results[base]):.2f} vs fp32  "
                  f"{frac:.0%} of matmul FLOP/s{extra}")
        verdicts.append(verdict(f"{arch} best trainer configuration FLOP/s fraction of same-dtype matmul",
                                best_frac, FLOP_TARGET, unit="%"))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/gpu_throughput.py")
    p.add_argument("--archs", default="unet,resnet34_unet")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per variant per round")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--matmul-size", type=positive_int, default=8192)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"SKIP gpu_throughput: no CUDA device here (torch {torch.__version__}); run it on a CUDA machine")
        return 0
    header(f"GPU training throughput on {torch.cuda.get_device_name(0)}", args)
    return finish(measure(args), args.report_only)


if __name__ == "__main__":
    sys.exit(main())
