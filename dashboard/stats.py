"""Numbers the pages report: per-trial dice summaries and the paired comparison of two trials."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from core.metrics import spread


def summarize(scores: pd.DataFrame, metric: str, by: str = "trial_id",
              lower_is_better: bool = False) -> pd.DataFrame:
    """Per group: image count, mean, median, the 10th and 5th percentile on the bad side (the 90th and
    95th when lower is better), worst value and worst image. Rows without a value (not computed) are
    left out; a group with none is too."""
    rows = []
    for key, group in scores.groupby(by, sort=False):
        group = group[group[metric].notna()]
        if group.empty:
            continue
        values = group[metric].to_numpy(dtype=float)
        worst = group.loc[group[metric].idxmax() if lower_is_better else group[metric].idxmin()]
        rows.append({by: key, "images": len(values), **spread(values, lower_is_better), "worst image": worst["name"]})
    return pd.DataFrame(rows, columns=[by, "images", "mean", "median", "p10", "p5", "worst", "worst image"])


@dataclass
class PairedComparison:
    """B minus A on the images both trials evaluated."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float | None  # Wilcoxon signed-rank; None when undefined (too few or all-equal pairs)
    b_better: int
    a_better: int


def compare_paired(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> PairedComparison:
    """Mean difference b - a with a percentile bootstrap CI over images, and a Wilcoxon p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired scores need two equal-length, non-empty arrays")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    p_value: float | None = None
    if np.count_nonzero(diff) >= 1 and diff.size >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample and ties notes
            try:
                p_value = float(stats.wilcoxon(a, b).pvalue)
            except ValueError:
                p_value = None
        if p_value is not None and not np.isfinite(p_value):
            p_value = None
    return PairedComparison(n=int(diff.size), mean_diff=float(diff.mean()), ci_low=float(lo), ci_high=float(hi),
                            p_value=p_value, b_better=int((diff > 0).sum()), a_better=int((diff < 0).sum()))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation, None when undefined (fewer than 3 points or a constant side)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(stats.spearmanr(x, y).statistic)
