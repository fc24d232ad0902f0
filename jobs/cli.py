"""Command-line pieces shared by jobs.train and jobs.sweep: flags, validation, opening the store
and the data, user errors, the dashboard command."""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, NoReturn

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from core.data.augment import AugmentConfig
from core.data.check import DataCheck, summary_lines
from core.data.dataset import DataError, PreparedDataset
from core.data.folder_dataset import UnusableData
from core.data.masks import parse_foreground
from core.data.splits import compile_group_by
from core.data.download import DownloadError
from core.data.sources import DATA_CHOICES, load_data
from core.models import available_models
from core.models.pretrained import WeightsError, default_encoder_weights, weights_source
from core.machine import usable_cores
from core.store.db import DEFAULT_URL, Store, StoreError, display_url, normalize_url, sqlite_path
from core.store.engine import error_detail
from core.training.loop import TrainConfig
from core.training.trial import register

AUGMENT_FLAGS = {  # flag name -> (AugmentConfig field, help)
    "hflip": ("hflip", "horizontal flip probability"),
    "vflip": ("vflip", "vertical flip probability"),
    "rotate": ("rotate", "max rotation, degrees"),
    "brightness": ("brightness", "max brightness change"),
    "contrast": ("contrast", "max contrast change"),
    "color-jitter": ("color_jitter", "hue/saturation jitter strength"),
    "scale-shift": ("scale_shift", "max relative scale change and shift"),
    "gamma": ("gamma", "max relative gamma change"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def user_error(prog: str, message: str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def db_error(db: str, exc: BaseException) -> str:
    """One line for a database failure in the middle of a job (server gone, disk full, read-only file)."""
    return f"database error on {display_url(db)}: {error_detail(exc)}; results recorded before it are kept"


@contextlib.contextmanager
def one_line_errors(prog: str, db: str, *more: type[Exception]) -> Iterator[None]:
    """Problems the user can fix (data, download, store, and any of `more`) and a database failing
    mid-job (server gone, disk full, read-only file) end the job with one line and exit 1."""
    try:
        yield
    except (DataError, DownloadError, StoreError, *more) as exc:
        user_error(prog, str(exc))
    except DBAPIError as exc:
        user_error(prog, db_error(db, exc))


def open_job(prog: str, args: argparse.Namespace, image_size: int,
             **load: Any) -> tuple[Store, PreparedDataset, dict[str, int]]:
    """A job's start: the store of --db, the data of --data/--data-root (or --images/--masks) at
    `image_size` (`load`: more load_data options), and its images registered (image name -> id); a
    user's folder prints its data check first (the lines jobs.check_data prints); a problem is one
    line, exit 1."""
    with one_line_errors(prog, args.db):
        store = Store(args.db)
        data = load_job_data(prog, args, image_size, **load)
        return store, data, register(store, data)


def load_job_data(prog: str, args: argparse.Namespace, image_size: int, **load: Any) -> PreparedDataset:
    """The data the folder flags name, its check printed (`prog: ...` lines) when it is a user's folder."""
    try:
        data = load_data(args.data, args.data_root, image_size, seed=args.seed, **folder_options(args), **load)
    except UnusableData as exc:
        print_check(prog, exc.check)
        raise
    if data.check is not None:
        print_check(prog, data.check)
    return data


def folder_options(args: argparse.Namespace) -> dict[str, Any]:
    """load_data's options for a user's folder, from the flags (absent on a Namespace built by hand)."""
    return {k: getattr(args, k, None) for k in ("images", "masks", "foreground", "group_by")}


def print_check(prog: str, check: DataCheck) -> None:
    for line in summary_lines(check):
        print(f"{prog}: {line}")


def dashboard_command(url: str, python: str | None = None, cwd: Path | None = None) -> str:
    """The command that opens the dashboard on the store at `url`, run by this job's own interpreter
    (`python`, default sys.executable): README's install puts streamlit in .venv/bin, not on PATH.
    A password stays out of it (job output ends up in logs), with a word saying so."""
    run = f"{interpreter(python or sys.executable, cwd or Path.cwd())} -m streamlit run dashboard/Home.py"
    path = sqlite_path(url)
    if path:
        return f"RESULTS_DB={shlex.quote(str(path))} {run}"
    hidden = "  (password hidden: put yours in place of ***)" if make_url(normalize_url(url)).password else ""
    return f"RESULTS_DB={shlex.quote(display_url(url))} {run}{hidden}"


def interpreter(python: str, cwd: Path) -> str:
    """`python` as typed from `cwd`: relative when inside it (.venv/bin/python), else absolute, quoted
    for the shell. Never resolved: a virtualenv's python is a symlink, and its target lacks the venv."""
    path = Path(os.path.abspath(python))
    with contextlib.suppress(ValueError):
        path = path.relative_to(os.path.abspath(cwd))
    return shlex.quote(str(path))


def positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def image_size(text: str) -> int:
    value = positive_int(text)
    if value < 32 or value > 1024:
        raise argparse.ArgumentTypeError(f"must be between 32 and 1024 pixels, got {text}")
    return value


def probability(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def device_name(text: str) -> str:
    """auto, or a device this machine has (checked now, not at the first trial)."""
    if text == "auto":
        return text
    from core.training.loop import select_device

    try:
        select_device(text)
    except ValueError as exc:  # a known device type this machine lacks
        raise argparse.ArgumentTypeError(str(exc)) from None
    except RuntimeError:  # not a device name at all
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps") from None
    return text


def arch_name(text: str) -> str:
    if text not in available_models():
        raise argparse.ArgumentTypeError(f"unknown architecture {text!r}; choose from {', '.join(available_models())}")
    return text


def add_folder_args(g: argparse._ActionsContainer) -> None:
    """Which data: --data, --data-root, or --images/--masks, and how a user's masks and splits are read."""
    g.add_argument("--data", choices=DATA_CHOICES, default="auto",
                   help="auto: the folder of --data-root (or --images/--masks) when given, else the built-in "
                        "synthetic set (offline); oxford-pets: Oxford-IIIT Pet, downloaded (about 800 MB) if absent")
    g.add_argument("--data-root", default=None,
                   help="your folder of images and masks (images/ + masks/, by split or group folders; nnU-Net "
                        "raw), or Oxford-IIIT Pet's layout; recognised by itself")
    g.add_argument("--images", default=None, help="a folder of images, with --masks: its masks, anywhere")
    g.add_argument("--masks", default=None, help="the folder of masks for --images")
    g.add_argument("--foreground", type=foreground_values, default=None,
                   help="mask values that are foreground, e.g. 255 or 1,2 (default: every non-zero value)")
    g.add_argument("--group-by", type=group_pattern, default=None,
                   help="regular expression naming the part of a file name that identifies a patient, video or "
                        "scene (first capture group, else the whole match): all its images land in one split")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and store")
    add_folder_args(g)
    g.add_argument("--db", default=DEFAULT_URL, help="SQLAlchemy URL or SQLite file path (default %(default)s)")
    g.add_argument("--device", type=device_name, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="mixed precision")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long GPU runs)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def foreground_values(text: str) -> tuple[int, ...]:
    try:
        return parse_foreground(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def group_pattern(text: str) -> str:
    try:
        compile_group_by(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_data_root(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--data-root must exist, unless the synthetic set is to be generated there; --images and --masks
    go together, exist, and replace --data-root."""
    images, masks = getattr(args, "images", None), getattr(args, "masks", None)
    if images is not None or masks is not None:
        if images is None or masks is None:
            p.error("--images and --masks go together: give both folders")
        if args.data_root is not None or args.data not in ("auto", "folder"):
            p.error("--images/--masks name the data themselves: leave out --data-root and --data")
        for flag, folder in (("--images", images), ("--masks", masks)):
            if not Path(folder).expanduser().is_dir():
                p.error(f"{flag} {folder} is not a folder")
    if args.data_root is not None and args.data != "synthetic" and not Path(args.data_root).expanduser().exists():
        p.error(f"--data-root {args.data_root} does not exist")


def width_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else positive_float(text)


def add_result_args(p: argparse.ArgumentParser) -> None:
    """--db, --sweep and --arch/--trial: which result (jobs.predict and jobs.export)."""
    p.add_argument("--db", default=DEFAULT_URL, help="SQLAlchemy URL or SQLite file path (default %(default)s)")
    p.add_argument("--sweep", default=None, help="sweep name (default: the most recently active)")
    p.add_argument("--arch", type=arch_name, default=None,
                   help="the architecture whose result to use (default: the result with the best val dice)")
    p.add_argument("--trial", type=non_negative_int, default=None,
                   help="a trial number instead of the result (with --arch where several architectures have it)")


def add_size_args(p: argparse.ArgumentParser, *, epochs: int | None, image: int | None, width: float | None,
                  batch: int | None, auto_width: bool = False) -> None:
    g = p.add_argument_group("size")
    g.add_argument("--epochs", type=positive_int, default=epochs)
    g.add_argument("--image-size", type=image_size, default=image, help="square side in pixels")
    g.add_argument("--width", type=width_or_auto if auto_width else positive_float, default=width,
                   help="channel width multiplier (1.0 = reports)" + (
                       "; auto: the widest of 1, 0.5, 0.25 the time budget trains long enough" if auto_width else ""))
    g.add_argument("--batch-size", type=positive_int, default=batch)


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    """--encoder-weights, --encoder-lr, --freeze-epochs: where the encoder starts and how it is trained."""
    g = p.add_argument_group("pretrained encoder")
    g.add_argument("--encoder-weights", default=None, metavar="imagenet|none|PATH",
                   help="the encoder's starting weights: imagenet (efficientnet_lite0_unet's default: shipped "
                        "with its package, offline; resnet34_unet: torchvision's file from the torch hub cache, "
                        "downloaded once), none (random, the other architectures' default) or a state dict file")
    g.add_argument("--encoder-lr", type=positive_float, default=TrainConfig.encoder_lr,
                   help="a pretrained encoder's learning rate as a share of the peak lr (default %(default)s)")
    g.add_argument("--freeze-epochs", type=non_negative_int, default=TrainConfig.freeze_epochs,
                   help="first epochs with a pretrained encoder frozen, batch norm included (default %(default)s)")


def encoder_weights(prog: str, arch: str, flag: str | None) -> str:
    """TrainConfig.encoder_weights for `arch` under --encoder-weights `flag` (None: the arch's default),
    checked now (found, fetched once if absent) so a missing file is a one-line error before anything trains."""
    weights = flag or default_encoder_weights(arch)
    try:
        weights_source(arch, weights)
    except WeightsError as exc:
        user_error(prog, str(exc), code=2)
    return weights if weights in ("imagenet", "none") else str(Path(weights).expanduser().resolve())


def add_augment_args(p: argparse.ArgumentParser, defaults: AugmentConfig | None) -> None:
    g = p.add_argument_group("augmentation (defaults: the lab reports' set)")
    values = defaults.as_dict() if defaults else {}
    for flag, (field, text) in AUGMENT_FLAGS.items():
        kind = probability if flag in ("hflip", "vflip") else non_negative_float
        g.add_argument(f"--{flag}", dest=f"aug_{field}", type=kind, default=values.get(field), help=text)


def augment_from_args(args: argparse.Namespace) -> AugmentConfig:
    base = AugmentConfig.reports().as_dict()
    given = {field: getattr(args, f"aug_{field}") for field, _ in AUGMENT_FLAGS.values()}
    return AugmentConfig(**{k: (v if v is not None else base[k]) for k, v in given.items()})


# -- CPU threads ------------------------------------------------------------------------------

JOB_MODULES = ("jobs.sweep", "jobs.train")  # what counts as a SegSweep worker on this machine


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """--threads and --workers-here: how many CPU threads torch may use in this worker."""
    g = p.add_argument_group("CPU threads")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: $OMP_NUM_THREADS if set, else this machine's cores divided by "
                        "the SegSweep workers running on it, at least 1)")
    g.add_argument("--workers-here", type=positive_int, default=None,
                   help="how many SegSweep workers share this machine (default: counted from the running "
                        "jobs.sweep / jobs.train processes)")


def _is_job(argv: list[str]) -> bool:
    """`python -m jobs.sweep ...`, `python -m jobs.train ...` or `python jobs/sweep.py ...`.

    Only a Python process itself: a wrapper whose command line merely contains the job's
    (`time python -m jobs.sweep`, `nohup ...`, `bash -c ...`) is not a second worker.
    """
    if not argv or not Path(argv[0]).name.startswith("python"):
        return False
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in JOB_MODULES:
            return True
        if arg.endswith(tuple(m.replace(".", "/") + ".py" for m in JOB_MODULES)):
            return True
    return False


def worker_pids(proc: Path = Path("/proc")) -> set[int]:
    """Process ids of the SegSweep jobs running on this machine, read from /proc/PID/cmdline.

    A job's own children (forked data-loader or decoding workers, which inherit its command
    line) are not counted again. Where /proc is absent (macOS, Windows) nothing is found.
    """
    found: dict[int, int] = {}  # pid -> parent pid
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return set()
    for entry in entries:
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not _is_job(argv):
                continue
            stat = (entry / "stat").read_text()
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
        except (OSError, ValueError, IndexError):  # exited meanwhile, or not ours to read
            continue
    return {pid for pid, parent in found.items() if parent not in found}


def choose_threads(args: argparse.Namespace) -> tuple[int, str]:
    """Torch threads for this worker, and why: --threads, else --workers-here, else
    $OMP_NUM_THREADS, else the usable cores divided by the SegSweep workers counted on this
    machine (this one included), at least 1.

    Several workers each starting one OpenMP thread per core oversubscribe the cores, and a
    thread that loses its core stalls every other thread of the step at the next barrier.
    """
    cores = usable_cores()
    if getattr(args, "threads", None):
        return args.threads, "--threads"
    workers = getattr(args, "workers_here", None)
    if workers:
        return max(1, cores // workers), f"{cores} cores / {workers} worker{'s' if workers > 1 else ''} (--workers-here)"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "$OMP_NUM_THREADS"
    workers = len(worker_pids() - {os.getpid()}) + 1
    return max(1, cores // workers), f"{cores} cores / {workers} SegSweep worker{'s' if workers > 1 else ''} here"


def apply_threads(args: argparse.Namespace) -> str:
    """Set torch's thread count as choose_threads says; args.threads is then the number used.

    Returns a short description for the job's start-up lines, e.g. "1 torch thread (2 cores /
    2 SegSweep workers here)".
    """
    import torch

    threads, why = choose_threads(args)
    torch.set_num_threads(threads)
    args.threads = threads
    return f"{threads} torch thread{'s' if threads > 1 else ''} ({why})"


def describe(config: dict[str, Any]) -> str:
    """key=value pairs on one line, for the effective configuration printed at start."""
    return " ".join(f"{k}={v}" for k, v in config.items())
