"""Hardest images, the failure explorer: which test images a model gets wrong, and how.

Each example shows the image, its ground truth and the prediction overlaid with false positives
and false negatives in their own colours, worst first, a page at a time. The filters in the
sidebar narrow the images down in SQL (see core.store.queries.hardest_images): by score, failure mode,
group (the user's own folders), review mark, split, brightness and size, and where the data has breeds by
breed and species. Every card shows the image's review mark, where the store keeps them.
"""

import math
from typing import Any, Callable

import pandas as pd
import streamlit as st

from core.store.db import sqlite_path
from core.labels import LIKELY_LABEL_ERROR
from core.store.queries import UNIT_RANGE, ImageFilter
from dashboard import common as ui
from dashboard import images

VIEWS = ("Worst images of one trial", "Hard for every model", "Compare two trials")
SCORES = ui.METRIC_LABELS
PAGE_SIZES = (6, 12, 24)
PANEL_PX = 180
MOST_COMMON = "Most common failure mode"  # the every-model view's mode filter, over the sweep's complete trials
SKIP_LABEL_ERRORS = "Leave out likely label errors"
MANY_GROUPS = 8  # more groups than this: a multiselect instead of pills


def _range(label: str, bounds: tuple[float, float], key: str, fmt: str, help: str) -> tuple[float, float] | None:
    """A range slider over the data's bounds; None (no filter) while it spans them all."""
    if bounds[0] is None or bounds[1] is None:
        return None
    lo, hi = (math.floor(bounds[0] * 100) / 100, math.ceil(bounds[1] * 100) / 100)
    if hi <= lo:
        return None
    chosen = st.sidebar.slider(label, lo, hi, (lo, hi), step=0.01, format=fmt, key=key, help=help)
    return None if tuple(chosen) == (lo, hi) else (float(chosen[0]), float(chosen[1]))


def _subset(label: str, options: list[str], key: str, widget: str,
            shown: Callable[[str], str] = str) -> tuple[str, ...] | None:
    """Pills (few options) or a multiselect (many), each option worded by `shown`; None (no filter) while every
    option is in."""
    if not options:
        return None
    if widget == "pills":
        chosen = st.sidebar.pills(label, options, selection_mode="multi", default=options, key=key, format_func=shown)
        return None if set(chosen) == set(options) else tuple(chosen)
    chosen = st.sidebar.multiselect(label, options, key=key, placeholder="all", format_func=shown)
    return tuple(chosen) or None


def filters(ctx: ui.Context, view: str, scope: str) -> tuple[int | None, ImageFilter, int]:
    """The sidebar filters -> (trial id or None for the every-model view, the filter, page size)."""
    st.sidebar.header("Filters")
    trial_id = None
    complete = ctx.complete()
    best = ctx.best()
    if view == VIEWS[0]:
        archs = sorted(complete["arch"].unique())
        arch = st.sidebar.selectbox("Architecture", archs, key=f"arch::{scope}")
        of_arch = complete[complete["arch"] == arch].sort_values("val_dice", ascending=False)
        val = dict(zip(of_arch["id"].astype(int), of_arch["val_dice"]))
        names = {i: f"{name} · val {ui.fmt(val[i])}" for i, name in ui.labels(of_arch, best["id"]).items()}
        ids = list(names)
        best_of_arch = [int(i) for i in best[best["arch"] == arch]["id"]]
        trial_id = st.sidebar.selectbox("Trial", ids, index=ids.index(best_of_arch[0]) if best_of_arch else 0,
                                        format_func=names.get, key=f"trial::{scope}::{arch}",
                                        help="Complete trials of this architecture, best validation dice first.")
    ranks = ctx.metrics + (["failure_mode"] if ctx.diagnostics and view == VIEWS[0] else [])
    metric = st.sidebar.selectbox("Rank by (worst first)", ranks, format_func=lambda m: SCORES.get(m, "failure mode"),
                                  key=f"score::{scope}::{view == VIEWS[0]}",  # the views offer different ranks
                                  help="Worst first: lowest for scores, highest for error metrics (areas, HD95, "
                                       f"blobs, entropy); by failure mode: empty prediction, missed object, "
                                       "background leak, boundary, ok, each worst dice first. Not-computed values "
                                       "come last.")
    score_label = ("median " if view == VIEWS[1] else "") + SCORES.get(metric, "failure mode")
    score = (0.0, 1.0)
    if metric in UNIT_RANGE:
        score = st.sidebar.slider(f"{score_label} range", 0.0, 1.0, (0.0, 1.0), step=0.01, key=f"range::{scope}")
    evaluated = tuple(int(i) for i in best["id"]) or tuple(int(i) for i in complete["id"])
    options = ctx.query("filter_options", (int(trial_id),) if trial_id is not None else evaluated)
    modes = None
    if view == VIEWS[0] and options.get("modes"):
        modes = _subset("Failure mode", options["modes"], f"mode::{scope}::{trial_id}", "pills")
    if view == VIEWS[1] and ctx.diagnostics:
        top = ctx.sweep_aggregate("sweep_top_modes", ctx.sweep)
        modes = _subset(MOST_COMMON, top, f"topmode::{scope}::{','.join(top)}", "pills") if top else None
    skip = False
    if view == VIEWS[1] and ctx.query("has_label_suspicion"):
        skip = st.sidebar.toggle(SKIP_LABEL_ERRORS, key=f"skip_errors::{scope}",
                                 help=f"Leaves out images whose mask is more likely wrong than the image hard: label "
                                      f"suspicion {LIKELY_LABEL_ERROR} or more (see Suspect labels), or marked "
                                      "'label error'; a 'hard image' or 'fine' mark keeps an image whatever its score.")
    groups = _subset("Group", options.get("groups", []), f"group::{scope}",
                     "pills" if len(options.get("groups", [])) <= MANY_GROUPS else "multiselect")
    marks = _subset("Review mark", options.get("marks", []), f"marks::{scope}", "pills")
    breeds = _subset("Breed", options["breeds"], f"breed::{scope}", "multiselect")
    species = _subset("Species", options["species"], f"species::{scope}", "pills")
    splits = _subset("Split", options["splits"], f"split::{scope}", "pills")
    brightness = _range("Brightness (mean luma)", options["brightness"], f"bright::{scope}", "%.2f",
                        "0 = black, 1 = white, measured on the original image")
    fg = _range("Object size (share of pixels)", options["fg_fraction"], f"fg::{scope}", "%.2f",
                "fg_fraction: foreground pixels (the ignore band included, where there is one) over all pixels "
                "of the ground truth")
    size = st.sidebar.selectbox("Images per page", PAGE_SIZES, index=1, key="page_size")
    flt = ImageFilter(metric=metric, score=(float(score[0]), float(score[1])), breeds=breeds, species=species,
                      splits=splits, brightness=brightness, fg_fraction=fg, modes=modes, groups=groups, marks=marks,
                      skip_label_errors=skip)
    return trial_id, flt, size


def describe(row: Any, breeds: bool) -> str:
    """A card's attributes: group (where it has one), breed and species (`breeds`), split, brightness, size."""
    group = getattr(row, "group_name", None)
    parts = [f"group {group}"] if isinstance(group, str) and group else []
    if breeds:
        parts += [row.breed, row.species]
    parts += [row.split, f"brightness {row.brightness:.2f}", f"object {row.fg_fraction:.0%} of the image"]
    return " · ".join(parts)


def value(x: Any, digits: int = 3) -> str:
    """A metric value for a caption; 'not computed' for NULL."""
    return "not computed" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def diagnosis(row: Any) -> str:
    """The caption naming an image's failure mode and the diagnostics behind it."""
    if getattr(row, "failure_mode", None) in (None, "not computed"):
        return "failure mode: not computed (results upgraded from schema version 1 whose dataset was not reachable)"
    blobs = int(row.fp_blobs)
    missed = " · largest object part missed" if row.object_missed else ""
    return (f"failure mode: {row.failure_mode} · precision {row.precision:.2f} · recall {row.recall:.2f} · "
            f"Boundary IoU {row.boundary_iou:.2f} · HD95 {row.hd95:.1f} px · {blobs} false-positive "
            f"blob{'s' if blobs != 1 else ''}{missed} · entropy {value(row.entropy, 2)}")


def review(ctx: ui.Context, row: Any) -> None:
    """The card's review mark, where the store keeps marks."""
    if ctx.query("has_reviews"):
        st.caption(ui.mark_line(ctx.marks(row.dataset).get(row.name)))


def inspect(image_id: int) -> None:
    st.session_state["inspect_image"] = int(image_id)


def show_across_trials(ctx: ui.Context, image_id: int) -> None:
    """One image in every trial of the sweep: its scores table and every stored prediction."""
    info = ctx.query("image_row", image_id)
    rows = ctx.query("image_across_trials", image_id, ctx.sweep)
    with st.container(border=True):
        head, close = st.columns([5, 1])
        close.button("Close", key="close_inspect", on_click=st.session_state.pop, args=("inspect_image", None))
        if info is None or rows.empty:
            head.info("That image has no result in this sweep.")
            return
        head.subheader(f"{info['name']} across every architecture and trial")
        st.caption(describe(pd.Series(info), ctx.has_breeds))
        pngs = ctx.query("mask_pngs", tuple(int(t) for t in rows["trial_id"]), (int(image_id),))
        size = int(rows["image_size"].max())
        first = ui.panels(ctx, info, size, [])
        st.image([first.photo, first.truth], caption=["image", "ground truth"], width=PANEL_PX)
        for note in first.notes:
            st.caption(f"⚠ {note}")
        for arch, group in rows.groupby("arch", sort=True):
            st.markdown(f"**{arch}**")
            for eval_size, same in group.groupby("image_size"):
                p = ui.panels(ctx, info, int(eval_size), [pngs.get((int(t), int(image_id))) for t in same["trial_id"]])
                st.image(p.predictions, width=PANEL_PX - 40, caption=[
                    f"#{r.number} {r.state}: dice {r.dice:.3f}" for r in same.itertuples()])
        extra = [c for c in ("failure_mode", "precision", "recall", "boundary_iou", "hd95", "entropy") if c in rows]
        border = ["dice_no_border"] if ctx.has_ignore_band else []
        table = rows[["arch", "number", "state", "val_dice", "dice", *border, "iou", *extra]].rename(
            columns={"number": "trial", "val_dice": "trial val dice", "dice_no_border": "border-aware dice",
                     "failure_mode": "failure mode", "boundary_iou": "Boundary IoU"})
        st.dataframe(table.round(4), hide_index=True)


def gallery_one_trial(ctx: ui.Context, trial_id: int, flt: ImageFilter, size: int) -> None:
    trial = ctx.trials.set_index("id").loc[trial_id]
    total = ctx.query("count_images", trial_id, flt)
    label = ui.trial_label(trial["arch"], trial["number"])
    order = "by failure mode, worst first" if flt.metric == "failure_mode" else f"worst {SCORES[flt.metric]} first"
    page = ui.pager(total, size, (ctx.sweep, trial_id, flt, size), f"of {label}, {order}")
    rows = ctx.query("hardest_images", trial_id, flt, limit=size, offset=(page - 1) * size)
    if rows.empty:
        return
    pngs = ctx.query("mask_pngs", (trial_id,), tuple(int(i) for i in rows["image_id"]))
    cols = st.columns(2)
    for i, row in enumerate(rows.itertuples()):
        rank = (page - 1) * size + i + 1
        p = ui.panels(ctx, row, int(trial["image_size"]), [pngs.get((trial_id, int(row.image_id)))])
        with cols[i % 2].container(border=True):
            mode = f" · **{row.failure_mode}**" if hasattr(row, "failure_mode") else ""
            shown = "dice" if flt.metric == "failure_mode" else flt.metric
            st.markdown(f"**{rank}. {row.name}** — {SCORES[shown]} **{value(getattr(row, shown))}**{mode}")
            st.image(images.strip([p.photo, p.truth, p.predictions[0]]), width="stretch",
                     caption=f"image | ground truth | prediction of {label}")
            border = f" · border-aware {row.dice_no_border:.3f}" if ctx.has_ignore_band else ""
            st.caption(f"{describe(row, ctx.has_breeds)} · dice {row.dice:.3f}{border} · IoU {row.iou:.3f}")
            if hasattr(row, "failure_mode"):
                st.caption(diagnosis(row))
            review(ctx, row)
            for note in p.notes:
                st.caption(f"⚠ {note}")
            st.button("Across all trials", key=f"inspect_{row.image_id}", on_click=inspect, args=(row.image_id,))


def gallery_every_model(ctx: ui.Context, flt: ImageFilter, size: int) -> None:
    best = ctx.best()
    with st.spinner("Ranking images over every complete trial…"):
        ranked = ctx.sweep_aggregate("image_medians", ctx.sweep, flt)
    n_complete = len(ctx.complete())
    if ctx.diagnostics and not ctx.query("has_summaries"):
        path = sqlite_path(ctx.url) if ctx.url.startswith("sqlite") else None
        st.caption("This store predates the per-image summaries (schema version 3), so this ranking reads every "
                   "per-image result of the sweep: seconds on large stores. `python -m jobs.upgrade --db "
                   f"{path or ctx.url}` adds them in place (the dashboard never writes).")
    page = ui.pager(len(ranked), size, (ctx.sweep, "every", flt, size),
                 f"ranked by median {SCORES[flt.metric]} over the sweep's {n_complete} complete trials, hardest first")
    rows = ranked.iloc[(page - 1) * size:page * size]
    if rows.empty:
        return
    rows = rows.merge(ctx.query("images_by_id", tuple(int(i) for i in rows["image_id"])), on="image_id")
    best_ids = tuple(int(i) for i in best["id"])
    image_ids = tuple(int(i) for i in rows["image_id"])
    pngs = ctx.query("mask_pngs", best_ids, image_ids)
    scores = ctx.query("image_scores", best_ids).set_index(["trial_id", "image_id"])
    eval_size = int(best["image_size"].max())
    for i, row in enumerate(rows.itertuples()):
        rank = (page - 1) * size + i + 1
        p = ui.panels(ctx, row, eval_size, [pngs.get((t, int(row.image_id))) for t in best_ids])
        captions = []
        for b in best.itertuples():
            key = (int(b.id), int(row.image_id))
            value = scores[flt.metric].get(key) if key in scores.index else None
            captions.append(f"{ui.trial_label(b.arch, b.number)} (best) {ui.fmt(value)}")
        with st.container(border=True):
            st.markdown(f"**{rank}. {row.name}** — median {SCORES[flt.metric]} **{row.median:.3f}** over "
                        f"{row.trials} trials (mean {row.mean:.3f}, worst {row.min:.3f}, best {row.max:.3f})")
            st.image(images.strip([p.photo, p.truth, *p.predictions]), width="content",
                     caption=" | ".join(["image", "ground truth", *captions]))
            st.caption(describe(row, ctx.has_breeds))
            if hasattr(row, "mode"):
                st.caption(f"most common failure mode: {row.mode}, in {row.mode_trials} of "
                           f"{row.evaluated} trials")
            suspicion = getattr(row, "label_suspicion", None)
            if suspicion is not None and not pd.isna(suspicion):
                likely = " (likely a label error)" if suspicion >= LIKELY_LABEL_ERROR else ""
                st.caption(f"label suspicion {suspicion:.2f}{likely}: see Suspect labels")
            review(ctx, row)
            for note in p.notes:
                st.caption(f"⚠ {note}")
            st.button("Across all trials", key=f"inspect_{row.image_id}", on_click=inspect, args=(row.image_id,))


def compare_two_trials(ctx: ui.Context, scope: str) -> None:
    """One image under two chosen trials, side by side: both overlays, both sets of metrics."""
    complete, best = ctx.complete(), ctx.best()
    if len(complete) < 2:
        st.info(f"Comparing needs two complete trials; this sweep has {len(complete)} so far.")
        return
    names = ui.labels(complete, best["id"])
    ids = list(names)
    defaults = [int(i) for i in best["id"]] + [i for i in ids if i not in set(best["id"].astype(int))]
    st.sidebar.header("Compare")
    a = st.sidebar.selectbox("Trial A", ids, index=ids.index(defaults[0]), format_func=names.get, key=f"cmp_a::{scope}")
    b = st.sidebar.selectbox("Trial B", ids, index=ids.index(defaults[1]), format_func=names.get, key=f"cmp_b::{scope}")
    pairs = ctx.paired(a, b)
    if pairs is None:
        return
    pairs = pairs.assign(gap=(pairs["dice_b"] - pairs["dice_a"]).abs()).sort_values(["gap", "image_id"],
                                                                                    ascending=[False, True])
    label_of = dict(zip(pairs["image_id"].astype(int), pairs["name"]))
    gap_of = dict(zip(pairs["image_id"].astype(int), pairs["gap"]))
    image_id = st.selectbox("Image (largest dice difference first)", list(label_of),
                            format_func=lambda i: f"{label_of[i]} · |Δ dice| {gap_of[i]:.3f}", key=f"cmp_img::{scope}")
    row = pairs[pairs["image_id"] == image_id].iloc[0]
    info = ctx.query("image_row", int(image_id))
    trials = ctx.trials.set_index("id")
    size = int(max(trials.loc[a, "image_size"], trials.loc[b, "image_size"]))
    pngs = ctx.query("mask_pngs", (int(a), int(b)), (int(image_id),))
    ui.legend(ctx)
    shown = []
    for t in (a, b):
        p = ui.panels(ctx, info, int(trials.loc[t, "image_size"]), [pngs.get((int(t), int(image_id)))], display=size)
        shown.append(p)
    with st.container(border=True):
        st.markdown(f"**{info['name']}** under **A: {names[a]}** and **B: {names[b]}**")
        st.image(images.strip([shown[0].photo, shown[0].truth, shown[0].predictions[0], shown[1].predictions[0]]),
                 caption=f"image | ground truth | A: {names[a]} | B: {names[b]}", width="content")
        for note in shown[0].notes:
            st.caption(f"⚠ {note}")
        metrics = [m for m in ctx.metrics if f"{m}_a" in row] + (["failure_mode"] if "failure_mode_a" in row else [])
        cell = lambda x: x if isinstance(x, str) else value(x if x is None else float(x), 4)  # noqa: E731
        table = pd.DataFrame({"metric": [SCORES.get(m, "failure mode") for m in metrics],
                              "A": [cell(row[f"{m}_a"]) for m in metrics], "B": [cell(row[f"{m}_b"]) for m in metrics]})
        st.dataframe(table, hide_index=True)
        if "failure_mode_a" in row:
            st.caption(f"failure mode: A {row['failure_mode_a']} · "
                       f"B {row['failure_mode_b']}")


def render(ctx: ui.Context) -> None:
    if ctx.complete().empty:
        st.info("No complete trial yet: per-image results appear when the first trial finishes.")
        return
    ctx.upgrade_note()
    view = st.radio("View", VIEWS, horizontal=True, key="gallery_view", label_visibility="collapsed")
    scope = f"{ctx.url}::{ctx.sweep}"
    if view == VIEWS[2]:
        compare_two_trials(ctx, scope)
        return
    trial_id, flt, size = filters(ctx, view, scope)
    ui.legend(ctx)
    if "inspect_image" in st.session_state:
        show_across_trials(ctx, st.session_state["inspect_image"])
    if view == VIEWS[0]:
        gallery_one_trial(ctx, int(trial_id), flt, size)
    else:
        gallery_every_model(ctx, flt, size)


ui.run("Hardest images", "🔍", render)
