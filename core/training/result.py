"""A sweep's result as a usable model: chosen by the dashboard's rule, its weights checked, built as evaluated.

jobs.predict and jobs.export start here. Which trial: an architecture's result is what Home shows
(core.store.queries.best_trials, i.e. core.store.selection); with several architectures and none
named, the result with the best validation dice. Its checkpoint must be on disk and still have the
sha256 the sweep recorded. The model is rebuilt from the trial's params (architecture, width,
ensemble members) and run as the evaluation ran it: the same flip TTA, and, on the kind of device
it was trained on, the precision and memory layout recorded in the checkpoint (else what the
trainer would choose there).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from core.data.augment import AugmentConfig
from core.models import build_model
from core.models.pretrained import file_sha256
from core.store import queries, selection
from core.store.db import SCHEMA_VERSION, Store, StoreError, display_url, normalize_url, sqlite_path
from core.training.loop import (
    Normalizer,
    TrainConfig,
    choose_amp,
    evaluation_logits,
    load_weights,
    select_device,
    use_channels_last,
)


class ResultError(Exception):
    """No usable result (no complete trial, a missing or altered checkpoint); the message is one line."""


@dataclass
class Result:
    """One trial's weights, built and checked, with what it was trained as."""

    row: dict[str, Any]          # the store's trials row
    cfg: TrainConfig             # as trained, with the device, precision and layout to run it in
    model: nn.Module             # in eval mode, on cfg.device
    device: torch.device
    sha256: str                  # of the checkpoint file as loaded
    chosen: str                  # how the trial was picked, for the job's first line
    amp: torch.dtype | None = field(init=False)

    def __post_init__(self) -> None:
        self.amp = choose_amp(self.cfg, self.device)
        self.normalize = Normalizer(self.device, use_channels_last(self.cfg, self.device))
        if self.normalize.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def precision(self) -> str:
        return str(self.amp).replace("torch.", "") if self.amp else "float32"

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 images at the trained size -> (N, S, S) float32 logits on the device, computed
        as the trial's evaluation computed them (core.training.loop.predict)."""
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with autocast:
            return evaluation_logits(self.model, self.normalize.images(images), self.cfg.flip_tta)[:, 0]


def open_store(db: str) -> Store:
    """The store read-only; ResultError (one line) when it is unreadable or older than this code reads."""
    path = sqlite_path(normalize_url(db))
    if path is not None and not path.is_file():
        raise ResultError(f"no results database at {path}; give the --db a sweep wrote")
    try:
        store = Store(db, read_only=True)
    except StoreError as exc:
        raise ResultError(str(exc).splitlines()[0]) from None
    if not queries.has_results_tables(store):
        raise ResultError(f"{display_url(store.url)} holds no results; run python -m jobs.sweep first")
    if store.schema_version < SCHEMA_VERSION:
        raise ResultError(f"{display_url(store.url)} is at schema version {store.schema_version}; bring it to "
                          f"{SCHEMA_VERSION} first: python -m jobs.upgrade --db {display_url(store.url)}")
    return store


def latest_sweep(store: Store, sweep: str | None) -> str:
    """`sweep` if the store has it, else (None) the most recently active sweep, as the dashboard opens."""
    names = queries.sweeps(store)["sweep"].tolist()
    if not names:
        raise ResultError(f"{display_url(store.url)} has no sweep yet; run python -m jobs.sweep first")
    if sweep is None:
        return str(names[0])
    if sweep not in names:
        raise ResultError(f"no sweep {sweep!r} in {display_url(store.url)}; it has {', '.join(map(str, names))}")
    return sweep


@contextlib.contextmanager
def reading(db: str) -> Iterator[Store]:
    """open_store, disposed of at the end."""
    store = open_store(db)
    try:
        yield store
    finally:
        store.dispose()


def choose(store: Store, sweep: str | None = None, arch: str | None = None,
           trial: int | None = None) -> tuple[dict[str, Any], str]:
    """(trials row, how it was chosen) in `sweep` (None: the latest): trial number `trial` (of `arch` where
    several have it), else the result of `arch`, else the best result by validation dice among the
    architectures' results."""
    sweep = latest_sweep(store, sweep)
    if trial is not None:
        rows = queries.sweep_trials(store, sweep)
        rows = rows[(rows["number"] == trial) & ((rows["arch"] == arch) if arch else True)]
        if rows.empty:
            raise ResultError(f"sweep {sweep!r} has no trial {trial}" + (f" of {arch}" if arch else ""))
        if len(rows) > 1:
            raise ResultError(f"sweep {sweep!r} has a trial {trial} of {', '.join(rows['arch'])}: add --arch")
        row = rows.iloc[0].to_dict()
        if row["state"] != "complete":
            raise ResultError(f"{row['arch']} trial {trial} of sweep {sweep!r} is {row['state']}, not complete")
        return _full_row(store, row), f"{row['arch']} trial {trial}, as asked"
    best = queries.best_trials(store, sweep)  # Home's "Result per architecture"
    if best.empty:
        raise ResultError(f"sweep {sweep!r} has no complete trial yet; wait for its first trial to finish")
    if arch is not None:
        best = best[best["arch"] == arch]
        if best.empty:
            raise ResultError(f"sweep {sweep!r} has no complete {arch} trial")
    rows = best.to_dict("records")
    row = max(rows, key=lambda r: (r["val_dice"], -r["number"]))
    why = f"{row['arch']}'s result ({selection.chosen_as(row['params'])})"
    if len(rows) > 1:
        others = ", ".join(f"{r['arch']} {r['val_dice']:.4f}" for r in rows if r is not row)
        why += f": the best val dice of {len(rows)} architectures' results ({row['val_dice']:.4f}; {others})"
    return _full_row(store, row), why


def _full_row(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    full = store.trial(int(row["id"]))
    assert full is not None
    return full


def config_of(params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a trial's recorded params describe (keys it lacks keep TrainConfig's defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"augment", "device", "num_workers"}
    aug_names = {f.name for f in dataclasses.fields(AugmentConfig)}
    augment = AugmentConfig(**{k[4:]: v for k, v in params.items() if k.startswith("aug_") and k[4:] in aug_names})
    return TrainConfig(**{k: v for k, v in params.items() if k in names}, augment=augment)


def checked_checkpoint(row: dict[str, Any], warn: Callable[[str], None]) -> tuple[Path, str]:
    """The trial's checkpoint file and its sha256, if it is there and is the file the trial wrote."""
    what = f"{row['arch']} trial {row['number']}"
    if not row.get("checkpoint"):
        raise ResultError(f"{what} has no checkpoint on disk (removed, or it could not be written); "
                          f"choose another trial with --trial, or run the sweep again")
    path = Path(row["checkpoint"])
    if not path.is_file():
        raise ResultError(f"{what}'s checkpoint {path} is missing")
    sha = file_sha256(path)
    recorded = row.get("checkpoint_sha256")
    if recorded is None:
        warn(f"{what}'s checkpoint has no recorded sha256 (written before SegSweep recorded one); not verified")
    elif sha != recorded:
        raise ResultError(f"{what}'s checkpoint {path} was altered since the sweep wrote it (sha256 {sha[:12]}... "
                          f"but the store recorded {recorded[:12]}...)")
    return path, sha


def run_config(cfg: TrainConfig, meta: dict[str, Any], device: torch.device) -> TrainConfig:
    """cfg as run on `device`: the precision and layout the trial was evaluated in where the checkpoint
    recorded them for this kind of device, else the trainer's own choice here (amp 'auto'). Never compiled, and
    its encoder starts from nothing: the checkpoint holds every weight (timing the trainer's choice builds a model)."""
    cfg = replace(cfg, device=str(device), compile=False, encoder_weights="none")
    if "amp" in meta and torch.device(meta.get("device", "cpu")).type == device.type:
        return replace(cfg, amp=meta["amp"], channels_last=bool(meta["channels_last"]))
    return replace(cfg, amp="auto", channels_last=None)


def load(row: dict[str, Any], device: str = "auto", chosen: str = "",
         warn: Callable[[str], None] = print) -> Result:
    """Build the trial's model with its checked weights, in eval mode on `device`."""
    path, sha = checked_checkpoint(row, warn)
    try:
        target = select_device(device)
    except ValueError as exc:
        raise ResultError(str(exc)) from None
    cfg = config_of(row["params"])
    model = build_model(cfg.arch, width=cfg.width, members=cfg.members)
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)
        load_weights(path, model, torch.device("cpu"))
    except Exception as exc:  # not a checkpoint of this architecture, or a truncated file
        raise ResultError(f"cannot load {path} as {cfg.arch} width {cfg.width:g}: "
                          f"{str(exc).strip().splitlines()[0][:160]}") from None
    cfg = run_config(cfg, {k: v for k, v in meta.items() if k in ("amp", "channels_last", "device")}, target)
    model = model.to(target).eval()
    return Result(row=row, cfg=cfg, model=model, device=target, sha256=sha, chosen=chosen)


def describe(result: Result) -> str:
    """One line: which trial, how good, and how it runs."""
    r = result.row
    test = f"{r['test_dice']:.4f}" if r.get("test_dice") is not None else "-"
    return (f"{r['arch']} trial {r['number']} of sweep {r['sweep']!r} (val dice {r['val_dice']:.4f}, test dice "
            f"{test}; {result.cfg.image_size} px, width {result.cfg.width:g}"
            + (f", {result.cfg.members} members" if result.cfg.members > 1 else "")
            + (", flip TTA" if result.cfg.flip_tta else "") + ")")
