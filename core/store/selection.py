"""Which trial is an architecture's result: one rule for the sweep's summary, its checkpoint
pruning and the dashboard, so they never disagree.

The refit (the best configuration trained once more, longer; `params["refit_of"]` names the
trial it repeats) is the architecture's result once it is complete. Before that, the complete
trial with the highest validation dice; ties go to the earlier trial. Test dice never
chooses: it is what the choice is judged by.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

REFIT_OF = "refit_of"        # params key: the trial number whose configuration a refit trains again
RESUMED_FROM = "resumed_from"  # params key: the trial a promoted configuration continues
INIT_FROM = "init_from"      # params key: the trial whose trained weights a refit started from


def is_refit(params: Mapping[str, Any] | None) -> bool:
    return bool(params) and params.get(REFIT_OF) is not None  # type: ignore[union-attr]


def chosen_as(params: Mapping[str, Any] | None) -> str:
    """How a result was chosen, for tables: "refit of trial 15, an ensemble of 2", "refit of trial 3,
    from trial 9's weights" or "best by val dice"."""
    if not is_refit(params):
        return "best by val dice"
    members = int(params.get("members") or 1)  # type: ignore[union-attr]  (absent before ensembles)
    start = params.get(INIT_FROM)  # type: ignore[union-attr]
    return (f"refit of trial {params[REFIT_OF]}" + (f", an ensemble of {members}" if members > 1 else "")  # type: ignore[index]
            + (f", from trial {start}'s weights" if start is not None else ""))


def rank(row: Mapping[str, Any]) -> tuple[bool, float, int]:
    """Larger is better: refit first, then validation dice, then the earlier trial."""
    val = row.get("val_dice")
    return (is_refit(row.get("params")), float(val) if val is not None else float("-inf"), -int(row["number"]))


def best_trial(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The result among one architecture's trial rows (store `trials` rows), or None if none is complete."""
    done = [r for r in rows if r.get("state") == "complete" and r.get("val_dice") is not None]
    return max(done, key=rank) if done else None
