"""The sweep's search space: learning rate, the BCE/Dice mix and augmentation.

Each parameter is a range (or a fixed value); a TOML file given with `--space` replaces any of
them, e.g.

    lr = { low = 1e-5, high = 1e-2, log = true }
    dice_weight = 0.7          # fix it
    rotate = { low = 0, high = 45 }

`bce_weight` is always `1 - dice_weight`, so the mix is one number. Every study starts from
STARTING_POINTS before its sampler draws anything: trial 0 is the lab reports' configuration
(BASELINE), the known result to beat; then SegSweep's short-run recipe (RECIPE, jobs.train's
defaults) at two peak learning rates (for a pretrained encoder a lower second one). A sweep's budget buys only a handful of configurations,
most of them random draws, so starting from configurations known to train well in short runs
makes the sweep's result at least as good as the recipe's.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from core.data.augment import AugmentConfig
from core.training.loop import TrainConfig


@dataclass(frozen=True)
class Range:
    """A searched parameter: its bounds, scale, and type (`integer`: whole numbers, Optuna's
    IntDistribution; else FloatDistribution)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int | float:
        """The value Optuna draws, as the declared type: an int for an integer range."""
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


Entry = Range | int | float  # a searched range, or a fixed value of the parameter's type


SPACE: dict[str, Range] = {
    "lr": Range(1e-4, 1e-2, log=True),    # peak of warm-up + cosine; short runs want it well above the reports' 1e-4
    "dice_weight": Range(0.0, 1.0),      # bce_weight = 1 - dice_weight
    "hflip": Range(0.0, 0.5),
    "vflip": Range(0.0, 0.5),
    "rotate": Range(0, 30, integer=True),  # whole degrees
    "brightness": Range(0.0, 0.4),
    "contrast": Range(0.0, 0.4),
    "color_jitter": Range(0.0, 0.3),
    "scale_shift": Range(0.0, 0.2),
    "gamma": Range(0.0, 0.3),
}

_reports = AugmentConfig.reports().as_dict()
# the lab reports' configuration is TrainConfig's defaults (core.training.loop): one place for its values
BASELINE: dict[str, float] = {"lr": TrainConfig.lr, "dice_weight": TrainConfig.dice_weight,
                              **{k: _reports[k] for k in SPACE if k in _reports}}
# The reports' loss mix and augmentation with a short-run peak lr (warm-up, then cosine): the
# sweep's first starting point after the baseline, and jobs.train's defaults.
RECIPE: dict[str, float] = {**BASELINE, "lr": 1e-3}
# Which peak suits best differs by architecture and data (unet: 1e-3, resnet34_unet: 3e-3 on
# both the sample and the synthetic set), so the recipe starts at both.
STARTING_POINTS: tuple[dict[str, float], ...] = (BASELINE, RECIPE, {**RECIPE, "lr": 3e-3})
# A network with a pretrained encoder wants a lower peak (EfficientNet-Lite0 on ultrasound, 400 s: 0.645 test
# dice at 3e-4 against 0.606 at 1e-3; docs/sweep.md, "A pretrained encoder"), so its study's third start is
# below the recipe's.
PRETRAINED_STARTING_POINTS: tuple[dict[str, float], ...] = (BASELINE, RECIPE, {**RECIPE, "lr": 3e-4})


class SpaceError(ValueError):
    """A search-space file the sweep cannot use (one-line message)."""


def load_space(path: str | Path | None) -> dict[str, Entry]:
    """The default space, with the entries of a TOML file (if given) replacing their defaults; each
    keeps its parameter's type (SPACE's), so a fixed `rotate = 10` stays an int."""
    space: dict[str, Entry] = dict(SPACE)
    if path is None:
        return space
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SpaceError(f"cannot read search space {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"search space {path} is not valid TOML: {exc}") from exc
    for name, value in raw.items():
        if name not in SPACE:
            raise SpaceError(f"search space {path}: unknown parameter {name!r}; known: {', '.join(SPACE)}")
        space[name] = _parse_entry(path, name, value)
    return space


def _parse_entry(path: str | Path, name: str, value: Any) -> Entry:
    integer = SPACE[name].integer

    def number(v: Any) -> int | float:
        if integer and float(v) != int(v):
            raise SpaceError(f"search space {path}: {name} takes whole numbers, got {v}")
        return int(v) if integer else float(v)

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    if isinstance(value, dict) and {"low", "high"} <= set(value):
        low, high = number(value["low"]), number(value["high"])
        log = bool(value.get("log", False))
        if not low < high or (log and low <= 0):
            raise SpaceError(f"search space {path}: {name} needs low < high (and low > 0 with log)")
        return Range(low, high, log=log, integer=integer)
    raise SpaceError(f"search space {path}: {name} must be a number or {{ low = .., high = .. }}")


def suggest(trial: optuna.Trial, space: dict[str, Entry]) -> dict[str, int | float]:
    """One configuration, each value of its parameter's type: ranges drawn by Optuna, fixed entries
    as they are (Optuna's study does not see them; the store records every value in the trial's params)."""
    return {name: entry.suggest(trial, name) if isinstance(entry, Range) else entry for name, entry in space.items()}


def baseline_for(space: dict[str, Entry]) -> dict[str, float]:
    """The reports' configuration restricted to the searched parameters (what enqueue_trial takes)."""
    return {k: v for k, v in BASELINE.items() if isinstance(space.get(k), Range)}


def starting_points(space: dict[str, Entry], pretrained: bool = False) -> list[dict[str, float]]:
    """STARTING_POINTS (PRETRAINED_STARTING_POINTS for a study whose encoder starts pretrained) for
    enqueue_trial: the baseline as it is (a known result, even outside a narrowed space), the recipes
    restricted to the searched parameters and moved inside their ranges; a recipe that a narrowed space
    turns into an earlier point is left out."""
    points = [baseline_for(space)]
    for recipe in (PRETRAINED_STARTING_POINTS if pretrained else STARTING_POINTS)[1:]:
        point = {}
        for k, v in recipe.items():
            entry = space.get(k)
            if isinstance(entry, Range):
                point[k] = min(max(v, entry.low), entry.high)
        if point not in points:
            points.append(point)
    return points
