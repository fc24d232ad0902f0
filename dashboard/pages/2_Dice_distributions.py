"""Dice distributions: how each trial's per-image test dice (or any other per-image metric) spreads,
a paired A/B comparison, the failure modes per architecture, and whether a model knows when it fails.
On the user's own data with groups (images.group_name) the distributions and the comparison can be
narrowed to some of them."""

import pandas as pd
import streamlit as st

from core.metrics import FAILURE_MODES, NOT_COMPUTED
from core.store.queries import LOWER_IS_BETTER, NO_GROUP
from dashboard import charts, stats
from dashboard import common as ui

DISAGREE_ROWS = 10


def pick_metric(ctx: ui.Context) -> str:
    metric = "dice"
    if ctx.diagnostics:
        choices = [m for m in ctx.metrics if m != "dice_no_border"]
        metric = st.selectbox("Metric", choices, format_func=ui.METRIC_LABELS.get, key="dist_metric",
                              help="Every per-image metric of the store; see docs/metrics.md, 'Why an image fails: the diagnostics'. "
                                   "For error metrics (areas, HD95, blobs, entropy) the worst values are the highest.")
    if not ctx.has_ignore_band:  # no ignore band: border-aware dice would only repeat dice
        return metric
    border_aware = st.toggle("Border-aware dice (leave out the ignore band)", key="border_aware",
                             disabled=metric != "dice",
                             help="dice_no_border: pixels of the ambiguous outline band (Oxford-IIIT Pet's trimap "
                                  "border) are left out.")
    return "dice_no_border" if border_aware and metric == "dice" else metric


def pick_groups(ctx: ui.Context) -> tuple[str, ...] | None:
    """The groups to show (pills, every group at first); None when the images have no groups or all are in."""
    groups = ctx.query("filter_options", tuple(int(i) for i in ctx.complete()["id"]))["groups"]
    if not groups:
        return None
    chosen = st.pills("Group", groups, selection_mode="multi", default=groups, key=f"dist_groups::{ctx.url}::{ctx.sweep}",
                      help="images.group_name: the folder or name part the images were grouped by.")
    return None if set(chosen) == set(groups) else tuple(chosen)


def in_groups(frame: pd.DataFrame, groups: tuple[str, ...] | None) -> pd.DataFrame:
    """The rows of images in `groups` (NO_GROUP: images without one); all rows for None."""
    if groups is None or "group_name" not in frame:
        return frame
    return frame[frame["group_name"].fillna(NO_GROUP).isin(groups)]


def distributions(ctx: ui.Context, metric: str, groups: tuple[str, ...] | None) -> None:
    complete = ctx.complete()
    best_ids = [int(i) for i in ctx.best()["id"]]
    names = ui.labels(complete, best_ids)
    chosen = st.multiselect("Trials", list(names), default=best_ids, format_func=names.get,
                            key=f"dist_trials::{ctx.url}::{ctx.sweep}",
                            help="The best trial of each architecture by default; add any complete trial.")
    if not chosen:
        st.info("Choose at least one trial.")
        return
    scores = in_groups(ctx.query("image_scores", tuple(int(i) for i in chosen)), groups)
    if scores.empty:
        st.info("The chosen trials have no per-image results" + (" in the chosen groups." if groups is not None else "."))
        return
    label_of = {int(r.id): ui.trial_label(r.arch, r.number) for r in complete.itertuples()}
    scores["label"] = scores["trial_id"].map(label_of)
    chosen_rows = complete[complete["id"].isin(chosen)].assign(label=lambda d: d["id"].map(label_of))
    colors = charts.trial_colors(chosen_rows, ctx.colors, set(best_ids))

    lower = metric in LOWER_IS_BETTER
    summary = stats.summarize(scores, metric, lower_is_better=lower)
    if summary.empty:
        st.info(f"No {ui.METRIC_LABELS[metric]} for the chosen trials: not computed (results upgraded from "
                "schema version 1 have no entropy; their dataset may have been unreachable for the rest).")
        return
    scores = scores[scores[metric].notna()]
    summary.insert(1, "trial", summary["trial_id"].map(label_of))
    summary = summary.sort_values("trial")
    st.dataframe(summary.drop(columns="trial_id").round(4), hide_index=True,
                 column_config={"p10": st.column_config.NumberColumn("90th pct" if lower else "10th pct", format="%.4f"),
                                "p5": st.column_config.NumberColumn("95th pct" if lower else "5th pct", format="%.4f")})
    left, middle, right = st.columns(3)
    with left:
        st.plotly_chart(charts.histogram(scores, metric, colors), key="hist", config={"displaylogo": False})
    with middle:
        st.plotly_chart(charts.violin(scores, metric, colors), key="violin", config={"displaylogo": False})
    with right:
        st.plotly_chart(charts.ecdf(scores, metric, colors), key="ecdf", config={"displaylogo": False})


def paired(ctx: ui.Context, metric: str, groups: tuple[str, ...] | None) -> None:
    st.subheader("Paired comparison, image by image")
    complete = ctx.complete()
    best = ctx.best()
    if len(complete) < 2:
        st.info("A paired comparison needs two complete trials; this sweep has "
                f"{len(complete)} so far.")
        return
    names = ui.labels(complete, best["id"])
    ids = list(names)
    defaults = [int(i) for i in best["id"]] + [i for i in ids if i not in set(best["id"])]
    col_a, col_b = st.columns(2)
    a = col_a.selectbox("A", ids, index=ids.index(defaults[0]), format_func=names.get,
                        key=f"pair_a::{ctx.url}::{ctx.sweep}")
    b = col_b.selectbox("B", ids, index=ids.index(defaults[1]), format_func=names.get,
                        key=f"pair_b::{ctx.url}::{ctx.sweep}")
    pairs = ctx.paired(a, b)
    if pairs is None:
        return
    pairs = in_groups(pairs, groups)
    pairs = pairs[pairs[f"{metric}_a"].notna() & pairs[f"{metric}_b"].notna()]
    if pairs.empty:
        st.info(f"No image has {ui.METRIC_LABELS[metric]} in both trials (not computed).")
        return
    result = stats.compare_paired(pairs[f"{metric}_a"], pairs[f"{metric}_b"])
    c1, c2, c3 = st.columns(3)
    c1.metric("Mean difference (B − A)", f"{result.mean_diff:+.4f}",
              delta=f"95% CI {result.ci_low:+.4f} to {result.ci_high:+.4f}", delta_color="off", delta_arrow="off")
    c2.metric("Wilcoxon signed-rank p", "–" if result.p_value is None else f"{result.p_value:.3g}")
    better = (result.a_better, result.b_better) if metric in LOWER_IS_BETTER else (result.b_better, result.a_better)
    c3.metric("Images B better / A better", f"{better[0]} / {better[1]}")
    st.caption(f"{result.n} images both trials evaluated; the 95% confidence interval of the mean difference "
               "comes from 2,000 bootstrap resamples of images; the Wilcoxon signed-rank test pairs each image's two "
               "scores (scipy.stats.wilcoxon; no p-value when every pair is equal).")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.paired_scatter(pairs, metric, names[a], names[b]), key="paired",
                      config={"displaylogo": False})
    diff = pairs[f"{metric}_b"] - pairs[f"{metric}_a"]
    disagree = pairs.assign(**{"A": pairs[f"{metric}_a"], "B": pairs[f"{metric}_b"], "B − A": diff}) \
        .reindex(diff.abs().sort_values(ascending=False).index).head(DISAGREE_ROWS)
    right.markdown(f"**Where they disagree most** ({ui.METRIC_LABELS[metric]})")
    about = ["species"] if ctx.has_breeds else ["group_name"] if disagree["group_name"].notna().any() else []
    right.dataframe(disagree[["name", *about, "A", "B", "B − A"]].rename(columns={"group_name": "group"}).round(4),
                    hide_index=True)
    right.caption("Open an image in **Hardest images** → *Across all trials* to see both predictions.")


def failure_modes(ctx: ui.Context) -> None:
    """Share of test images per failure mode: each architecture's best trial, and all its complete trials."""
    st.subheader("Failure modes")
    complete, best = ctx.complete(), ctx.best()
    counts = ctx.sweep_aggregate("failure_mode_counts", tuple(int(i) for i in complete["id"]))  # every row: cached
    if counts.empty:
        st.info("No per-image results with failure modes yet.")
        return
    arch_of = dict(zip(complete["id"].astype(int), complete["arch"]))
    number_of = dict(zip(best["id"].astype(int), best["number"]))
    counts = counts.assign(arch=counts["trial_id"].map(arch_of))
    rows = {}
    for arch in sorted(counts["arch"].dropna().unique()):
        of_arch = counts[counts["arch"] == arch]
        for tid in best[best["arch"] == arch]["id"].astype(int):
            rows[f"{arch} · best trial #{number_of[tid]}"] = of_arch[of_arch["trial_id"] == tid] \
                .groupby("failure_mode")["images"].sum()
        n = of_arch["trial_id"].nunique()
        rows[f"{arch} · sweep ({n} trials)"] = of_arch.groupby("failure_mode")["images"].sum()
    table = pd.DataFrame(rows).T.fillna(0)
    order = [m for m in (*FAILURE_MODES, NOT_COMPUTED) if m in table.columns]
    shares = table[order].div(table.sum(axis=1), axis=0)
    st.plotly_chart(charts.failure_mode_bars(shares, ui.MODE_COLORS), key="failure_modes",
                    config={"displaylogo": False})
    shown = shares.assign(images=table.sum(axis=1).astype(int)).rename_axis("trials").reset_index()
    st.dataframe(shown, hide_index=True, column_config={
        m: st.column_config.NumberColumn(m, format="percent") for m in order})
    st.caption("One mode per image, by the rule in docs/metrics.md (*Failure modes*): `empty prediction`, then `ok` "
               "(dice ≥ 0.9 and Boundary IoU ≥ 0.4), `boundary` (precision and recall ≥ 0.8), else the larger "
               f"error: `missed object` or `background leak`. *Sweep* pools every complete trial "
               "of the architecture.")


def confidence(ctx: ui.Context, groups: tuple[str, ...] | None) -> None:
    """Does a model know when it fails? Per image, mean entropy against dice, and Spearman's rho per trial."""
    st.subheader("Confidence against dice")
    complete = ctx.complete()
    best_ids = [int(i) for i in ctx.best()["id"]]
    names = ui.labels(complete, best_ids)
    chosen = st.multiselect("Trials", list(names), default=best_ids, format_func=names.get,
                            key=f"conf_trials::{ctx.url}::{ctx.sweep}")
    scores = in_groups(ctx.query("image_scores", tuple(int(i) for i in chosen)), groups) if chosen else pd.DataFrame()
    if scores.empty or "entropy" not in scores or scores["entropy"].isna().all():
        st.info("No entropy for the chosen trials: it is recorded at evaluation from the model's probabilities, "
                "so trials upgraded from schema version 1 have none.")
        return
    scores = scores[scores["entropy"].notna()]
    label_of = {int(r.id): ui.trial_label(r.arch, r.number) for r in complete.itertuples()}
    scores = scores.assign(label=scores["trial_id"].map(label_of))
    chosen_rows = complete[complete["id"].isin(chosen)].assign(label=lambda d: d["id"].map(label_of))
    colors = charts.trial_colors(chosen_rows, ctx.colors, set(best_ids))
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.confidence_scatter(scores, colors), key="confidence", config={"displaylogo": False})
    rho = pd.DataFrame([{"trial": label_of[int(t)], "images": len(g), "mean entropy": g["entropy"].mean(),
                         "Spearman ρ (entropy, dice)": stats.spearman(g["entropy"], g["dice"])}
                        for t, g in scores.groupby("trial_id")])
    right.dataframe(rho.round(3), hide_index=True)
    right.caption("Entropy is the mean binary entropy of the image's predicted probabilities (0 = certain, "
                  "1 bit = a coin flip). A strongly negative ρ means the model is unsure exactly where it fails, "
                  "so its uncertainty can flag images for review; ρ near 0 means it fails confidently.")


def render(ctx: ui.Context) -> None:
    if ctx.complete().empty:
        st.info("No complete trial yet: per-image test results appear when the first trial finishes.")
        return
    ctx.upgrade_note()
    metric = pick_metric(ctx)
    groups = pick_groups(ctx)
    distributions(ctx, metric, groups)
    paired(ctx, metric, groups)
    if ctx.diagnostics:
        failure_modes(ctx)
        confidence(ctx, groups)


ui.run("Dice distributions", "📊", render)
