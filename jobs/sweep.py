"""`python -m jobs.sweep`: which learning rate, loss mix and augmentation make each
architecture best, and on which test images does each still fail.

One Optuna study per architecture, same space and budget for each, trial 0 the lab reports'
configuration. Optuna's storage is the results database itself, so running the same command
again continues the sweep, and several workers (processes or machines) pointed at one
database share one budget.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, OperationalError
from tqdm.auto import tqdm

from core.data.augment import AugmentConfig
from core.data.dataset import DataError, PreparedDataset
from core.data.download import DownloadError
from core.data.sources import load_data
from core.models import available_models
from core.store.db import (
    Store,
    StoreError,
    display_url,
    normalize_url,
    retry_schema_race,
    sqlite_path,
)
from core.store.optuna_storage import optuna_storage
from core.training.loop import TrainConfig
from core.training.trial import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    TrialOutcome,
    register,
    run_trial,
)
from jobs import budget, cli
from jobs.search_space import SpaceError, baseline_for, load_space, suggest

PROG = "jobs.sweep"
DEFAULT_ARCHS = ("unet", "resnet34_unet")

# Sized so the default command, data preparation included, runs in about 5 minutes on a
# 2-core CPU with at least two complete trials per architecture (README has the timings).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(trials=3, epochs=6, image_size=64, width=0.25, batch_size=16, synthetic_images=600, compile=False),
    "full": dict(trials=30, epochs=60, image_size=256, width=1.0, batch_size=16, synthetic_images=4000, compile=True),
}


DEAD_WORKER = "worker stopped during the trial (heartbeat lost); retried"


class SurplusTrial(Exception):
    """This trial was asked for after the shared budget filled up; it is dropped."""


class TrialFailed(Exception):
    """The trial ran but failed (e.g. diverged); recorded in the store with its reason."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma-separated architectures")
    p.add_argument("--name", default=None, help="sweep name; studies are <name>/<arch> (default from data and size)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                   help="quick: minutes on a CPU; full: the reports' regime (256 px, full width) for a GPU")
    p.add_argument("--trials", type=cli.positive_int, default=None, help="trial budget per architecture")
    p.add_argument("--timeout", type=cli.positive_float, default=None, help="stop starting trials after this many s")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    p.add_argument("--space", default=None, help="TOML file replacing parts of the search space")
    p.add_argument("--keep-checkpoints", choices=("best", "all", "none"), default="best")
    cli.add_size_args(p, epochs=None, image=None, width=None, batch=None)
    cli.add_data_args(p)
    cli.add_threads_arg(p)
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in available_models()]
    if not archs or unknown:
        p.error(f"unknown architecture {', '.join(unknown) or '(none)'}; choose from {', '.join(available_models())}")
    args.archs = list(dict.fromkeys(archs))
    preset = PRESETS[args.preset]
    for key in ("trials", "epochs", "image_size", "width", "batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.compile = args.compile or preset["compile"] and _has_cuda()
    if args.data_root is not None and args.data != "synthetic" and not Path(args.data_root).expanduser().exists():
        p.error(f"--data-root {args.data_root} does not exist")
    try:
        args.space_def = load_space(args.space)
    except SpaceError as exc:
        p.error(str(exc))
    return args


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- Optuna plumbing -----------------------------------------------------------------

def make_pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs))
    return optuna.pruners.NopPruner()


def sweep_settings(args: argparse.Namespace, data: PreparedDataset) -> dict[str, Any]:
    """What must stay the same for a study to be continued rather than mixed up."""
    return dict(dataset=data.name, image_size=args.image_size, epochs=args.epochs, width=args.width,
                batch_size=args.batch_size, seed=args.seed)


def open_study(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any], space: dict,
               seed: int, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study (with the reports' baseline as trial 0) or continue it."""
    for attempt in range(5):
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        load_if_exists=True, pruner=pruner)
            break
        except (OperationalError, optuna.exceptions.DuplicatedStudyError):
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        diff = ", ".join(f"{k} {stored.get(k)} -> {v}" for k, v in settings.items() if stored.get(k) != v)
        raise StoreError(f"sweep study {name!r} already exists with other settings ({diff}); "
                         f"use --name to start a new sweep, or the same flags to continue it")
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(baseline_for(space), user_attrs={budget.BASELINE: True})
    n_trials = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed + n_trials, n_startup_trials=5, constant_liar=True)
    return study


# -- one worker ----------------------------------------------------------------------

class Worker:
    """Runs trials of every architecture in turn until each study's budget is used."""

    def __init__(self, args: argparse.Namespace, store: Store, data: PreparedDataset, image_ids: dict[str, int]):
        self.args, self.store, self.data, self.image_ids = args, store, data, image_ids
        self.storage = retry_schema_race(lambda: optuna_storage(args.db, engine=store.engine))
        self.settings = sweep_settings(args, data)
        self.studies: dict[str, optuna.Study] = {}
        for arch in args.archs:
            self.studies[arch] = open_study(self.storage, f"{args.name}/{arch}", self.settings, args.space_def,
                                            args.seed, make_pruner(args.pruner, args.epochs))
        self.checkpoint_dir = checkpoint_root(args.db) / args.name
        self.outcomes: list[tuple[str, int, TrialOutcome]] = []
        self._first_beat: dict[int, Any] = {}  # running trial id -> heartbeat when first seen

    # budget bookkeeping
    def trials(self, arch: str) -> list:
        return self.studies[arch].get_trials(deepcopy=False)

    def open_slots(self, arch: str) -> int:
        trials = self.trials(arch)
        waiting = sum(t.state == TrialState.WAITING for t in budget.counted(trials))
        return budget.remaining(trials, self.args.trials) + waiting

    def done(self, arch: str) -> int:
        return len(budget.finished(self.trials(arch)))

    def sync_dead_trials(self, arch: str) -> None:
        """Trials whose worker died (no heartbeat) end as failed and are queued again once."""
        study = self.studies[arch]
        claimed = self.store.claim_stale(study.study_name, STALE_AFTER_S, DEAD_WORKER)
        if claimed:
            by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
            for row in claimed:
                self.remove_checkpoint(arch, row["number"])
                dead = by_number.get(row["number"])
                if dead is None or dead.state != TrialState.RUNNING:
                    continue
                self.fail_and_retry(study, dead)
                tqdm.write(f"{PROG}: {arch} trial {dead.number} lost its worker; queued again")
        self.sync_recorded_trials(arch)

    def fail_and_retry(self, study: optuna.Study, dead: optuna.trial.FrozenTrial) -> None:
        self.storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        retry(study, study.get_trials(deepcopy=False)[dead.number])

    def sync_recorded_trials(self, arch: str) -> None:
        """A worker that died after closing its trial in the store, before telling Optuna, leaves
        the Optuna trial RUNNING for ever (and holding a budget slot). Once the store row has been
        closed for STALE_AFTER_S, Optuna is told what the store recorded."""
        study = self.studies[arch]
        running = {t.number: t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING}
        if not running:
            return
        cutoff = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=STALE_AFTER_S)
        for row in self.store.study_trials(study.study_name):
            t = running.get(row["number"])
            if t is None or row["state"] == "running" or row["finished_at"] is None or row["finished_at"] > cutoff:
                continue
            try:
                if row["state"] == "complete" and row["val_dice"] is not None:
                    self.storage.set_trial_user_attr(t._trial_id, "test_dice", row["test_dice"])
                    self.storage.set_trial_user_attr(t._trial_id, "trial_id", row["id"])
                    self.storage.set_trial_state_values(t._trial_id, TrialState.COMPLETE, [float(row["val_dice"])])
                elif row["state"] == "pruned":
                    self.storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
                elif row["error"] == DEAD_WORKER:  # claimed by a worker that died before retrying it
                    self.fail_and_retry(study, t)
                else:
                    self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker synced it first
            tqdm.write(f"{PROG}: {arch} trial {t.number} was recorded as {row['state']} by a worker that "
                       f"stopped before telling Optuna; synced")

    def remove_checkpoint(self, arch: str, number: int) -> None:
        """A dead trial's weights (complete or half-written) are of no use."""
        path = self.checkpoint_dir / arch / f"trial-{number}.pt"
        for leftover in (path, path.with_name(path.name + ".tmp")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass

    def unproven_running(self) -> int:
        """Running trials of other workers whose heartbeat this worker has not yet seen advance."""
        unproven = 0
        for arch in self.args.archs:
            for trial_id, beat in self.store.running_heartbeats(self.studies[arch].study_name).items():
                if self._first_beat.setdefault(trial_id, beat) == beat:
                    unproven += 1
        return unproven

    # one trial
    def objective(self, arch: str, trial: optuna.Trial) -> float:
        study = self.studies[arch]
        if not budget.fits(trial.number, study.get_trials(deepcopy=False), self.args.trials):
            trial.set_user_attr(budget.SURPLUS, True)
            raise SurplusTrial()
        p = suggest(trial, self.args.space_def)
        cfg = self.config(arch, p)

        def on_epoch(stats) -> None:
            trial.report(stats.val_dice, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        ckpt = None if self.args.keep_checkpoints == "none" else self.checkpoint_dir / arch / f"trial-{trial.number}.pt"
        started = time.perf_counter()
        try:
            outcome = run_trial(self.store, cfg, self.data, self.image_ids, sweep=self.args.name,
                                study=study.study_name, number=trial.number, on_epoch=on_epoch,
                                checkpoint_path=ckpt, progress=False, log=tqdm.write)
        except optuna.TrialPruned:
            seen = list(trial.storage.get_trial(trial._trial_id).intermediate_values.values())
            self.outcomes.append((arch, trial.number, TrialOutcome(
                -1, "pruned", max(seen) if seen else None, None, len(seen), time.perf_counter() - started)))
            raise
        except Exception as exc:  # recorded as failed by run_trial; the sweep goes on
            self.outcomes.append((arch, trial.number, TrialOutcome(
                -1, "failed", None, None, 0, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")))
            raise TrialFailed(str(exc)) from exc
        self.outcomes.append((arch, trial.number, outcome))
        if outcome.state != "complete":
            raise TrialFailed(outcome.error or "failed")
        trial.set_user_attr("test_dice", outcome.test_dice)
        trial.set_user_attr("trial_id", outcome.trial_id)
        self.prune_checkpoints(arch)
        return float(outcome.val_dice)

    def config(self, arch: str, p: dict[str, float]) -> TrainConfig:
        a = self.args
        aug_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
        augment = AugmentConfig(**{k: (int(v) if k == "rotate" else v) for k, v in p.items() if k in aug_fields})
        return TrainConfig(arch=arch, width=a.width, image_size=a.image_size, epochs=a.epochs,
                           batch_size=a.batch_size, lr=p["lr"], bce_weight=1.0 - p["dice_weight"],
                           dice_weight=p["dice_weight"], augment=augment, device=a.device, amp=a.amp,
                           compile=a.compile, seed=a.seed)

    def prune_checkpoints(self, arch: str) -> None:
        """--keep-checkpoints best: only the best complete trial of the study keeps its file."""
        if self.args.keep_checkpoints != "best":
            return
        rows = [r for r in self.store.study_trials(f"{self.args.name}/{arch}") if r["state"] == "complete"]
        if not rows:
            return
        best = max(rows, key=lambda r: r["val_dice"] if r["val_dice"] is not None else -1)
        for r in rows:
            if r["id"] != best["id"] and r["checkpoint"]:
                Path(r["checkpoint"]).unlink(missing_ok=True)
                self.store.set_checkpoint(r["id"], None)

    def run(self) -> None:
        """Round-robin over architectures, one trial at a time, until budgets or --timeout run out."""
        args = self.args
        total = len(args.archs) * args.trials
        bar = tqdm(total=total, initial=min(total, sum(self.done(a) for a in args.archs)), desc="sweep",
                   unit="trial", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
        started = time.monotonic()
        waiting_since, said = None, False
        while True:
            if args.timeout and time.monotonic() - started > args.timeout:
                tqdm.write(f"{PROG}: --timeout {args.timeout:g} s reached; run the same command to continue")
                break
            progressed = False
            for arch in args.archs:
                self.sync_dead_trials(arch)
                if self.open_slots(arch) <= 0:
                    continue
                before = len(self.outcomes)
                study = self.studies[arch]
                study.optimize(lambda t, a=arch: self.objective(a, t), n_trials=1,
                               catch=(SurplusTrial, TrialFailed))
                if len(self.outcomes) > before:
                    progressed = True
                    self.report(*self.outcomes[-1])
                    bar.update(1)
            if progressed:
                waiting_since = None
                continue
            # Budgets look full, but trials may still be running elsewhere. One whose heartbeat
            # advances belongs to a live worker, which will finish it: nothing is left for us. One
            # whose heartbeat stays silent belongs to a worker that probably died (perhaps killed just
            # before this command started): wait until it is claimed as stale and queued again, then
            # run it here. So running the same command again after a crash always completes the sweep.
            if self.unproven_running():
                waiting_since = waiting_since or time.monotonic()
                if not said and time.monotonic() - waiting_since > 2 * HEARTBEAT_S:
                    tqdm.write(f"{PROG}: a running trial's heartbeat is silent (its worker probably died); "
                               f"it is retried here once silent for {STALE_AFTER_S:g} s")
                    said = True
                time.sleep(min(2.0, HEARTBEAT_S / 2))
                continue
            break
        bar.n = min(total, sum(self.done(a) for a in args.archs))
        bar.close()

    def report(self, arch: str, number: int, o: TrialOutcome) -> None:
        val = f"{o.val_dice:.4f}" if o.val_dice is not None else "-"
        test = f"{o.test_dice:.4f}" if o.test_dice is not None else "-"
        extra = f"  ({o.error.splitlines()[0]})" if o.error else ""
        tqdm.write(f"{arch:>14} trial {number:>3}  {o.state:<8}  val dice {val}  test dice {test}  "
                   f"{o.seconds:6.1f} s{extra}")


def checkpoint_root(db: str) -> Path:
    """Checkpoints sit in a folder beside a SQLite database, else under ./checkpoints."""
    path = sqlite_path(normalize_url(db))
    return (path.parent if path else Path.cwd()) / "checkpoints"


def default_name(data: PreparedDataset, image_size: int) -> str:
    return f"{data.root.name}-{image_size}px"


def summary_table(store: Store, name: str, archs: list[str]) -> list[str]:
    """The closing table: best trial per architecture with its parameters and dice spread."""
    lines = [f"{'arch':<14} {'trial':>5} {'val':>7} {'test mean':>9} {'median':>7} {'p10':>7}  params"]
    for arch in archs:
        rows = [r for r in store.study_trials(f"{name}/{arch}") if r["state"] == "complete"]
        if not rows:
            lines.append(f"{arch:<14} {'-':>5}  no complete trial yet")
            continue
        best = max(rows, key=lambda r: r["val_dice"])
        dice = store.test_dice_of(best["id"])
        p = best["params"]
        shown = (f"lr={p['lr']:.2e} bce={p['bce_weight']:.2f} dice={p['dice_weight']:.2f} "
                 f"hflip={p['aug_hflip']:.2f} rot={p['aug_rotate']:g} bright={p['aug_brightness']:.2f}")
        lines.append(f"{arch:<14} {best['number']:>5} {best['val_dice']:>7.4f} {dice.mean():>9.4f} "
                     f"{np.median(dice):>7.4f} {np.percentile(dice, 10):>7.4f}  {shown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.apply_threads(args)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        store = Store(args.db)
        data = load_data(args.data, args.data_root, args.image_size, seed=args.seed,
                         synthetic_images=PRESETS[args.preset]["synthetic_images"])
        image_ids = register(store, data)
        args.name = args.name or default_name(data, args.image_size)
        print(f"{PROG}: sweep {args.name!r} on {data.name} ({len(data.indices('train'))} train / "
              f"{len(data.indices('val'))} val / {len(data.indices('test'))} test images) -> {display_url(store.url)}")
        print(f"{PROG}: preset={args.preset} archs={','.join(args.archs)} trials={args.trials} per arch "
              f"epochs={args.epochs} image_size={args.image_size} width={args.width} batch_size={args.batch_size} "
              f"pruner={args.pruner} device={args.device} amp={args.amp} compile={args.compile} seed={args.seed} "
              f"keep_checkpoints={args.keep_checkpoints} timeout={args.timeout}")
        print(f"{PROG}: search space: " + ", ".join(
            f"{k}={v}" if not hasattr(v, "low") else f"{k}[{v.low:g}..{v.high:g}{' log' if v.log else ''}]"
            for k, v in args.space_def.items()))
        worker = Worker(args, store, data, image_ids)
        worker.run()
        table = summary_table(store, args.name, args.archs)
    except (DataError, DownloadError, StoreError) as exc:
        cli.user_error(PROG, str(exc))
    except DBAPIError as exc:  # the database went away, filled up or refused a write mid-sweep
        cli.user_error(PROG, cli.db_error(args.db, exc))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished trials are kept, run the same command to continue", file=sys.stderr)
        return 130
    print()
    for line in table:
        print(line)
    path = sqlite_path(store.url)
    target = str(path) if path else store.url
    print(f"\n{PROG}: done in {time.monotonic() - started:.0f} s. Open the dashboard:\n"
          f"  RESULTS_DB='{target}' streamlit run dashboard/Home.py")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::optuna.exceptions.ExperimentalWarning")
    sys.exit(main())
