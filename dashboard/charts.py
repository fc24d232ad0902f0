"""Plotly figures of the dashboard, as plain functions of DataFrames (no Streamlit here)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb
from plotly.subplots import make_subplots

from core.store.queries import LOWER_IS_BETTER, UNIT_RANGE

MUTED_STATES = ("pruned", "failed")


def tint(color: str, amount: float) -> str:
    """A hex colour blended toward white by `amount` (0 keeps it, 1 is white)."""
    r, g, b = hex_to_rgb(color)
    mix = [round(c + (255 - c) * amount) for c in (r, g, b)]
    return f"rgb({mix[0]},{mix[1]},{mix[2]})"


def trial_colors(chosen: pd.DataFrame, arch_colors: dict[str, str], best_ids: set[int]) -> dict[str, str]:
    """Colour per trial label: the architecture's colour for its best trial, lighter tints for the rest."""
    out: dict[str, str] = {}
    for arch, group in chosen.groupby("arch", sort=True):
        base = arch_colors.get(arch, "#7f7f7f")
        ordered = sorted(group.itertuples(), key=lambda r: (int(r.id) not in best_ids, r.number))
        for i, row in enumerate(ordered):
            out[row.label] = tint(base, min(0.7, 0.22 * i)) if i else tint(base, 0.0)
    return out


def learning_curves(curves: pd.DataFrame, chosen: pd.DataFrame, arch_colors: dict[str, str],
                    best_ids: set[int], metric: str) -> go.Figure:
    """Train and validation `metric` (loss or dice) per epoch, one line per trial.

    Colour = architecture; best trials thick; pruned and failed trials thin, dotted and faded
    (failed ones end in a cross).
    """
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=(f"train {metric}", f"validation {metric}"))
    for row in chosen.itertuples():
        rows = curves[curves["trial_id"] == row.id]
        if rows.empty:
            continue
        muted = row.state in MUTED_STATES
        best = int(row.id) in best_ids
        width, opacity, dash = (3.5, 1.0, "solid") if best else (1.0, 0.35, "dot") if muted else (1.6, 0.75, "solid")
        name = row.label + (f" ({row.state})" if row.state != "complete" else "") + (" ★" if best else "")
        for col, split in ((1, "train"), (2, "val")):
            fig.add_trace(go.Scatter(
                x=rows["epoch"], y=rows[f"{split}_{metric}"], mode="lines+markers" if len(rows) < 3 else "lines",
                name=name, legendgroup=name, showlegend=col == 1, opacity=opacity,
                line=dict(color=arch_colors.get(row.arch, "#7f7f7f"), width=width, dash=dash),
                hovertemplate=f"{name}<br>epoch %{{x}}<br>{split} {metric} %{{y:.4f}}<extra></extra>"), row=1, col=col)
            if row.state == "failed":
                last = rows.iloc[-1]
                fig.add_trace(go.Scatter(
                    x=[last["epoch"]], y=[last[f"{split}_{metric}"]], mode="markers", showlegend=False,
                    legendgroup=name, opacity=0.6, hoverinfo="skip",
                    marker=dict(symbol="x", size=10, color=arch_colors.get(row.arch, "#7f7f7f"))), row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1 if curves["epoch"].max() < 15 else None)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(height=380, margin=dict(t=40, b=40, l=50, r=10), legend=dict(font=dict(size=11)))
    return fig


def score_range(values: pd.Series, metric: str = "dice") -> tuple[float, float] | None:
    """An axis range from a little below the worst score to 1, so a tight spread stays readable;
    None (plotly's own range) for a metric that is not a score in [0, 1] or is worst when high."""
    if metric not in UNIT_RANGE or metric in LOWER_IS_BETTER:
        return None
    finite = values.dropna()
    low = float(np.nanmin(finite)) if len(finite) else 0.0
    return max(0.0, math.floor(low * 20) / 20 - 0.02), 1.01


def _legend_below(fig: go.Figure) -> None:
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, title=None))


def histogram(scores: pd.DataFrame, metric: str, colors: dict[str, str]) -> go.Figure:
    fig = px.histogram(scores, x=metric, color="label", color_discrete_map=colors, barmode="overlay",
                       opacity=0.6, nbins=30, labels={metric: metric.replace("_", " "), "label": "trial"})
    fig.update_layout(height=360, margin=dict(t=30, b=10, l=50, r=10), yaxis_title="images",
                      xaxis_range=score_range(scores[metric], metric), title=dict(text="Histogram", font=dict(size=14)))
    _legend_below(fig)
    return fig


def violin(scores: pd.DataFrame, metric: str, colors: dict[str, str]) -> go.Figure:
    points = "all" if len(scores) <= 2000 else "outliers"  # thousands of dots only slow the browser
    fig = px.violin(scores, x="label", y=metric, color="label", color_discrete_map=colors, box=True,
                    points=points, hover_name="name", labels={metric: metric.replace("_", " "), "label": "trial"})
    fig.update_traces(pointpos=0, jitter=0.3, marker=dict(size=4), spanmode="hard")
    fig.update_layout(height=360, margin=dict(t=30, b=40, l=50, r=10), showlegend=False,
                      yaxis_range=score_range(scores[metric], metric),
                      title=dict(text="Box and violin", font=dict(size=14)))
    return fig


def ecdf(scores: pd.DataFrame, metric: str, colors: dict[str, str]) -> go.Figure:
    fig = px.ecdf(scores, x=metric, color="label", color_discrete_map=colors, hover_name="name",
                  labels={metric: metric.replace("_", " "), "label": "trial"})
    fig.update_layout(height=360, margin=dict(t=30, b=10, l=50, r=10), xaxis_range=score_range(scores[metric], metric),
                      yaxis_title="share of images at or below", title=dict(text="ECDF", font=dict(size=14)))
    _legend_below(fig)
    return fig


def paired_scatter(pairs: pd.DataFrame, metric: str, label_a: str, label_b: str) -> go.Figure:
    """Score of A vs score of B per image; points above the diagonal are images where B does better."""
    a, b = pairs[f"{metric}_a"], pairs[f"{metric}_b"]
    diff = b - a
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dash"),
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=a, y=b, mode="markers", text=pairs["name"], showlegend=False,
        marker=dict(size=7, color=diff, colorscale="RdBu", cmid=0, colorbar=dict(title="B − A"),
                    line=dict(width=0.5, color="#333")),
        hovertemplate="%{text}<br>A %{x:.3f}<br>B %{y:.3f}<extra></extra>"))
    both = pd.concat([a, b]).dropna()
    lo, hi = score_range(both, metric) or (0.0, float(both.max()) * 1.05 + 1e-9 if len(both) else 1.0)
    fig.data[0].update(x=[lo, hi], y=[lo, hi])
    fig.update_layout(height=440, margin=dict(t=30, b=40, l=50, r=10),
                      xaxis=dict(title=f"A: {label_a}", range=(lo, hi), constrain="domain"),
                      yaxis=dict(title=f"B: {label_b}", range=(lo, hi), scaleanchor="x", constrain="domain"),
                      title=dict(text=f"{metric.replace('_', ' ')} per image", font=dict(size=14)))
    return fig


def _param_grid(table: pd.DataFrame, params: list[str], header: int) -> tuple[go.Figure, int, list[tuple]]:
    """A grid with one panel per hyperparameter: the figure, its height, and per panel (i, param, row,
    col, the trials' values). lr panels get a log axis when the rates span more than a factor 20."""
    cols = min(4 if len(params) > 6 else 3, max(1, len(params)))
    rows = math.ceil(len(params) / cols)
    height = 230 * rows + header
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=params, horizontal_spacing=0.05,
                        vertical_spacing=min(0.9 / max(rows - 1, 1), 75 / height))
    panels = []
    for i, param in enumerate(params):
        r, c = i // cols + 1, i % cols + 1
        x = table[param].astype(float)
        if param == "lr" and (x > 0).all() and x.max() / max(x.min(), 1e-12) > 20:
            fig.update_xaxes(type="log", row=r, col=c)
        panels.append((i, param, r, c, x))
    return fig, height, panels


def params_vs_tail(table: pd.DataFrame, params: list[str], tail: str, tail_label: str,
                   color: str) -> go.Figure:
    """One panel per hyperparameter: each trial's tail score (filled) and mean score (hollow)."""
    fig, height, panels = _param_grid(table, params, header=80)
    for i, param, r, c, x in panels:
        hover = "trial #%{text}<br>" + param + " %{x:.3g}<br>%{y:.4f}<extra>"
        fig.add_trace(go.Scatter(x=x, y=table[tail], mode="markers", text=table["number"], name=tail_label,
                                 legendgroup="tail", showlegend=i == 0, marker=dict(size=9, color=color),
                                 hovertemplate=hover + tail_label + "</extra>"), row=r, col=c)
        fig.add_trace(go.Scatter(x=x, y=table["mean"], mode="markers", text=table["number"], name="mean",
                                 legendgroup="mean", showlegend=i == 0,
                                 marker=dict(size=9, color="rgba(0,0,0,0)", line=dict(color=color, width=1.5)),
                                 hovertemplate=hover + "mean</extra>"), row=r, col=c)
    fig.update_layout(height=height, margin=dict(t=80, b=30, l=50, r=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0 + 30 / (height - 110), x=0))
    return fig


def failure_mode_bars(shares: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """Horizontal stacked bars, one per row of `shares` (index: what the row is; columns: modes, values: shares)."""
    fig = go.Figure()
    for mode in shares.columns:
        fig.add_trace(go.Bar(y=shares.index, x=shares[mode], name=mode, orientation="h",
                             marker_color=colors.get(mode, "#7f7f7f"),
                             hovertemplate="%{y}<br>" + mode + " %{x:.0%}<extra></extra>"))
    fig.update_layout(barmode="stack", height=90 + 38 * len(shares), margin=dict(t=30, b=40, l=10, r=10),
                      xaxis=dict(tickformat=".0%", range=(0, 1), title="share of test images"),
                      yaxis=dict(autorange="reversed"), legend=dict(orientation="h", y=-0.35, x=0, title=None),
                      title=dict(text="Failure modes", font=dict(size=14)))
    return fig


def confidence_scatter(scores: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """Per image: mean predictive entropy (x) against dice (y), one colour per trial label."""
    fig = px.scatter(scores, x="entropy", y="dice", color="label", color_discrete_map=colors, hover_name="name",
                     labels={"entropy": "mean entropy (bits): how unsure the model is", "label": "trial"})
    fig.update_traces(marker=dict(size=6, opacity=0.75))
    fig.update_layout(height=380, margin=dict(t=30, b=10, l=50, r=10), yaxis_range=score_range(scores["dice"]),
                      title=dict(text="Confidence against dice", font=dict(size=14)))
    _legend_below(fig)
    return fig


def params_vs_share(table: pd.DataFrame, params: list[str], mode: str, color: str) -> go.Figure:
    """One panel per hyperparameter: each trial's share of images in failure mode `mode`."""
    fig, height, panels = _param_grid(table, params, header=60)
    for i, param, r, c, x in panels:
        fig.add_trace(go.Scatter(x=x, y=table[mode], mode="markers", text=table["number"], showlegend=False,
                                 marker=dict(size=9, color=color),
                                 hovertemplate="trial #%{text}<br>" + param + " %{x:.3g}<br>" + mode
                                 + " %{y:.0%}<extra></extra>"), row=r, col=c)
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(height=height, margin=dict(t=50, b=30, l=50, r=10))
    return fig
