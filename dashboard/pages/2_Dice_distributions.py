"""Dice distributions: how each trial's per-image test dice spreads, and a paired A/B comparison."""

import streamlit as st

from dashboard import charts, stats
from dashboard import common as ui

DISAGREE_ROWS = 10


def pick_metric() -> str:
    border_aware = st.toggle("Border-aware dice (ignore the trimap's border band)", key="border_aware",
                             help="dice_no_border: pixels of the ambiguous outline band (trimap 3) are left out.")
    return "dice_no_border" if border_aware else "dice"


def distributions(ctx: ui.Context, metric: str) -> None:
    complete = ctx.complete()
    best_ids = [int(i) for i in ctx.best()["id"]]
    names = ui.labels(complete, best_ids)
    chosen = st.multiselect("Trials", list(names), default=best_ids, format_func=names.get,
                            key=f"dist_trials::{ctx.url}::{ctx.sweep}",
                            help="The best trial of each architecture by default; add any complete trial.")
    if not chosen:
        st.info("Choose at least one trial.")
        return
    scores = ctx.query("image_scores", tuple(int(i) for i in chosen))
    if scores.empty:
        st.info("The chosen trials have no per-image results.")
        return
    label_of = {int(r.id): ui.trial_label(r.arch, r.number) for r in complete.itertuples()}
    scores["label"] = scores["trial_id"].map(label_of)
    chosen_rows = complete[complete["id"].isin(chosen)].assign(label=lambda d: d["id"].map(label_of))
    colors = charts.trial_colors(chosen_rows, ctx.colors, set(best_ids))

    summary = stats.summarize(scores, metric)
    summary.insert(1, "trial", summary["trial_id"].map(label_of))
    summary = summary.sort_values("trial")
    st.dataframe(summary.drop(columns="trial_id").round(4), hide_index=True,
                 column_config={"p10": st.column_config.NumberColumn("10th pct", format="%.4f"),
                                "p5": st.column_config.NumberColumn("5th pct", format="%.4f")})
    left, middle, right = st.columns(3)
    with left:
        st.plotly_chart(charts.histogram(scores, metric, colors), key="hist", config={"displaylogo": False})
    with middle:
        st.plotly_chart(charts.violin(scores, metric, colors), key="violin", config={"displaylogo": False})
    with right:
        st.plotly_chart(charts.ecdf(scores, metric, colors), key="ecdf", config={"displaylogo": False})


def paired(ctx: ui.Context, metric: str) -> None:
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
    if a == b:
        st.info("Choose two different trials.")
        return
    pairs = ctx.query("paired_scores", int(a), int(b))
    if pairs.empty:
        st.info("These two trials evaluated no image in common.")
        return
    result = stats.compare_paired(pairs[f"{metric}_a"], pairs[f"{metric}_b"])
    c1, c2, c3 = st.columns(3)
    c1.metric("Mean difference (B − A)", f"{result.mean_diff:+.4f}",
              delta=f"95% CI {result.ci_low:+.4f} to {result.ci_high:+.4f}", delta_color="off", delta_arrow="off")
    c2.metric("Wilcoxon signed-rank p", "–" if result.p_value is None else f"{result.p_value:.3g}")
    c3.metric("Images B better / A better", f"{result.b_better} / {result.a_better}")
    st.caption(f"{result.n} images both trials evaluated; the 95% confidence interval of the mean difference "
               "comes from 2,000 bootstrap resamples of images; the Wilcoxon signed-rank test pairs each image's two "
               "scores (scipy.stats.wilcoxon; no p-value when every pair is equal).")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.paired_scatter(pairs, metric, names[a], names[b]), key="paired",
                      config={"displaylogo": False})
    diff = pairs[f"{metric}_b"] - pairs[f"{metric}_a"]
    disagree = pairs.assign(**{"A": pairs[f"{metric}_a"], "B": pairs[f"{metric}_b"], "B − A": diff}) \
        .reindex(diff.abs().sort_values(ascending=False).index).head(DISAGREE_ROWS)
    right.markdown(f"**Where they disagree most** ({metric.replace('_', ' ')})")
    right.dataframe(disagree[["name", "species", "A", "B", "B − A"]].round(4), hide_index=True)
    right.caption("Open an image in **Hardest images** → *Across all trials* to see both predictions.")


def render(ctx: ui.Context) -> None:
    if ctx.complete().empty:
        st.info("No complete trial yet: per-image test results appear when the first trial finishes.")
        return
    metric = pick_metric()
    distributions(ctx, metric)
    paired(ctx, metric)


ui.run("Dice distributions", "📊", render)
