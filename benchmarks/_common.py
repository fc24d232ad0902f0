"""Shared helpers for the benchmarks: interleaved timing, the dense-matmul yardstick, verdict lines.

Every figure a benchmark prints is a RATIO of variants measured in the same process, taking
turns (A B C A B C ...), each repeated and reduced to a median: on a shared machine the load
changes from second to second, and interleaving spreads it over every variant alike.
Absolute numbers are printed too, but only the ratios compare across runs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from jobs.cli import OneLineParser, positive_int  # noqa: F401  (the jobs' own check, re-exported for the benchmarks)

if TYPE_CHECKING:
    import torch

    from core.training.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data" / "oxford-pets-sample"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def cpu_description() -> str:
    """The CPU's model name, the widest vector ISA torch uses on it, and whether it has native bf16.

    Figures from different machines only compare with this line beside them: the same code
    picks bf16 or fp32 depending on it, and runs at a different speed in each.
    """
    import torch

    from core.training.loop import cpu_has_fast_bf16

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}, {os.cpu_count()} CPUs, {capability}, {'native' if cpu_has_fast_bf16() else 'no native'} bf16"


def header(title: str, args: argparse.Namespace | None = None) -> None:
    """What was run, where, and how busy the machine was when it started."""
    import torch

    print(f"== {title}")
    print(f"   python {platform.python_version()}, torch {torch.__version__}, {cpu_description()}, "
          f"{torch.get_num_threads()} torch threads, {load_average()}")
    if args is not None:
        print("   " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()))
    sys.stdout.flush()


def interleave(variants: dict[str, Callable[[], float]], rounds: int,
               on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Run each variant once per round, in turn; each call returns its own measurement."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in variants.items():
            results[name].append(run())
        if on_round is not None:
            on_round(r)
    return results


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator/denominator: each ratio pairs measurements taken seconds apart."""
    return median([a / b for a, b in zip(numerator, denominator)])


def matmul_flops(n: int = 2048, repeats: int = 3, dtype=None, device: str = "cpu") -> float:
    """Dense n x n matrix-multiply FLOP/s (2 n^3 per product), best of `repeats` after a warm-up.

    Best, not median: it is the yardstick of what the hardware does when it gets the cores,
    so a model's fraction of it is conservative.
    """
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b, out=out)
    sync()
    best = float("inf")
    inner = 1 if device == "cpu" else 20
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * n**3 / best


EXIT_MISS = 1  # a target was missed; 2 stays argparse's (and a missing dataset's) "bad input"


def parser(doc: str, prog: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: one-line errors, its docstring as help, and --report-only.

    Every benchmark exits 1 when any of its targets is missed, so a script or CI step can gate
    on it; --report-only keeps the report and exits 0 (for measuring on a machine known to be
    slower, or while investigating a miss).
    """
    p = OneLineParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--report-only", action="store_true",
                   help="print every verdict but exit 0 even when a target is missed")
    return p


def no_dataset(path: Path) -> bool:
    """True, after one error line, when `path` is no folder: the benchmark then exits 2 (bad input)."""
    if path.is_dir():
        return False
    print(f"error: no dataset at {path}")
    return True


def finish(verdicts: Sequence[bool], report_only: bool) -> int:
    """The closing line and the exit status: EXIT_MISS if any verdict missed, unless report_only."""
    missed = sum(1 for ok in verdicts if not ok)
    if not missed:
        print(f"done: all {len(verdicts)} targets met")
        return 0
    print(f"done: {missed} of {len(verdicts)} targets missed (see MISS lines)"
          + ("; exit 0 (--report-only)" if report_only else ""))
    sys.stdout.flush()
    return 0 if report_only else EXIT_MISS


def verdict(label: str, value: float, target: float, unit: str = "x", higher_is_better: bool = True) -> bool:
    """One clear line: PASS, or MISS and by how much. unit "%" shows fractions as percentages."""
    ok = value >= target if higher_is_better else value <= target
    cmp = ">=" if higher_is_better else "<="
    show = (lambda v: f"{100 * v:.1f}%") if unit == "%" else (lambda v: f"{v:.3g}{unit}")
    if ok:
        print(f"PASS  {label}: {show(value)} (target {cmp} {show(target)})")
    else:
        if higher_is_better:
            short = target / value if value > 0 else float("inf")
        else:
            short = value / target if target > 0 else float("inf")
        print(f"MISS  {label}: {show(value)} (target {cmp} {show(target)}; short by a factor {short:.2f})")
    sys.stdout.flush()
    return ok


class FreshProcess:
    """A second Python process, spawned, for variants that stand for a plain script.

    Some of the trainer's settings are process-wide (glibc's malloc policy, OpenCV's thread
    pool) and what a process allocated earlier changes what later allocations cost. A baseline
    run in the trainer's process would inherit all of that; this one starts as a lab-report
    script does. Calls run there one at a time, while this process waits, so the variants
    still take turns on the same cores. `fn` must be a module-level function.
    """

    def __init__(self, threads: int = 0):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=set_threads, initargs=(threads,))

    def call(self, fn: Callable[..., float], *args: object) -> float:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> "FreshProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_threads(threads: int) -> None:
    """0 keeps torch's default (one per core); otherwise pins intra-op threads for every variant."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


# -- the trainer's own training step, for the benchmarks that time it --------------------------

OptimizerFactory = Callable[["torch.nn.Module", "TrainConfig"], "torch.optim.Optimizer"]


@dataclass
class TimedStep:
    """The trainer's training step for one TrainConfig, on one fixed batch already on its device."""

    run: Callable[[], None]        # one step; on a GPU it returns once queued: synchronize before reading a clock
    model: "torch.nn.Module"       # the model the step trains (uncompiled, also when the step runs it compiled)
    optimizer: "torch.optim.Optimizer"
    amp: "torch.dtype | None"      # the autocast dtype, None for fp32
    channels_last: bool
    device: "torch.device"


def trainer_step(cfg: "TrainConfig", optimizer: OptimizerFactory | None = None) -> TimedStep:
    """One training step exactly as `core.training.loop.fit` takes it, on one fixed random batch.

    The model and its layout, the autocast dtype, the optimizer, the gradient scaler, clipping and
    compilation come from the trainer's own builder (`core.training.loop.build_step`) for `cfg`, and the
    batch is prepared by the trainer's own normaliser: a variant differs from the trainer only where
    its TrainConfig does. `optimizer` swaps in another optimizer, the one choice TrainConfig does not
    expose, for the ablations that price the trainer's.
    """
    import numpy as np
    import torch

    from core.training import loop

    device = loop.select_device(cfg.device)
    amp = loop.choose_amp(cfg, device)
    channels_last = loop.use_channels_last(cfg, device)
    rng = np.random.default_rng(cfg.seed)
    shape = (cfg.batch_size, cfg.image_size, cfg.image_size)
    images = torch.from_numpy(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    masks = torch.from_numpy(rng.choice(np.array([True, False, True]), shape))  # 2/3 foreground
    x, target, _ = loop.Normalizer(device, channels_last)(images, masks)
    loop.seed_everything(cfg.seed)
    factory = (lambda model, cfg, device: optimizer(model, cfg)) if optimizer else None
    model, built_optimizer, step = loop.build_step(cfg, device, amp, make_optimizer=factory)
    model.train()

    def run() -> None:
        step(x, target)

    return TimedStep(run, model, built_optimizer, amp, channels_last, device)



def optimizer_name(optimizer: "torch.optim.Optimizer") -> str:
    """'fused AdamW', 'AdamW foreach', 'Adam', ...: what an optimizer is, for a variant's label."""
    kind = type(optimizer).__name__
    if optimizer.defaults.get("fused"):
        return f"fused {kind}"
    return f"{kind} foreach" if optimizer.defaults.get("foreach") else kind


def dtype_name(dtype: "torch.dtype | None") -> str:
    """'fp32' for no autocast, else the dtype's short name ('bfloat16', 'float16')."""
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


class UpkeepTimer:
    """The upkeep Store.finish_trial runs on closing a trial as complete (core.store.summaries.add_trial, then
    core.store.suspicion.add_trial), timed together per close while installed, with the images whose summaries
    were recomputed, for the benchmarks' summary lines; installed switched off, neither runs."""

    def __init__(self) -> None:
        from core.store import summaries, suspicion

        self.modules = (summaries, suspicion)
        self.real = (summaries.add_trial, suspicion.add_trial)
        self.seconds: list[float] = []
        self.recomputed: list[int] = []
        self._started = 0.0

    def install(self, on: bool = True) -> None:
        for module, call in zip(self.modules, (self._summaries, self._suspicion) if on else (self._off, self._off)):
            module.add_trial = call

    def remove(self) -> None:
        for module, real in zip(self.modules, self.real):
            module.add_trial = real

    def _summaries(self, *args: Any) -> int:
        self._started = time.perf_counter()
        recomputed = self.real[0](*args)
        self.recomputed.append(recomputed)
        return recomputed

    def _suspicion(self, *args: Any) -> int:
        counted = self.real[1](*args)
        self.seconds.append(time.perf_counter() - self._started)
        return counted

    @staticmethod
    def _off(*args: Any) -> int:
        return 0
