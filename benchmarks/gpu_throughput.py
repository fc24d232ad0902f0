"""Training images/s on a CUDA GPU at 256 px, and the FLOP fraction achieved.

    .venv/bin/python benchmarks/gpu_throughput.py
    .venv/bin/python benchmarks/gpu_throughput.py --no-compile --steps 10

Without CUDA it prints one line saying so and exits 0 (nothing was measured, so nothing missed).

Per architecture, variants take turns on one fixed batch already on the GPU (data loading is
benchmarks/data_pipeline.py's business), each a full training step as `core.training.loop.fit` takes it (AdamW fused,
gradient clipping, the SegmentationLoss):

* fp32 NCHW              the plain recipe (TF32 off)
* amp + channels_last    autocast in the dtype `core.training.loop.select_amp` picks (bf16 where supported)
* amp + cl + compile     the same through torch.compile (inductor); its compile time is printed

FLOP fraction = 3 x count_flops(model) x images/s over the dense matmul FLOP/s of the same
dtype, measured in the same run (fp32 for the fp32 variant, the autocast dtype otherwise).
"""
from __future__ import annotations

import sys
import time

from benchmarks._common import (
    finish,
    header,
    interleave,
    matmul_flops,
    median,
    paired_ratio,
    parser,
    positive_int,
    verdict,
)

FLOP_TARGET = 0.60


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

    from core.losses import SegmentationLoss
    from core.models import build_model, count_flops
    from core.training.loop import select_amp

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here, for the baseline and its yardstick
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    amp = select_amp(device, "auto")
    header(f"GPU training throughput on {torch.cuda.get_device_name(0)}", args)
    peak = {torch.float32: [], amp: []}
    verdicts: list[bool] = []
    for arch in [a for a in args.archs.split(",") if a]:
        criterion = SegmentationLoss(0.3, 0.7)
        gen = torch.Generator(device=device).manual_seed(0)
        x0 = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, generator=gen)
        target = (torch.rand(args.batch_size, 1, args.image_size, args.image_size, device=device, generator=gen) > 0.5).float()
        flops_per_image = 3 * count_flops(build_model(arch, width=args.width), args.image_size)

        def variant(dtype, channels_last: bool, compiled: bool):
            torch.manual_seed(0)
            model = build_model(arch, width=args.width).to(device)
            x = x0
            if channels_last:
                model, x = model.to(memory_format=torch.channels_last), x0.contiguous(memory_format=torch.channels_last)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            step_model = torch.compile(model) if compiled else model

            def step():
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    loss = criterion(step_model(x), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()

            def run() -> float:
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(args.steps):
                    step()
                torch.cuda.synchronize()
                return args.steps * args.batch_size / (time.perf_counter() - started)

            started = time.perf_counter()
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            return run, time.perf_counter() - started

        specs = {"fp32 NCHW": (torch.float32, False, False),
                 f"{str(amp).replace('torch.', '')} + channels_last": (amp, True, False)}
        if not args.no_compile:
            specs[f"{str(amp).replace('torch.', '')} + channels_last + compile"] = (amp, True, True)
        runs, warm, dtypes = {}, {}, {}
        for name, (dtype, cl, compiled) in specs.items():
            runs[name], warm[name] = variant(dtype, cl, compiled)
            dtypes[name] = dtype
        runs["matmul fp32"] = lambda: peak[torch.float32].append(matmul_flops(args.matmul_size, 5, torch.float32, "cuda")) or 0.0
        runs["matmul amp"] = lambda: peak[amp].append(matmul_flops(args.matmul_size, 5, amp, "cuda")) or 0.0
        results = interleave(runs, args.rounds)
        base = list(specs)[0]
        print(f"-- {arch} (width {args.width}, {args.image_size} px, batch {args.batch_size}, "
              f"{flops_per_image / 3 / 1e9:.1f} GFLOP forward per image), medians of {args.rounds} rounds x {args.steps} steps")
        print(f"   dense matmul {args.matmul_size}^2: fp32 {median(peak[torch.float32]) / 1e12:.1f} TFLOP/s, "
              f"{str(amp).replace('torch.', '')} {median(peak[amp]) / 1e12:.1f} TFLOP/s")
        best_frac = 0.0
        for name in specs:
            ips = median(results[name])
            frac = flops_per_image * ips / median(peak[dtypes[name]])
            best_frac = max(best_frac, frac) if name != base else best_frac
            extra = f", first 3 steps incl. compile {warm[name]:.0f} s" if "compile" in name else ""
            print(f"   {name:<34} {ips:8.1f} img/s  x{paired_ratio(results[name], results[base]):.2f} vs fp32  "
                  f"{frac:.0%} of matmul FLOP/s{extra}")
        verdicts.append(verdict(f"{arch} best mixed-precision variant FLOP/s fraction of same-dtype matmul",
                                best_frac, FLOP_TARGET, unit="%"))
    return finish(verdicts, args.report_only)


if __name__ == "__main__":
    sys.exit(main())
