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
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import OperationalError
from tqdm.auto import tqdm

from core.data.augment import AugmentConfig
from core.data.dataset import PreparedDataset
from core.metrics import spread
from core.models import available_models
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
from core.training.trial import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    TrialOutcome,
    run_trial,
)
from jobs import budget, cli, lifecycle, schedule
from jobs.search_space import SpaceError, load_space, starting_points, suggest

PROG = "jobs.sweep"
DEFAULT_ARCHS = ("unet", "resnet34_unet")

# timeout: seconds of training for the whole sweep (split evenly between architectures);
# epochs: a search trial's full length, the last rung; min_epochs: the first rung; trials: the
# most configurations sampled per architecture. Measured choices (README, benchmarks/quality.py).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(timeout=250.0, trials=100, epochs=18, min_epochs=2, image_size=64, width="auto", batch_size=8,
                  refit_members=2, synthetic_images=600, compile=False),
    "full": dict(timeout=8 * 3600.0, trials=300, epochs=36, min_epochs=4, image_size=256, width=1.0, batch_size=16,
                 refit_members=1, synthetic_images=4000, compile=True),
}
REFIT_SHARE = 0.5      # of each architecture's budget, kept for the refit
AUTO_WIDTHS = (1.0, 0.5, 0.25)  # --width auto: the first whose epochs the budget can afford enough of
AUTO_MIN_EPOCHS = 150  # epochs of training an architecture's budget must afford at that width, per refit member
ENSEMBLE_MIN_WIDTH = 0.5  # refit members never narrow --width auto below this (unet lost more at 0.25 than they gained)
REFIT_MAX_FACTOR = 8   # a refit trains at most this many times a search trial's full length
REFIT_MIN_FACTOR = 4   # and each member of an ensemble refit at least this many times


class SurplusTrial(Exception):
    """This trial was asked for after the shared budget filled up; it is dropped."""


class TrialFailed(Exception):
    """The trial ran but failed (e.g. diverged); recorded in the store with its reason."""


class PausedAtRung(StopTraining, optuna.TrialPruned):
    """Successive halving stopped the trial at a rung; its state is kept for a later promotion."""


REFIT_EPOCHS = "refit_epochs"  # user attribute of a queued refit: how long it trains
REFIT_MEMBERS = "refit_members"  # user attribute of a queued refit: how many networks it trains (an ensemble)
REFIT_INIT = "refit_init"  # user attribute of a queued refit: [trial, file] whose weights it starts from, if any


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
    p.add_argument("--keep-checkpoints", choices=("best", "all", "none"), default="best")
    cli.add_size_args(p, epochs=None, image=None, width=None, batch=None, auto_width=True)
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
               seed: int, pruner: optuna.pruners.BasePruner, max_trials: int) -> optuna.Study:
    """Create the study (starting with the reports' baseline as trial 0, then the recipes) or continue it."""
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
        for i, point in enumerate(starting_points(space)[:max_trials]):
            study.enqueue_trial(point, user_attrs={budget.START: i, **({budget.BASELINE: True} if i == 0 else {})})
    n_trials = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed + n_trials, n_startup_trials=5, constant_liar=True)
    return study


# -- one worker ----------------------------------------------------------------------

class Worker:
    """Runs trials of every architecture in turn until each has spent its budget and has its refit."""

    def __init__(self, args: argparse.Namespace, store: Store, data: PreparedDataset, image_ids: dict[str, int]):
        self.args, self.store, self.data, self.image_ids = args, store, data, image_ids
        self.storage = retry_schema_race(lambda: optuna_storage(args.db, engine=store.engine))
        self.settings = sweep_settings(args, data)
        self.studies: dict[str, optuna.Study] = {}
        for arch in args.archs:
            self.studies[arch] = open_study(self.storage, f"{args.name}/{arch}", self.settings, args.space_def,
                                            args.seed, make_pruner(args.pruner, args.epochs), args.trials)
        self.checkpoint_dir = checkpoint_root(args.db) / args.name
        self.ladder = schedule.Ladder.geometric(args.min_epochs, args.epochs)
        self.budget = schedule.Budget(args.timeout / len(args.archs), args.refit_share)
        self.widths = {arch: self.width_of(arch) for arch in args.archs}
        self.outcomes: list[tuple[str, int, TrialOutcome]] = []
        self.notes: dict[tuple[str, int], str] = {}  # what a trial was queued for, shown in its line
        self._first_sign: dict[tuple[str, int], Any] = {}  # running (study, number) -> sign of life when first seen

    def width_of(self, arch: str) -> float:
        """--width, or for 'auto' the width this study chose when it started (kept for every worker
        and rerun): the widest of AUTO_WIDTHS, down to ENSEMBLE_MIN_WIDTH, at which the
        architecture's budget affords AUTO_MIN_EPOCHS epochs per member of the refit's ensemble
        (--refit-members), else the widest that affords them for one network, by the measured time
        of a training step on this machine. Past about 100 epochs on a small training set one
        network stops improving, and a second one gains more than full width does for
        resnet34_unet; for unet a quarter width cost more than a second member gained (README,
        "Ensembles past a single network's ceiling")."""
        if self.args.width != "auto":
            return float(self.args.width)
        study = self.studies[arch]
        if "width" in study.user_attrs:
            return float(study.user_attrs["width"])
        a = self.args
        batches = max(1, len(self.data.indices("train")) // a.batch_size)
        epoch_seconds: dict[float, float] = {}
        candidates = [(w, a.refit_members) for w in AUTO_WIDTHS if w >= ENSEMBLE_MIN_WIDTH and a.refit_members > 1]
        for width, members in [*candidates, *((w, 1) for w in AUTO_WIDTHS)]:
            if width not in epoch_seconds:
                probe = TrainConfig(arch=arch, width=width, image_size=a.image_size, batch_size=a.batch_size,
                                    device=a.device, amp=a.amp)
                epoch_seconds[width] = 1.25 * batches * step_seconds(probe)  # + validation and data loading
            epoch_s = epoch_seconds[width]
            if self.budget.seconds / epoch_s >= AUTO_MIN_EPOCHS * members:
                break
        tqdm.write(f"{PROG}: {arch} width {width:g} (an epoch takes about {epoch_s:.1f} s here; "
                   f"the budget affords {self.budget.seconds / epoch_s:.0f})")
        study.set_user_attr("width", width)
        return width

    # what the studies hold
    def trials(self, arch: str) -> list[FrozenTrial]:
        return self.studies[arch].get_trials(deepcopy=False)

    def spent(self, arch: str) -> float:
        """Seconds this architecture's trials have used, every worker's together."""
        return self.store.trial_seconds(self.studies[arch].study_name)

    def state_path(self, arch: str, config: int) -> Path:
        """Where a paused configuration's resumable state waits for a promotion."""
        return self.checkpoint_dir / arch / "paused" / f"config-{config}.pt"

    def configs(self, arch: str) -> list[schedule.Config]:
        """The sampled configurations, each across its first trial and its continuations."""
        out: dict[int, schedule.Config] = {}
        last_state: dict[int, TrialState] = {}
        for t in self.trials(arch):
            if t.user_attrs.get(budget.SURPLUS) or budget.REFIT_OF in t.user_attrs:
                continue
            root = t.user_attrs.get(budget.RESUME_OF, t.number)
            c = out.setdefault(root, schedule.Config(root))
            c.values.update(t.intermediate_values)
            c.running |= t.state in (TrialState.RUNNING, TrialState.WAITING)
            last_state[root] = t.state
        for c in out.values():
            c.paused_with_state = (not c.running and last_state[c.number] == TrialState.PRUNED
                                   and self.state_path(arch, c.number).exists())
        return list(out.values())

    def plan(self, arch: str) -> bool:
        """Queue what this architecture needs next; False when there is nothing for this worker to run.

        In order: anything already queued (the baseline, retries, promotions, the refit); a
        promotion that successive halving says is due; a new configuration while the search part
        of the budget and --trials last; then, once no search trial is running anywhere, the refit.
        """
        trials = self.trials(arch)
        live = [t for t in trials if not t.user_attrs.get(budget.SURPLUS)]
        if any(t.state == TrialState.WAITING for t in live):
            return True
        if any(budget.REFIT_OF in t.user_attrs for t in live):
            return False  # the refit is done, running elsewhere, or failed for good
        configs = self.configs(arch)
        searching = self.budget.search_left(self.spent(arch)) > 0
        if searching and self.args.pruner == "asha":
            due = schedule.promotion(self.ladder, configs)
            if due is not None:
                first = next(t for t in trials if t.number == due.number)
                self.studies[arch].enqueue_trial(first.params, user_attrs={
                    budget.RESUME_OF: due.number, budget.RESUME_AT: due.epochs_done})
                return True
        if searching and budget.remaining(trials, self.args.trials) > 0:
            return True
        if any(c.running for c in configs):
            return False  # another worker's search trial may still change which configuration is best
        best = schedule.best(self.ladder, configs)
        if best is None or self.args.refit_share <= 0:
            return False
        first = next(t for t in trials if t.number == best.number)
        members, epochs = self.refit_plan(arch, best)
        attrs = {budget.REFIT_OF: best.number, REFIT_EPOCHS: epochs, REFIT_MEMBERS: members}
        start = self.refit_start(arch, best, members, epochs)
        if start is not None:
            attrs[REFIT_INIT] = list(start)
        self.studies[arch].enqueue_trial(first.params, user_attrs=attrs)
        return True

    def refit_plan(self, arch: str, best: schedule.Config) -> tuple[int, int]:
        """(members, epochs) of the refit: the most members, up to --refit-members, that the rest of
        the budget trains for REFIT_MIN_FACTOR times a search trial's full length each at the
        configuration's measured pace (one epoch's time kept for the test evaluation); then as many
        epochs as the budget allows them, longer than the search trained it, and at most
        REFIT_MAX_FACTOR times a search trial's full length."""
        pace, spent, at_least = self.pace(arch, best.number), self.spent(arch), best.epochs_done + 1
        cap = max(at_least, REFIT_MAX_FACTOR * self.ladder.epochs)
        for members in range(self.args.refit_members, 0, -1):
            epochs = self.budget.refit_epochs(spent, pace * members, at_least=at_least, evaluation_s=pace * members)
            if members == 1 or epochs >= REFIT_MIN_FACTOR * self.ladder.epochs:
                return members, min(epochs, cap)
        raise AssertionError("unreachable: one member always fits")

    def refit_start(self, arch: str, best: schedule.Config, members: int, epochs: int) -> tuple[int, str] | None:
        """(trial, file) whose weights a short refit starts from, or None to start from fresh ones.

        A refit the budget cannot give REFIT_MIN_FACTOR times a search trial's length would barely
        out-train the search trial it repeats, so it starts from the weights that configuration's
        search training ended with, under a fresh warm-up and cosine: the search's epochs are not
        thrown away (README, "Short refits start from the search's weights", has the measurement).
        A longer refit, and an ensemble, start fresh: members must differ, and that regime is
        where fresh refits were measured to pay.
        """
        if members > 1 or epochs >= REFIT_MIN_FACTOR * self.ladder.epochs:
            return None
        last = max(t.number for t in self.trials(arch) if not t.user_attrs.get(budget.SURPLUS)
                   and budget.REFIT_OF not in t.user_attrs and t.user_attrs.get(budget.RESUME_OF, t.number) == best.number)
        if best.paused_with_state:
            return last, str(self.state_path(arch, best.number))
        row = next((r for r in self.store.study_trials(self.studies[arch].study_name) if r["number"] == last), None)
        if row is not None and row["state"] == "complete" and row["checkpoint"] and Path(row["checkpoint"]).is_file():
            return last, row["checkpoint"]
        return None  # its weights were not kept (--keep-checkpoints none, or pruned by the median rule)

    def pace(self, arch: str, config: int) -> float:
        """Seconds per epoch a configuration took in the search, its evaluations included."""
        mine = [t for t in self.trials(arch) if t.user_attrs.get(budget.RESUME_OF, t.number) == config
                and t.datetime_complete is not None and t.datetime_start is not None]
        seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in mine)
        trained = sum(len(t.intermediate_values) - t.user_attrs.get(budget.RESUME_AT, 0) for t in mine)
        return seconds / trained if trained > 0 else 0.0

    def sync(self, arch: str) -> None:
        """Optuna's view of the study made to agree with the store (jobs/lifecycle.py), lost trials queued again."""
        lost, told = lifecycle.sync(self.studies[arch], self.store, STALE_AFTER_S, dataset=self.data.name,
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
        trials = study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        if not budget.fits(trial.number, trials, self.args.trials):
            trial.set_user_attr(budget.SURPLUS, True)
            raise SurplusTrial()
        refit_of, resume_of = me.user_attrs.get(budget.REFIT_OF), me.user_attrs.get(budget.RESUME_OF)
        if refit_of is None and self.budget.search_left(self.spent(arch)) <= 0:
            # Planning and asking are two steps: another worker spent the search's time in between
            # (and may have queued the refit already). Trained, this trial would outlive the search.
            trial.set_user_attr(budget.SURPLUS, True)
            raise SurplusTrial()
        p = suggest(trial, self.args.space_def)
        config = resume_of if resume_of is not None else trial.number
        epochs = int(me.user_attrs.get(REFIT_EPOCHS, self.ladder.epochs))
        cfg = self.config(arch, p, epochs, members=int(me.user_attrs.get(REFIT_MEMBERS, 1)))
        extra: dict[str, Any] = {"min_epochs": self.ladder.rungs[0]} if refit_of is None else {}
        resume_from = continues = init_from = None
        if refit_of is not None:
            extra[selection.REFIT_OF] = refit_of
            start = me.user_attrs.get(REFIT_INIT)
            if start is not None and Path(start[1]).is_file():  # gone only if removed by hand: then fresh weights
                init_from, extra[selection.INIT_FROM] = Path(start[1]), int(start[0])
        if resume_of is not None:
            resume_at = int(me.user_attrs[budget.RESUME_AT])
            paused = max((t for t in trials if t.number < trial.number and t.state == TrialState.PRUNED
                          and t.user_attrs.get(budget.RESUME_OF, t.number) == config), key=lambda t: t.number)
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
            if stats.epoch + 1 >= cfg.epochs:
                return
            if refit_of is not None:
                if self.budget.left(self.spent(arch)) < stats.seconds:
                    raise EndTraining()  # slower than the pace it was planned at: stop at the budget
                return
            if self.budget.search_left(self.spent(arch)) <= 0:
                raise optuna.TrialPruned()  # the search's time is up: the refit gets the rest
            if trial.should_prune():
                raise optuna.TrialPruned()
            if pausing and self.ladder.rung_at(stats.epoch + 1) is not None \
                    and not schedule.goes_on(self.ladder, self.configs(arch), config):
                raise PausedAtRung()

        ckpt = None if self.args.keep_checkpoints == "none" else self.checkpoint_dir / arch / f"trial-{trial.number}.pt"
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

    def config(self, arch: str, p: dict[str, float], epochs: int, members: int = 1) -> TrainConfig:
        a = self.args
        aug_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
        augment = AugmentConfig(**{k: (int(v) if k == "rotate" else v) for k, v in p.items() if k in aug_fields})
        return TrainConfig(arch=arch, width=self.widths[arch], members=members, image_size=a.image_size, epochs=epochs,
                           batch_size=a.batch_size, lr=p["lr"], bce_weight=1.0 - p["dice_weight"],
                           dice_weight=p["dice_weight"], augment=augment, device=a.device, amp=a.amp,
                           compile=a.compile, seed=a.seed)

    def prune_checkpoints(self, arch: str) -> None:
        """--keep-checkpoints best: only the architecture's result (core.store.selection) keeps its file."""
        if self.args.keep_checkpoints != "best":
            return
        rows = self.store.study_trials(self.studies[arch].study_name)
        best = selection.best_trial(rows)
        for r in rows:
            if best is not None and r["id"] != best["id"] and r["checkpoint"]:
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
                if not said and time.monotonic() - waiting_since > 2 * HEARTBEAT_S:
                    tqdm.write(f"{PROG}: a running trial's heartbeat is silent (its worker probably died); "
                               f"it is retried here once silent for {STALE_AFTER_S:g} s")
                    said = True
                time.sleep(min(2.0, HEARTBEAT_S / 2))
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
        print(f"{PROG}: search space: " + ", ".join(
            f"{k}={v}" if not hasattr(v, "low") else f"{k}[{v.low:g}..{v.high:g}{' log' if v.log else ''}]"
            for k, v in args.space_def.items()))
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
