"""Learning curves: train/validation loss and dice per epoch of the chosen trials."""

import streamlit as st

from dashboard import charts
from dashboard import common as ui

DEFAULT_ALL_UP_TO = 24  # trials; bigger sweeps start with the best and running trials only


def render(ctx: ui.Context) -> None:
    trials = ctx.trials
    best_ids = set(int(i) for i in ctx.best()["id"])
    names = ui.labels(trials, best_ids)
    if len(trials) <= DEFAULT_ALL_UP_TO:
        default = list(names)
    else:
        default = [int(i) for i in trials["id"] if int(i) in best_ids] + \
            [int(r.id) for r in trials.itertuples() if r.state == "running"]
    chosen_ids = st.multiselect("Trials", list(names), default=default, format_func=names.get, key=f"curve_trials::{ctx.url}::{ctx.sweep}",
                                help="Best trial of each architecture (★) drawn thick; pruned and failed ones faded.")
    if not chosen_ids:
        st.info("Choose at least one trial.")
        return
    chosen = trials[trials["id"].isin(chosen_ids)].copy()
    chosen["label"] = [ui.trial_label(a, n) for a, n in zip(chosen["arch"], chosen["number"])]
    curves = ctx.query("epoch_curves", tuple(int(i) for i in chosen_ids))
    if curves.empty:
        st.info("None of the chosen trials has finished an epoch yet.")
        return
    colors = ctx.colors
    legend = " · ".join(f"<span style='color:{colors[a]}'>■</span> {a}" for a in ctx.archs)
    st.markdown(f"Colour = architecture: {legend} · thick = best trial · faded dotted = pruned or failed",
                unsafe_allow_html=True)
    for metric in ("loss", "dice"):
        st.plotly_chart(charts.learning_curves(curves, chosen, colors, best_ids, metric),
                        key=f"curves_{metric}", config={"displaylogo": False})
    last = curves.groupby("trial_id").agg(
        epochs=("epoch", "size"), best_val_dice=("val_dice", "max"), final_train_loss=("train_loss", "last"),
        s_per_epoch=("seconds", "mean"), images_per_s=("images_per_s", "mean"))
    table = chosen.set_index("id")[["label", "state"]].join(last, how="inner").reset_index(drop=True)
    st.dataframe(table.round(4), hide_index=True, column_config={
        "label": "trial", "best_val_dice": "best val dice", "final_train_loss": "final train loss",
        "s_per_epoch": st.column_config.NumberColumn("s / epoch", format="%.1f"),
        "images_per_s": st.column_config.NumberColumn("train images / s", format="%.0f")})


ui.run("Learning curves", "📈", render)
