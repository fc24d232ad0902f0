"""Sweep insights: Optuna's own plots per architecture, and which hyperparameters lift the worst images.

The study is read from the same database through core.store.optuna_storage (read-only). The mean
dice can hide a trial that does well on easy images and badly on hard ones, so each
hyperparameter is also set against the trial's tail: the mean of its worst 10% images or its
10th percentile.
"""

import warnings

import optuna
import pandas as pd
import streamlit as st
from optuna.trial import TrialState

from core.metrics import FAILURE_MODES, NOT_COMPUTED
from core.store.optuna_storage import optuna_storage
from dashboard import charts, stats
from dashboard import common as ui

TAILS = {"worst10_mean": "mean of the worst 10% images", "p10": "10th percentile"}
SKIP_PARAMS = {"arch", "seed", "bce_weight"}  # not knobs: fixed, noise, or 1 - dice_weight


@st.cache_resource(show_spinner=False)
def storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage inside the results database, read-only, shared by all sessions."""
    return optuna_storage(url, read_only=True, engine=ui.open_store(url).engine)


def optuna_plots(ctx: ui.Context, arch: str) -> None:
    name = f"{ctx.sweep}/{arch}"
    try:
        study = optuna.load_study(study_name=name, storage=storage(ctx.url))
    except KeyError:
        st.info(f"No Optuna study named `{name}` in this database (a one-off `jobs.train` run has none).")
        return
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    st.caption(f"Optuna study `{name}`: {len(trials)} trials, {len(done)} complete.")
    if not done:
        st.info("No complete trial in this study yet; its plots appear when one finishes.")
        return
    plots = [  # (title, plot, full width?)
        ("Optimization history", optuna.visualization.plot_optimization_history, False),
        ("Parameter importances", optuna.visualization.plot_param_importances, False),
        ("Parallel coordinates", optuna.visualization.plot_parallel_coordinate, True),
        ("Slice", optuna.visualization.plot_slice, True),
    ]
    halves = st.columns(2)
    for i, (title, plot, wide) in enumerate(plots):
        with st.container() if wide else halves[i % 2]:
            st.markdown(f"**{title}**")
            if title == "Parameter importances" and len(done) < 2:
                st.info("Parameter importances need at least 2 complete trials; "
                        f"this study has {len(done)}.")
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fig = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                st.info(f"{title} is not available for this study: {str(exc).splitlines()[0]}")
                continue
            fig.update_layout(title=None, height=380, margin=dict(t=20, b=40, l=50, r=10))
            st.plotly_chart(fig, key=f"optuna_{i}", config={"displaylogo": False})


def tail_insights(ctx: ui.Context, arch: str) -> None:
    st.subheader("Hyperparameters vs the hardest images")
    c1, c2 = st.columns(2)
    tail = c1.radio("Tail score", list(TAILS), format_func=TAILS.get, horizontal=True, key="tail_kind")
    border = ctx.has_ignore_band and c2.toggle("Border-aware dice", key="tail_border")  # only data with an ignore band
    metric = "dice_no_border" if border else "dice"
    scores = ctx.sweep_aggregate("trial_tail_scores", ctx.sweep, metric)
    scores = scores[scores["arch"] == arch]
    if scores.empty:
        st.info("No complete trial with per-image results for this architecture yet.")
        return
    params = pd.DataFrame([p or {} for p in scores["params"]], index=scores.index)
    numeric = [c for c in params.columns if c not in SKIP_PARAMS and pd.api.types.is_numeric_dtype(params[c])
               and not pd.api.types.is_bool_dtype(params[c])]
    varying = [c for c in numeric if params[c].nunique(dropna=True) > 1]
    table = pd.concat([scores.drop(columns="params"), params[varying]], axis=1)
    if not varying:
        st.info("The complete trials of this architecture share every hyperparameter; nothing to relate yet.")
    else:
        st.plotly_chart(charts.params_vs_tail(table, varying, tail, TAILS[tail], ctx.colors[arch]),
                        key="params_vs_tail", config={"displaylogo": False})
        corr = pd.DataFrame([{
            "hyperparameter": p,
            f"Spearman ρ with {TAILS[tail]}": stats.spearman(table[p], table[tail]),
            "Spearman ρ with mean": stats.spearman(table[p], table["mean"]),
        } for p in varying])
        st.dataframe(corr.round(3), hide_index=True)
        st.caption(f"{len(table)} complete trials of {arch}; ρ is undefined (empty) below 3 trials. "
                   "A knob that moves the tail more than the mean helps the hard cases specifically.")
    shown = table[["number", "val_dice", "mean", "worst10_mean", "p10", "worst", "images", *varying]] \
        .sort_values(tail, ascending=False).rename(columns={"number": "trial", "val_dice": "val dice",
                                                            "worst10_mean": "worst-10% mean", "p10": "10th pct"})
    st.dataframe(shown.round(4), hide_index=True)


def failure_insights(ctx: ui.Context, arch: str) -> None:
    """Each hyperparameter against each trial's share of images in a chosen failure mode."""
    st.subheader("Hyperparameters vs failure modes")
    shares = ctx.sweep_aggregate("sweep_failure_shares", ctx.sweep)
    shares = shares[shares["arch"] == arch] if len(shares) else shares
    modes = [m for m in (*FAILURE_MODES, NOT_COMPUTED) if m in shares.columns]
    if shares.empty or not modes:
        st.info("No complete trial with failure modes for this architecture yet.")
        return
    shares = shares.reset_index(drop=True)
    params = pd.DataFrame([p or {} for p in shares["params"]], index=shares.index)
    varying = [c for c in params.columns if c not in SKIP_PARAMS and pd.api.types.is_numeric_dtype(params[c])
               and not pd.api.types.is_bool_dtype(params[c]) and params[c].nunique(dropna=True) > 1]
    failing = [m for m in modes if m != "ok"] or modes
    default = max(failing, key=lambda m: shares[m].mean())  # the commonest way this architecture fails
    mode = st.segmented_control("Failure mode", modes, default=default, key=f"insight_mode::{ctx.url}::{ctx.sweep}") \
        or default
    table = pd.concat([shares.drop(columns="params"), params[varying]], axis=1)
    if not varying:
        st.info("The complete trials of this architecture share every hyperparameter; nothing to relate yet.")
    else:
        st.plotly_chart(charts.params_vs_share(table, varying, mode, ctx.colors[arch]), key="params_vs_modes",
                        config={"displaylogo": False})
        corr = pd.DataFrame([{"hyperparameter": p, **{f"ρ with {m}": stats.spearman(table[p], table[m]) for m in modes}}
                             for p in varying])
        st.dataframe(corr.round(3), hide_index=True)
        st.caption(f"Spearman ρ between each hyperparameter and each trial's share of images per failure mode, over "
                   f"{len(table)} complete trials of {arch} (empty below 3 trials). A knob with negative ρ for "
                   f"`missed object` and positive for `background leak` trades one failure for the "
                   "other.")
    shown = table[["number", "val_dice", "images", *modes, *varying]].rename(
        columns={"number": "trial", "val_dice": "val dice"}).sort_values(mode)
    st.dataframe(shown.round(3), hide_index=True,
                 column_config={m: st.column_config.NumberColumn(m, format="percent") for m in modes})


def render(ctx: ui.Context) -> None:
    archs = ctx.archs
    arch = st.segmented_control("Architecture", archs, default=archs[0], key=f"insight_arch::{ctx.url}::{ctx.sweep}") \
        or archs[0]
    optuna_plots(ctx, arch)
    tail_insights(ctx, arch)
    if ctx.diagnostics:
        failure_insights(ctx, arch)
    else:
        ctx.upgrade_note()


ui.run("Sweep insights", "🧭", render)
