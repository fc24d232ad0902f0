"""`python -m jobs.sweep`: which learning rate, loss mix and augmentation make each
architecture best, and on which test images does each still fail.

One Optuna study per architecture, same space and time budget for each, trial 0 the lab
reports' configuration. The budget goes where it buys quality (jobs/schedule.py): configurations
start short and the promising ones are promoted to longer training, continuing where they
paused; then the best one by validation dice is trained once more, longer (the refit), and
that is the architecture's result. Optuna's storage is the results database itself, so
running the same command again continues the sweep, and several workers (processes or
machines) pointed at one database share one budget.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError
from tqdm.auto import tqdm

from core.data.augment import AugmentConfig
from core.data.dataset import PreparedDataset
from core.data.sources import SYNTHETIC_IMAGES
from core.metrics import spread
from core.models import available_models
from core.models.pretrained import fixed_width
from core.store.db import (
    Store,
    StoreError,
    display_url,
    normalize_url,
    retry_schema_race,
    sqlite_path,
)
from core.store import selection
from core.store.optuna_storage import optuna_storage
from core.training.loop import EndTraining, StopTraining, TrainConfig, step_seconds
from core.training import trial as liveness  # HEARTBEAT_S, STALE_AFTER_S: read when used, so tests may change them
from core.training.trial import TrialOutcome, run_trial
from jobs import budget, cli, lifecycle, schedule
from jobs.search_space import PRETRAINED_STARTING_POINTS, SpaceError, load_space, starting_points, suggest

PROG = "jobs.sweep"
DEFAULT_ARCHS = ("unet", "resnet34_unet")

# timeout: seconds of training for the whole sweep (split evenly between architectures);
# epochs: a search trial's full length, the last rung; min_epochs: the first rung; trials: the
# most configurations sampled per architecture. Measured choices (docs/sweep.md, "Presets"; benchmarks/quality.py).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(timeout=250.0, trials=100, epochs=18, min_epochs=2, image_size=64, width="auto", batch_size=8,
                  refit_members=2, synthetic_images=SYNTHETIC_IMAGES, compile=False),
    "full": dict(timeout=8 * 3600.0, trials=300, epochs=36, min_epochs=4, image_size=256, width=1.0, batch_size=16,
                 refit_members=1, synthetic_images=4000, compile=True),
}
REFIT_SHARE = 0.5      # of each architecture's budget, kept for the refit


class SurplusTrial(Exception):
    """This trial was asked for after the shared budget filled up; it is dropped."""


class TrialFailed(Exception):
    """The trial ran but failed (e.g. diverged); recorded in the store with its reason."""


class PausedAtRung(StopTraining, optuna.TrialPruned):
    """Successive halving stopped the trial at a rung; its state is kept for a later promotion."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma-separated architectures")
    p.add_argument("--name", default=None, help="sweep name; studies are <name>/<arch> (default from data and size)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                   help="quick: minutes on a CPU; full: the reports' regime (256 px, full width) for a GPU")
    p.add_argument("--timeout", type=cli.positive_float, default=None,
                   help="seconds of training for the whole sweep, all workers together (preset: quick 250)")
    p.add_argument("--trials", type=cli.positive_int, default=None,
                   help="most configurations sampled per architecture (the time budget usually ends the search first)")
    p.add_argument("--min-epochs", type=cli.positive_int, default=None,
                   help="epochs before a configuration is first compared (the first rung)")
    p.add_argument("--refit-share", type=cli.probability, default=REFIT_SHARE,
                   help="share of each architecture's budget for the refit of its best configuration (0: no refit)")
    p.add_argument("--refit-members", type=cli.positive_int, default=None,
                   help="the refit trains an ensemble of up to this many networks, as many as its budget affords "
                        "at full length each (preset: quick 2, full 1)")
    p.add_argument("--pruner", choices=("asha", "median", "hyperband", "none"), default="asha",
                   help="asha: successive halving with promotion (default); median/hyperband: Optuna's pruners")
    p.add_argument("--space", default=None, help="TOML file replacing parts of the search space")
    p.add_argument("--keep-checkpoints", choices=("best", "all", "none"), default="best",
                   help="which trials' weights stay on disk: best (the result and, until the refit, the weights it may "
                        "start from), all, or none but the result; each architecture's result is always kept, for "
                        "jobs.predict and jobs.export")
    cli.add_size_args(p, epochs=None, image=None, width=None, batch=None, auto_width=True)
    cli.add_encoder_args(p)
    cli.add_data_args(p)
    cli.add_threads_arg(p)
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in available_models()]
    if not archs or unknown:
        p.error(f"unknown architecture {', '.join(unknown) or '(none)'}; choose from {', '.join(available_models())}")
    args.archs = list(dict.fromkeys(archs))
    preset = PRESETS[args.preset]
    for key in ("timeout", "trials", "epochs", "min_epochs", "image_size", "width", "batch_size", "refit_members"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.min_epochs = min(args.min_epochs, args.epochs)
    args.compile = args.compile or preset["compile"] and _has_cuda()
    cli.check_data_root(p, args)
    try:
        args.space_def = load_space(args.space)
    except SpaceError as exc:
        p.error(str(exc))
    args.encoder = {arch: cli.encoder_weights(PROG, arch, args.encoder_weights) for arch in args.archs}
    return args


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- Optuna plumbing -----------------------------------------------------------------

def make_pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner for --pruner; 'asha' decides in jobs/schedule.py instead (see there why)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs))
    return optuna.pruners.NopPruner()


def sweep_settings(args: argparse.Namespace, data: PreparedDataset) -> dict[str, Any]:
    """What must stay the same for a study to be continued rather than mixed up."""
    return dict(dataset=data.name, image_size=args.image_size, epochs=args.epochs, min_epochs=args.min_epochs,
                width=args.width, batch_size=args.batch_size, seed=args.seed)


def open_study(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any], space: dict,
               seed: int, pruner: optuna.pruners.BasePruner, max_trials: int, pretrained: bool = False) -> optuna.Study:
    """Create the study (starting with the reports' baseline as trial 0, then the recipes: those for a
    pretrained encoder when `pretrained`) or continue it."""
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
    elif any(k in stored and stored[k] != v for k, v in settings.items()):  # keys added later: no conflict
        diff = ", ".join(f"{k} {stored.get(k)} -> {v}" for k, v in settings.items() if k in stored and stored[k] != v)
        raise StoreError(f"sweep study {name!r} already exists with other settings ({diff}); "
                         f"use --name to start a new sweep, or the same flags to continue it")
    if not study.get_trials(deepcopy=False):
        for i, point in enumerate(starting_points(space, pretrained)[:max_trials]):
            study.enqueue_trial(point, user_attrs={budget.START: i, **({budget.BASELINE: True} if i == 0 else {})})
    n_trials = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed + n_trials, n_startup_trials=5, constant_liar=True)
    return study


# -- one worker ----------------------------------------------------------------------

class Worker:
    """Runs trials of every architecture in turn until each has spent its budget and has its refit.

    It asks Optuna, trains and records; every decision (what next, whether a trial may train or
    goes on after an epoch, the refit's plan and start, which checkpoints stay) is jobs.schedule's,
    asked with plain data gathered here (trial records, seconds spent, files on disk).
    """

    def __init__(self, args: argparse.Namespace, store: Store, data: PreparedDataset, image_ids: dict[str, int]):
        self.args, self.store, self.data, self.image_ids = args, store, data, image_ids
        self.storage = retry_schema_race(lambda: optuna_storage(args.db, engine=store.engine))
        self.settings = sweep_settings(args, data)
        self.studies: dict[str, optuna.Study] = {}
        for arch in args.archs:
            self.studies[arch] = open_study(self.storage, f"{args.name}/{arch}", self.settings, args.space_def,
                                            args.seed, make_pruner(args.pruner, args.epochs), args.trials,
                                            pretrained=args.encoder[arch] != "none")
        self.checkpoint_dir = checkpoint_root(args.db) / args.name
        self.ladder = schedule.Ladder.geometric(args.min_epochs, args.epochs)
        self.budget = budget.Budget(args.timeout / len(args.archs), args.refit_share, args.trials)
        self.widths = {arch: self.width_of(arch) for arch in args.archs}
        self.outcomes: list[tuple[str, int, TrialOutcome]] = []
        self.notes: dict[tuple[str, int], str] = {}  # what a trial was queued for, shown in its line
        self._first_sign: dict[tuple[str, int], Any] = {}  # running (study, number) -> sign of life when first seen

    def width_of(self, arch: str) -> float:
        """--width, or for 'auto' the width this study chose when it started (kept for every worker
        and rerun; jobs.schedule.auto_width chooses it by the measured time of a training step here)."""
        if (fixed := fixed_width(arch, self.args.encoder[arch])) is not None:
            return fixed
        if self.args.width != "auto":
            return float(self.args.width)
        study = self.studies[arch]
        if "width" in study.user_attrs:
            return float(study.user_attrs["width"])
        a = self.args
        batches = max(1, len(self.data.indices("train")) // a.batch_size)

        def epoch_seconds(width: float) -> float:
            probe = TrainConfig(arch=arch, width=width, image_size=a.image_size, batch_size=a.batch_size,
                                device=a.device, amp=a.amp)
            return 1.25 * batches * step_seconds(probe)  # + validation and data loading

        width, epoch_s = schedule.auto_width(self.budget.seconds, a.refit_members, epoch_seconds)
        tqdm.write(f"{PROG}: {arch} width {width:g} (an epoch takes about {epoch_s:.1f} s here; "
                   f"the budget affords {self.budget.seconds / epoch_s:.0f})")
        study.set_user_attr("width", width)
        return width

    # what the studies and the disk hold, as plain data for jobs.schedule
    def trials(self, arch: str) -> list[budget.Trial]:
        return [budget.Trial.of(t) for t in self.studies[arch].get_trials(deepcopy=False)]

    def spent(self, arch: str) -> float:
        """Seconds this architecture's trials have used, every worker's together."""
        return self.store.trial_seconds(self.studies[arch].study_name)

    def state_path(self, arch: str, config: int) -> Path:
        """Where a paused configuration's resumable state waits for a promotion."""
        return self.checkpoint_dir / arch / "paused" / f"config-{config}.pt"

    def paused(self, arch: str) -> set[int]:
        """The configurations whose resumable state is on disk."""
        return {int(p.stem.removeprefix("config-")) for p in self.state_path(arch, 0).parent.glob("config-*.pt")}

    def configs(self, arch: str) -> list[schedule.Config]:
        return schedule.configs(self.trials(arch), self.paused(arch))

    def plan(self, arch: str) -> bool:
        """Queue what jobs.schedule.next_step says this architecture needs next; False when there
        is nothing for this worker to run."""
        trials = self.trials(arch)
        step = schedule.next_step(trials, self.ladder, self.budget, self.spent(arch), self.paused(arch),
                                  asha=self.args.pruner == "asha")
        if step is None or step.kind == "queued":
            return step is not None
        config = step.config
        assert config is not None
        first = next(t for t in trials if t.number == config.number)
        if step.kind == "promote":
            attrs = {budget.RESUME_OF: config.number, budget.RESUME_AT: config.epochs_done}
        else:
            attrs = self.refit_attrs(arch, trials, config)
        self.studies[arch].enqueue_trial(first.params, user_attrs=attrs)
        return True

    def refit_attrs(self, arch: str, trials: list[budget.Trial], config: schedule.Config) -> dict[str, Any]:
        """The queued refit's marks: its length and members (schedule.refit_plan) and the weights
        it starts from (schedule.refit_start), from the store's record of where the search ended."""
        members, epochs = schedule.refit_plan(self.budget, self.spent(arch), schedule.pace(trials, config.number),
                                              config.epochs_done + 1, self.ladder, self.args.refit_members)
        last = schedule.last_trial(trials, config.number)
        row = next((r for r in self.store.study_trials(self.studies[arch].study_name) if r["number"] == last), None)
        kept = (self.args.keep_checkpoints != "none" and row is not None and row["state"] == "complete"
                and row["checkpoint"] and Path(row["checkpoint"]).is_file())
        start = schedule.refit_start(self.ladder, members, epochs, config, last, str(self.state_path(arch, config.number)),
                                     row["checkpoint"] if kept else None)  # type: ignore[index]
        attrs = {budget.REFIT_OF: config.number, budget.REFIT_EPOCHS: epochs, budget.REFIT_MEMBERS: members}
        return attrs if start is None else {**attrs, budget.REFIT_INIT: list(start)}

    def sync(self, arch: str) -> None:
        """Optuna's view of the study made to agree with the store (jobs/lifecycle.py), lost trials queued again."""
        lost, told = lifecycle.sync(self.studies[arch], self.store, liveness.STALE_AFTER_S, dataset=self.data.name,
                                    image_size=self.args.image_size)
        for number in lost:
            self.remove_checkpoint(arch, number)
            tqdm.write(f"{PROG}: {arch} trial {number} lost its worker; queued again")
        for number, state in told:
            tqdm.write(f"{PROG}: {arch} trial {number} was recorded as {state} by a worker that "
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
        """Running trials whose sign of life (jobs/lifecycle.py) this worker has not yet seen advance."""
        unproven = 0
        for arch in self.args.archs:
            name = self.studies[arch].study_name
            for number, sign in lifecycle.last_signs(self.studies[arch], self.store).items():
                if self._first_sign.setdefault((name, number), sign) == sign:
                    unproven += 1
        return unproven

    # one trial
    def run_one(self, arch: str) -> None:
        """Ask Optuna for a trial, run it, and tell Optuna how it ended, unless another worker
        already has (it took the trial for dead while this worker was only slow)."""
        study = self.studies[arch]
        trial = study.ask()
        value, state = None, TrialState.FAIL
        try:
            value, state = self.objective(arch, trial), None  # None: complete, unless the value is not a number
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except (SurplusTrial, TrialFailed):
            pass
        finally:  # Ctrl-C too: the store row says interrupted, and the next sync queues it again
            study.tell(trial, value, state=state, skip_if_finished=True)

    def objective(self, arch: str, trial: optuna.Trial) -> float:
        """Train one configuration: a new one, a promoted one continuing, or the refit."""
        study = self.studies[arch]
        trials = self.trials(arch)
        me = next(t for t in trials if t.number == trial.number)
        if not schedule.admitted(trial.number, trials, self.budget, self.spent(arch)):
            trial.set_user_attr(budget.SURPLUS, True)
            raise SurplusTrial()
        refit_of, resume_of = me.user_attrs.get(budget.REFIT_OF), me.user_attrs.get(budget.RESUME_OF)
        p = suggest(trial, self.args.space_def)
        config = schedule.root(me)
        epochs = int(me.user_attrs.get(budget.REFIT_EPOCHS, self.ladder.epochs))
        cfg = self.config(arch, p, epochs, members=int(me.user_attrs.get(budget.REFIT_MEMBERS, 1)))
        extra: dict[str, Any] = {"min_epochs": self.ladder.rungs[0]} if refit_of is None else {}
        resume_from = continues = init_from = None
        if refit_of is not None:
            extra[selection.REFIT_OF] = refit_of
            start = me.user_attrs.get(budget.REFIT_INIT)
            if start is not None and Path(start[1]).is_file():  # gone only if removed by hand: then fresh weights
                init_from, extra[selection.INIT_FROM] = Path(start[1]), int(start[0])
        if resume_of is not None:
            resume_at = int(me.user_attrs[budget.RESUME_AT])
            paused = schedule.paused_trial(trials, trial.number, config)
            extra[selection.RESUMED_FROM] = paused.number
            resume_from = self.state_path(arch, config)
            continues = next(((r["id"], resume_at) for r in self.store.study_trials(study.study_name)
                              if r["number"] == paused.number), None)
            for epoch, value in sorted(paused.intermediate_values.items()):
                if epoch < resume_at:
                    trial.report(value, epoch)  # one configuration, one curve, for the rung comparisons
        pausing = refit_of is None and self.args.pruner == "asha"
        if refit_of is not None:
            self.notes[(arch, trial.number)] = f"{selection.chosen_as(cfg.params() | extra)}, {epochs} epochs"
        elif resume_of is not None:
            self.notes[(arch, trial.number)] = f"promoted: trial {config} continues from epoch {resume_at}"

        def on_epoch(stats) -> None:
            trial.report(stats.val_dice, stats.epoch)
            verdict = schedule.epoch_verdict(self.budget, self.spent(arch), self.ladder, refit=refit_of is not None,
                                             epochs_done=stats.epoch + 1, epochs=cfg.epochs,
                                             epoch_seconds=stats.seconds, pruned=trial.should_prune,
                                             configs=(lambda: self.configs(arch)) if pausing else None, config=config)
            if verdict == "end":
                raise EndTraining()
            if verdict in ("stop", "prune"):
                raise optuna.TrialPruned()
            if verdict == "pause":
                raise PausedAtRung()

        ckpt = self.checkpoint_dir / arch / f"trial-{trial.number}.pt"  # any trial may become the result: all are written
        started = time.perf_counter()
        try:
            outcome = run_trial(self.store, cfg, self.data, self.image_ids, sweep=self.args.name,
                                study=study.study_name, number=trial.number, on_epoch=on_epoch,
                                checkpoint_path=ckpt, progress=False, log=tqdm.write, extra_params=extra,
                                pause_to=self.state_path(arch, config) if pausing else None,
                                resume_from=resume_from, init_from=init_from, continues=continues)
        except optuna.TrialPruned as exc:
            seen = study.get_trials(deepcopy=False)[trial.number].intermediate_values
            note = f"paused at epoch {max(seen) + 1}" if isinstance(exc, PausedAtRung) else None
            self.outcomes.append((arch, trial.number, TrialOutcome(
                -1, "pruned", max(seen.values()) if seen else None, None, len(seen), time.perf_counter() - started,
                error=note)))
            raise
        except Exception as exc:  # recorded as failed by run_trial; the sweep goes on
            self.outcomes.append((arch, trial.number, TrialOutcome(
                -1, "failed", None, None, 0, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")))
            raise TrialFailed(str(exc)) from exc
        self.outcomes.append((arch, trial.number, outcome))
        if outcome.state != "complete":
            raise TrialFailed(outcome.error or "failed")
        with contextlib.suppress(OSError):  # trained to the end: never resumed again
            self.state_path(arch, config).unlink(missing_ok=True)
        if refit_of is not None:
            shutil.rmtree(self.state_path(arch, 0).parent, ignore_errors=True)  # the search is over
        self.prune_checkpoints(arch)
        return float(outcome.val_dice)

    def config(self, arch: str, p: dict[str, int | float], epochs: int, members: int = 1) -> TrainConfig:
        a = self.args
        pretrained = a.encoder[arch] != "none"  # the encoder knobs shape a pretrained encoder's training only
        aug_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
        augment = AugmentConfig(**{k: v for k, v in p.items() if k in aug_fields})
        return TrainConfig(arch=arch, width=self.widths[arch], members=members, image_size=a.image_size, epochs=epochs,
                           batch_size=a.batch_size, lr=p["lr"], bce_weight=1.0 - p["dice_weight"],
                           dice_weight=p["dice_weight"], augment=augment, device=a.device, amp=a.amp,
                           compile=a.compile, seed=a.seed, encoder_weights=a.encoder[arch],
                           encoder_lr=a.encoder_lr if pretrained else 1.0, freeze_epochs=a.freeze_epochs if pretrained else 0)

    def prune_checkpoints(self, arch: str) -> None:
        """Only the files schedule.kept_checkpoints names stay: the architecture's result always (jobs.predict
        and jobs.export use it) and, with --keep-checkpoints best, until the refit has run, the weights it may
        start from; `all` removes nothing."""
        if self.args.keep_checkpoints == "all":
            return
        rows = self.store.study_trials(self.studies[arch].study_name)
        source = None
        if self.args.keep_checkpoints == "best":
            source = schedule.refit_source(self.trials(arch), self.ladder, self.budget, self.paused(arch))
        kept = schedule.kept_checkpoints(rows, source)
        for r in rows:
            if kept and r["id"] not in kept and r["checkpoint"]:
                Path(r["checkpoint"]).unlink(missing_ok=True)
                self.store.set_checkpoint(r["id"], None)

    def run(self) -> None:
        """Round-robin over architectures, one trial at a time, until each has its result."""
        args = self.args
        bar = tqdm(desc="sweep", unit="trial", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
        waiting_since, said = None, False
        while True:
            progressed = False
            for arch in args.archs:
                self.sync(arch)
                if not self.plan(arch):
                    continue
                before = len(self.outcomes)
                self.run_one(arch)
                progressed = True  # even a dropped surplus or duplicate trial: plan again
                if len(self.outcomes) > before:
                    self.report(*self.outcomes[-1])
                    bar.update(1)
            if progressed:
                waiting_since = None
                continue
            # Nothing to run, but trials may still be running elsewhere. One whose heartbeat
            # advances belongs to a live worker, which will finish it (and what follows it). One
            # whose heartbeat stays silent (or that has no store row at all) belongs to a worker that
            # probably died, perhaps killed just before this command started: wait until it is stale
            # and queued again, then run it here. So running the same command again after a crash
            # always completes the sweep.
            if self.unproven_running():
                waiting_since = waiting_since or time.monotonic()
                if not said and time.monotonic() - waiting_since > 2 * liveness.HEARTBEAT_S:
                    tqdm.write(f"{PROG}: a running trial's heartbeat is silent (its worker probably died); "
                               f"it is retried here once silent for {liveness.STALE_AFTER_S:g} s")
                    said = True
                time.sleep(min(2.0, liveness.HEARTBEAT_S / 2))
                continue
            break
        bar.close()

    def report(self, arch: str, number: int, o: TrialOutcome) -> None:
        val = f"{o.val_dice:.4f}" if o.val_dice is not None else "-"
        test = f"{o.test_dice:.4f}" if o.test_dice is not None else "-"
        notes = [n for n in (self.notes.get((arch, number)), o.error.splitlines()[0] if o.error else None) if n]
        extra = f"  ({'; '.join(notes)})" if notes else ""
        tqdm.write(f"{arch:>14} trial {number:>3}  {o.state:<8}  val dice {val}  test dice {test}  "
                   f"{o.seconds:6.1f} s{extra}")


def describe_space(space: dict) -> str:
    return ", ".join(f"{k}={v}" if not hasattr(v, "low") else f"{k}[{v.low:g}..{v.high:g}{' log' if v.log else ''}]"
                     for k, v in space.items())


def checkpoint_root(db: str) -> Path:
    """Checkpoints sit in a folder beside a SQLite database, else under ./checkpoints."""
    path = sqlite_path(normalize_url(db))
    return (path.parent if path else Path.cwd()) / "checkpoints"


def default_name(data: PreparedDataset, image_size: int) -> str:
    return f"{data.root.name}-{image_size}px"


def summary_table(store: Store, name: str, archs: list[str]) -> list[str]:
    """The closing table: each architecture's result (core.store.selection) with its parameters and dice spread."""
    lines = [f"{'arch':<14} {'trial':>5} {'epochs':>6} {'val':>7} {'test mean':>9} {'median':>7} {'p10':>7}  params"]
    for arch in archs:
        rows = store.study_trials(f"{name}/{arch}")
        best = selection.best_trial(rows)
        if best is None:
            lines.append(f"{arch:<14} {'-':>5}  no complete trial yet")
            continue
        s = spread(store.test_dice_of(best["id"]))
        p = best["params"]
        shown = (f"lr={p['lr']:.2e} bce={p['bce_weight']:.2f} dice={p['dice_weight']:.2f} "
                 f"hflip={p['aug_hflip']:.2f} rot={p['aug_rotate']:g} bright={p['aug_brightness']:.2f}")
        if selection.is_refit(p):
            shown = f"{selection.chosen_as(p)}: {shown}"
        lines.append(f"{arch:<14} {best['number']:>5} {best['epochs_run']:>6} {best['val_dice']:>7.4f} "
                     f"{s['mean']:>9.4f} {s['median']:>7.4f} {s['p10']:>7.4f}  {shown}")
        searched = [r for r in rows if not selection.is_refit(r["params"])]
        lines.append(f"{'':<14} {len(searched)} search trials, {sum(r['epochs_run'] for r in searched)} epochs; "
                     f"{store.trial_seconds(f'{name}/{arch}'):.0f} s of training in all")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.apply_threads(args)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        store, data, image_ids = cli.open_job(PROG, args, args.image_size,
                                              synthetic_images=PRESETS[args.preset]["synthetic_images"])
        args.name = args.name or default_name(data, args.image_size)
        print(f"{PROG}: sweep {args.name!r} on {data.name} ({len(data.indices('train'))} train / "
              f"{len(data.indices('val'))} val / {len(data.indices('test'))} test images) -> {display_url(store.url)}")
        print(f"{PROG}: preset={args.preset} archs={','.join(args.archs)} trials={args.trials} per arch "
              f"epochs={args.epochs} image_size={args.image_size} width={args.width} batch_size={args.batch_size} "
              f"pruner={args.pruner} device={args.device} amp={args.amp} compile={args.compile} seed={args.seed} "
              f"keep_checkpoints={args.keep_checkpoints} timeout={args.timeout:g} s min_epochs={args.min_epochs} "
              f"refit_share={args.refit_share:g} refit_members={args.refit_members}")
        print(f"{PROG}: search space: " + describe_space(args.space_def))
        for arch, weights in args.encoder.items():
            if weights != "none":
                print(f"{PROG}: {arch} starts from {weights} encoder weights (encoder lr x{args.encoder_lr:g}"
                      f"{f', frozen for {args.freeze_epochs} epochs' if args.freeze_epochs else ''}; "
                      f"its third start: lr {PRETRAINED_STARTING_POINTS[2]['lr']:g})")
        with cli.one_line_errors(PROG, args.db):
            Worker(args, store, data, image_ids).run()
            table = summary_table(store, args.name, args.archs)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished trials are kept, the interrupted one runs again when you run the "
              f"same command", file=sys.stderr)
        return 130
    print()
    for line in table:
        print(line)
    print(f"\n{PROG}: done in {time.monotonic() - started:.0f} s. Open the dashboard:\n"
          f"  {cli.dashboard_command(store.url)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::optuna.exceptions.ExperimentalWarning")
    sys.exit(main())
