"""Training images/s of core's trainer vs a plain lab-report loop, same run.

    .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --ablations   # + what each of the trainer's choices is worth
    (add --compile for torch.compile in the ablations, which compiles each architecture first)

Variants take turns, round after round, on the same images (the real sample's train split):

* trainer    `core.training.loop.fit` itself, 2 epochs (the first warms up), in the precision it picks
             for this CPU (bf16 autocast where the CPU has native bf16, else fp32); its own
             epochs-table figure (`EpochStats.images_per_s` of epoch 2) is what counts, and the
             same epoch is also timed from outside fit (between the on_epoch callbacks, less
             the validation pass) to show the two agree.
* reference  the loop the lab reports wrote: a torch Dataset that PIL-decodes the JPEG and trimap
             and runs albumentations (resize, flip, +-15 deg, brightness/contrast, normalise) every
             step; DataLoader(batch_size=8, shuffle=True) defaults; fp32 NCHW; torch.optim.Adam;
             same model, same loss. It runs in a separate, spawned process (benchmarks._common.
             FreshProcess), as a lab-report script would: the trainer's process-wide settings
             (malloc policy, OpenCV threads) and its heap never reach it. 2 epochs, epoch 2 timed.
* fwd+bwd    the trainer's own training step (`core.training.loop.build_step`, as fit and the sweep's
             step_seconds probe run it) on one fixed batch, with clipping off and an optimizer
             that updates nothing: the model's forward + backward alone, in the trainer's
             precision and layout; no data, no update. No eager training loop beats it:
             fwd+bwd / reference is the ceiling of the trainer's ratio.

--ablations times that same step as the trainer builds it against the step with one choice
undone: a trainer setting through TrainConfig (amp, channels_last, grad_clip, compile), the
optimizer swapped in the trainer's builder, or torch's threads.

FLOP fraction = 3 x count_flops(model) x images/s, over the dense matmul FLOP/s of the same
dtype (the trainer's: bf16 or fp32; the reference's: fp32) measured in the same rounds.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    DEFAULT_DATA,
    FreshProcess,
    dtype_name,
    finish,
    header,
    interleave,
    matmul_flops,
    median,
    no_dataset,
    optimizer_name,
    paired_ratio,
    parser,
    positive_int,
    set_threads,
    trainer_step,
    verdict,
)
from benchmarks.reference_loop import ReportsDataset, reference_model, train_epoch

TARGETS = {"unet": 2.0, "resnet34_unet": 1.3}  # trainer / reference at 64 px, batch 8, width 1.0
FLOP_TARGET = 0.60
AGREEMENT = 0.05  # epochs-table images_per_s vs timed from outside fit


# -- the lab-report reference ------------------------------------------------------------

def reference_run(arch: str, width: float, root: str, names: list[str], size: int, batch_size: int, seed: int,
                  opencv_threads: int = -1) -> float:
    """Two epochs of the plain loop on a fresh model; images/s of optimizer steps in the second.

    Meant for a FreshProcess. `opencv_threads` -1 is OpenCV's default (a thread per core).
    """
    import cv2
    import torch

    cv2.setNumThreads(opencv_threads)
    model, optimizer, criterion = reference_model(arch, width, seed)
    loader = torch.utils.data.DataLoader(ReportsDataset(Path(root), names, size), batch_size=batch_size, shuffle=True)
    for _ in range(2):
        started = time.perf_counter()
        seen = train_epoch(model, optimizer, criterion, loader)
        seconds = time.perf_counter() - started
    return seen / seconds


# -- core's trainer -----------------------------------------------------------------------

def bench_dataset(root: Path, image_size: int, train_images: int, cache_dir: Path):
    """The sample prepared by core, cut to `train_images` train images and ONE val image.

    One val image keeps fit's per-epoch validation to milliseconds: the benchmark times
    training, and the validation pass is taken out of the outside view anyway.
    """
    import numpy as np

    from core.data.dataset import PreparedDataset, prepare_dataset

    data = prepare_dataset(root, image_size, cache_dir=cache_dir, log=lambda _: None)
    train, val = data.indices("train")[:train_images], data.indices("val")[:1]
    if len(val) == 0:
        val = data.indices("test")[:1]
    keep = np.concatenate([train, val])
    infos = [dataclasses.replace(data.infos[i], split="train" if k < len(train) else "val") for k, i in enumerate(keep)]
    subset = PreparedDataset(data.root, data.source, image_size, infos, data.images[keep], data.masks[keep],
                            None if data.ignore is None else data.ignore[keep])
    return subset, [data.infos[i].name for i in train]


class _ThreadedOpenCV:
    """Stands in for cv2 inside core.training.loop to undo one fix: OpenCV keeps its default thread pool."""

    def __init__(self):
        import cv2

        self._cv2 = cv2

    def __getattr__(self, name: str):
        return getattr(self._cv2, name)

    def setNumThreads(self, n: int) -> None:  # noqa: N802 (OpenCV's name)
        self._cv2.setNumThreads(-1)


def trainer_run(cfg, data, record: dict, opencv_fix: bool = True) -> float:
    """fit() for 2 epochs; returns epoch 2's images_per_s, and records the outside view of it.

    The outside view times epoch 2 between fit's on_epoch callbacks and takes out the
    validation pass (timed here, around core.training.loop.predict), since images_per_s is training
    images per second of optimizer steps; what is left between callbacks (the best-weights
    snapshot, the epoch's bookkeeping) still counts against the trainer.
    """
    import core.training.loop
    from core.training.loop import fit

    stamps: list[float] = []
    validating: list[float] = []
    real_cv2, real_predict = core.training.loop.cv2, core.training.loop.predict

    def timed_predict(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real_predict(*args, **kwargs)
        finally:
            validating.append(time.perf_counter() - started)

    core.training.loop.predict = timed_predict
    if not opencv_fix:
        core.training.loop.cv2 = _ThreadedOpenCV()
    try:
        result = fit(cfg, data, on_epoch=lambda _: stamps.append(time.perf_counter()), progress=False)
    finally:
        core.training.loop.cv2, core.training.loop.predict = real_cv2, real_predict
    last = result.history[-1]
    n_train = len(data.indices("train"))
    seen = (n_train // cfg.batch_size) * cfg.batch_size
    record.setdefault("outside", []).append(seen / (stamps[1] - stamps[0] - validating[1]))
    record.setdefault("table", []).append(last.images_per_s)
    return last.images_per_s


def trainer_run_glibc_malloc(cfg, root: str, image_size: int, train_images: int, cache_dir: str) -> float:
    """trainer_run in a FreshProcess with fit's keep_freed_memory() switched off: glibc's own policy."""
    import core.training.loop

    core.training.loop.keep_freed_memory = lambda: False
    data, _ = bench_dataset(Path(root), image_size, train_images, Path(cache_dir))
    return trainer_run(cfg, data, {})


# -- ablations: what each of the trainer's choices is worth ------------------------------------

def adam_for_loop(model, cfg):
    """PyTorch's CPU default Adam: a Python loop over the parameter tensors, no weight decay."""
    import torch

    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def adamw_foreach(model, cfg):
    """AdamW over lists of tensors (foreach) rather than the trainer's fused kernel."""
    import torch

    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def no_update(model, cfg):
    """An optimizer that changes nothing: with clipping off, the trainer's step is the model's forward + backward."""
    import torch

    class NoUpdate(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            return None

    return NoUpdate(model.parameters())


def fwd_bwd_config(cfg):
    """cfg without clipping: with `no_update` as optimizer, the model's forward + backward alone."""
    return dataclasses.replace(cfg, grad_clip=0.0)


def seconds_per_step(step, steps: int, threads: int = 0) -> float:
    """Mean seconds of `steps` calls after one uncounted call (which settles threads and allocations)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - started) / steps
    finally:
        torch.set_num_threads(before)


def ablations(cfg, rounds: int, steps: int, with_compile: bool) -> None:
    """The trainer's own step on a fixed batch (no data), and the same step with one choice undone,
    variants interleaved; times relative to the trainer's. Each variant that is a trainer setting is
    built through TrainConfig; the optimizer, which TrainConfig does not set, is swapped in its builder."""
    from benchmarks._common import TimedStep

    trainer = trainer_step(cfg)
    cl, amp = trainer.channels_last, trainer.amp
    base_name = (f"trainer: {'channels_last' if cl else 'NCHW'}, {dtype_name(amp)}{' autocast' if amp else ''}, "
                 f"{optimizer_name(trainer.optimizer)}, clip {cfg.grad_clip:g}, freed memory kept")
    # name -> (TrainConfig, optimizer factory or None for the trainer's, torch threads or 0 for the run's)
    specs = {base_name: (cfg, None, 0)}
    if amp is not None:
        specs["fp32 (amp off)"] = (dataclasses.replace(cfg, amp="off"), None, 0)
    specs.update({
        "NCHW" if cl else "channels_last": (dataclasses.replace(cfg, channels_last=not cl), None, 0),
        "Adam for-loop (CPU default)": (cfg, adam_for_loop, 0),
        "AdamW foreach": (cfg, adamw_foreach, 0),
        "no grad clipping": (dataclasses.replace(cfg, grad_clip=0.0), None, 0),
        "forward+backward only": (fwd_bwd_config(cfg), no_update, 0),
        "1 thread": (cfg, None, 1),
    })
    if with_compile:
        specs["torch.compile (inductor)"] = (dataclasses.replace(cfg, compile=True), None, 0)
    runs, warm = {}, {}
    for name, (variant_cfg, optimizer, threads) in specs.items():
        started = time.perf_counter()
        step: TimedStep = trainer if name == base_name else trainer_step(variant_cfg, optimizer)
        step.run()  # warm-up (and, compiled, the compilation)
        warm[name] = time.perf_counter() - started
        runs[name] = lambda step=step, threads=threads: seconds_per_step(step.run, steps, threads)
    times = interleave(runs, rounds)
    base_times = times[base_name]
    print(f"-- ablation {cfg.arch}: seconds per training step of the trainer's own step (fixed batch, no data), "
          f"median of {rounds} rounds x {steps} steps; ratio = variant time / trainer time (paired per round)")
    for name in runs:
        extra = f", first call incl. compile {warm[name]:.0f} s" if "compile" in name else ""
        print(f"   {name:<60} {median(times[name]):.3f} s/step  x{paired_ratio(times[name], base_times):.3f}{extra}")
    sys.stdout.flush()


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/train_throughput.py")
    p.add_argument("--archs", default="unet,resnet34_unet")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--train-images", type=positive_int, default=64, help="train images per epoch (steps = this / batch)")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--fwd-bwd-steps", type=positive_int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads for every variant; 0 = torch's default")
    p.add_argument("--matmul-size", type=positive_int, default=2048)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="an Oxford-IIIT Pet style folder")
    p.add_argument("--ablations", action="store_true", help="also time each trainer choice against its alternative")
    p.add_argument("--ablation-steps", type=positive_int, default=5)
    p.add_argument("--compile", action="store_true", help="include torch.compile in the ablations (compiling each model first takes long)")
    args = p.parse_args(argv)

    set_threads(args.threads)
    from core.data.augment import AugmentConfig
    from core.models import count_flops
    from core.training.loop import TrainConfig, choose_amp, select_device

    header("training throughput: core.training.loop.fit vs the lab-report loop", args)
    if no_dataset(args.data):
        return 2
    base = TrainConfig(width=args.width, image_size=args.image_size, epochs=2, batch_size=args.batch_size, lr=1e-4,
                       augment=AugmentConfig.reports(), device="cpu")
    amp = choose_amp(base, select_device(base.device))  # what fit will autocast to on this CPU (measured)
    print(f"   the trainer runs {dtype_name(amp)} on this CPU (autocast {'on' if amp else 'off'}); "
          f"the reference runs fp32")
    archs = [a for a in args.archs.split(",") if a]
    verdicts: list[bool] = []
    with tempfile.TemporaryDirectory() as tmp, FreshProcess(args.threads) as fresh:
        data, names = bench_dataset(args.data.resolve(), args.image_size, args.train_images, Path(tmp))
        root = str(args.data.resolve())
        print(f"   {len(names)} train images, {len(names) // args.batch_size} optimizer steps per epoch, "
              f"batch {args.batch_size}, {args.image_size} px, width {args.width}")
        for arch in archs:
            cfg = dataclasses.replace(base, arch=arch)
            fwd_bwd = trainer_step(fwd_bwd_config(cfg), no_update)  # building it sets fit's malloc policy here too
            model = fwd_bwd.model
            flops_per_image = 3 * count_flops(model, args.image_size)
            fwd_bwd.run()  # warm-up
            record: dict = {}
            variants = {"matmul fp32": lambda: matmul_flops(args.matmul_size)}
            if amp is not None:
                variants[f"matmul {dtype_name(amp)}"] = lambda: matmul_flops(args.matmul_size, dtype=amp)
            variants.update({
                "trainer": lambda: trainer_run(cfg, data, record),
                "reference": lambda: fresh.call(reference_run, arch, args.width, root, names, args.image_size,
                                                args.batch_size, 0),
                "fwd+bwd": lambda: args.batch_size / seconds_per_step(fwd_bwd.run, args.fwd_bwd_steps),
            })
            if args.ablations:  # the trainer without its OpenCV or malloc fix, the reference with the OpenCV fix
                variants["trainer, OpenCV threaded"] = lambda: trainer_run(cfg, data, {}, opencv_fix=False)
                variants["trainer, glibc malloc"] = lambda: fresh.call(
                    trainer_run_glibc_malloc, cfg, root, args.image_size, args.train_images, tmp)
                variants["reference, OpenCV unthreaded"] = lambda: fresh.call(
                    reference_run, arch, args.width, root, names, args.image_size, args.batch_size, 0, 0)
            results = interleave(variants, args.rounds,
                                 on_round=lambda r: print(f"   {arch}: round {r + 1}/{args.rounds} done", flush=True))

            yard = {"fp32": results["matmul fp32"], dtype_name(amp): results[f"matmul {dtype_name(amp)}"]}
            dtype_of = {"trainer": dtype_name(amp), "fwd+bwd": dtype_name(amp), "reference": "fp32",
                        "trainer, OpenCV threaded": dtype_name(amp), "trainer, glibc malloc": dtype_name(amp),
                        "reference, OpenCV unthreaded": "fp32"}
            ips = {k: median(v) for k, v in results.items() if not k.startswith("matmul")}
            ratio = paired_ratio(results["trainer"], results["reference"])
            ceiling = paired_ratio(results["fwd+bwd"], results["reference"])
            agree = paired_ratio(record["table"], record["outside"])
            # each round's FLOP fraction against the same-dtype matmul yardstick of the same round
            frac = {k: median([flops_per_image * v / m for v, m in zip(results[k], yard[dtype_of[k]])]) for k in ips}
            print(f"-- {arch} (width {args.width}, {args.image_size} px, batch {args.batch_size}, "
                  f"{flops_per_image / 3 / 1e9:.2f} GFLOP forward per image), medians of {args.rounds} rounds:")
            print("   dense matmul " + ", ".join(f"{k} {median(v) / 1e9:.0f} GFLOP/s" for k, v in yard.items())
                  + f" ({args.matmul_size}^2)")
            print(f"   trainer    {ips['trainer']:7.2f} img/s  (epochs table; timed outside fit "
                  f"{median(record['outside']):.2f} img/s)  {frac['trainer']:.0%} of {dtype_of['trainer']} matmul FLOP/s")
            print(f"   reference  {ips['reference']:7.2f} img/s  {frac['reference']:.0%} of fp32 matmul FLOP/s")
            print(f"   fwd+bwd    {ips['fwd+bwd']:7.2f} img/s  {frac['fwd+bwd']:.0%} of {dtype_of['fwd+bwd']} matmul "
                  f"FLOP/s  (the model alone in the trainer's precision: its ceiling)")
            if args.ablations:
                before = results["trainer, OpenCV threaded"]
                print(f"   trainer, OpenCV threaded     {median(before):7.2f} img/s  "
                      f"(the trainer is x{paired_ratio(results['trainer'], before):.2f} this: its OpenCV fix)")
                plain = results["trainer, glibc malloc"]
                print(f"   trainer, glibc malloc        {median(plain):7.2f} img/s  "
                      f"(the trainer is x{paired_ratio(results['trainer'], plain):.2f} this: freed memory kept; "
                      f"run in the reference's process)")
                fixed = results["reference, OpenCV unthreaded"]
                print(f"   reference, OpenCV unthreaded {median(fixed):7.2f} img/s  "
                      f"(x{paired_ratio(fixed, results['reference']):.2f} the reference: the trainer's OpenCV fix alone)")
            print(f"RATIO {arch} trainer/reference = {ratio:.2f}x   (ceiling fwd+bwd/reference = {ceiling:.2f}x)")
            print(f"RATIO {arch} epochs-table images_per_s / timed outside fit = {agree:.3f}")
            target = TARGETS.get(arch, 1.0)
            ok1 = verdict(f"{arch} trainer/reference speed-up", ratio, target)
            if not ok1:
                needed = frac["trainer"] * target / ratio
                print(f"      why: {target}x the reference needs {needed:.0%} of {dtype_of['trainer']} matmul FLOP/s; "
                      f"the model's own forward+backward reaches {frac['fwd+bwd']:.0%} (ceiling {ceiling:.2f}x), "
                      f"the trainer {frac['trainer']:.0%}")
            ok2 = verdict(f"{arch} trainer FLOP/s fraction of {dtype_of['trainer']} dense matmul", frac["trainer"],
                          FLOP_TARGET, unit="%")
            if not ok2:
                deepest = args.image_size // getattr(model, "stride", 1)  # its total downsampling
                print(f"      why: the model's own forward+backward reaches {frac['fwd+bwd']:.0%} here: its deepest "
                      f"stages convolve {deepest}x{deepest} maps (batch {args.batch_size}), too little work per "
                      f"call to keep the vector units busy, between memory-bound norm and activation passes; "
                      f"the optimizer step and clipping (memory-bound passes over every parameter), data and "
                      f"metrics take the trainer to {frac['trainer']:.0%}.")
            ok3 = verdict(f"{arch} images_per_s agreement |table/outside - 1|", abs(agree - 1), AGREEMENT, unit="%",
                          higher_is_better=False)
            verdicts += [ok1, ok2, ok3]
            if args.ablations:
                ablations(cfg, args.rounds, args.ablation_steps, args.compile)
    return finish(verdicts, args.report_only)


if __name__ == "__main__":
    sys.exit(main())
