"""Suspect labels: the sweep's test images whose mask is more likely wrong than the image hard, for review.

Ranked by sweep_images.label_suspicion (core.labels: high when the sweep's models agree with each other,
and are sure, against the mask; low when they disagree among themselves or are unsure). Each card shows the image, its
mask exactly as scored, the models' consensus (per pixel, the share of models voting foreground) and the
consensus against the mask, with the score's parts. A person marks an image 'label error', 'hard image'
or 'fine', with an optional note: the dashboard's only write, made on that click (never when started
read-only); the marks download as CSV (name, path, mark, note, score) for relabelling in another tool.
"""

import re
from typing import Any

import pandas as pd
import streamlit as st

from core import labels
from core.labels import LIKELY_LABEL_ERROR, MIN_TRIALS
from core.store.db import encode_mask, sqlite_path
from core.store.queries import NO_GROUP, UNMARKED, ImageFilter
from core.store.schema import REVIEW_MARKS
from dashboard import common as ui
from dashboard import images

PAGE_SIZES = (6, 12, 24)
PANEL_PX = 170
NOT_SCORED = (f"not scored: the score needs at least {MIN_TRIALS} complete trials with a mask of the image and its "
              "truth as scored (recorded by evaluations since schema version 4)")


def ranked(ctx: ui.Context) -> pd.DataFrame:
    """The sweep's test images, most suspect first (core.store.queries.suspects), with dataset, the models'
    median entropy (the score's certainty is 1 minus it) and review mark."""
    frame = ctx.sweep_aggregate("suspects", ctx.sweep)
    if frame.empty:
        return frame.assign(dataset=[], entropy=[], mark=[], note=[])
    datasets = ctx.query("images_by_id", tuple(int(i) for i in frame["image_id"]))[["image_id", "dataset"]]
    frame = frame.merge(datasets, on="image_id", how="left")
    if ctx.diagnostics:
        entropy = ctx.sweep_aggregate("image_medians", ctx.sweep, ImageFilter(metric="entropy"))
        frame = frame.merge(entropy[["image_id", "median"]].rename(columns={"median": "entropy"}), on="image_id",
                            how="left")
    else:
        frame = frame.assign(entropy=float("nan"))
    marks = {d: ctx.marks(d) for d in frame["dataset"].dropna().unique()}
    found = [marks.get(d, {}).get(n) for d, n in zip(frame["dataset"], frame["name"])]
    return frame.assign(mark=[m[0] if m else UNMARKED for m in found], note=[m[1] if m else "" for m in found])


def filters(ctx: ui.Context, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The sidebar's group and review-mark filters applied; returns the rows kept and the page size."""
    st.sidebar.header("Filters")
    groups = sorted(g for g in frame["group_name"].dropna().unique())
    if groups:
        options = groups + ([NO_GROUP] if frame["group_name"].isna().any() else [])
        chosen = st.sidebar.pills("Group", options, selection_mode="multi", default=options,
                                  key=f"suspect_groups::{ctx.url}::{ctx.sweep}")
        frame = frame[frame["group_name"].fillna(NO_GROUP).isin(chosen)]
    marks = [UNMARKED, *REVIEW_MARKS]
    chosen = st.sidebar.pills("Review mark", marks, selection_mode="multi", default=marks,
                              key=f"suspect_marks::{ctx.url}::{ctx.sweep}")
    frame = frame[frame["mark"].isin(chosen)]
    size = st.sidebar.selectbox("Images per page", PAGE_SIZES, index=0, key="suspect_page_size")
    return frame, size


def export(ctx: ui.Context, datasets: list[str]) -> None:
    """One CSV download of the review marks per dataset of the sweep (a read: offered read-only too)."""
    for dataset in datasets:
        marked = len(ctx.marks(dataset))
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset).strip("-") or "dataset"
        st.download_button(f"Download the review marks as CSV ({marked} marked{f' in {dataset}' if len(datasets) > 1 else ''})",
                           data=ctx.query("reviews.export_csv", dataset, ctx.sweep), file_name=f"review-marks-{slug}.csv",
                           mime="text/csv", key=f"export::{dataset}", disabled=not marked,
                           help="Columns name, path (relative to the dataset root), mark, note, score (this sweep's "
                                "label suspicion): for relabelling in another tool.")


def _click(url: str, dataset: str, name: str, mark: str | None, note_key: str) -> None:
    ui.save_mark(url, dataset, name, mark, st.session_state.get(note_key))


def mark_controls(ctx: ui.Context, row: Any) -> None:
    """A note and one button per mark (and 'clear'): a click writes the mark. Not shown when read-only."""
    if not ctx.can_mark:
        return
    key = f"{row.dataset}::{row.name}"
    note_key = f"note::{key}"
    if note_key not in st.session_state:
        st.session_state[note_key] = row.note
    note, *buttons = st.columns([3, 1, 1, 1, 1], vertical_alignment="bottom")
    note.text_input("Note", key=note_key, placeholder="note (optional)", label_visibility="collapsed")
    for column, mark in zip(buttons, (*REVIEW_MARKS, None)):
        column.button(mark or "clear", key=f"mark::{key}::{mark}", on_click=_click,
                      args=(ctx.url, row.dataset, row.name, mark, note_key), width="stretch",
                      type="primary" if mark is not None and mark == row.mark else "secondary",
                      disabled=mark is None and row.mark == UNMARKED)


def trust(ctx: ui.Context, frame: pd.DataFrame) -> str | None:
    """How far the ranking can be trusted: how many models vote and how good they are (their median test dice);
    with weak models a warning that the ranking is a shortlist (core.labels.SHORTLIST_BELOW_DICE). None before
    core.labels.MIN_TRIALS models vote."""
    voters = int(frame["trials"].max()) if frame["trials"].notna().any() else 0
    dice = ctx.complete()["test_dice"].dropna()
    if voters < labels.MIN_TRIALS or dice.empty:
        return None
    line = f"{voters} models vote, at a median test dice of {dice.median():.2f}."
    if dice.median() < labels.SHORTLIST_BELOW_DICE:
        line = (f"⚠ {line} With models this weak (median test dice below {labels.SHORTLIST_BELOW_DICE:.2f}) the "
                "ranking is a shortlist to review, not a verdict: weak models are often unanimous, sure and wrong. How "
                "often it finds planted wrong masks: docs/benchmarks.md, 'Suspect labels on planted errors'.")
    return line


def parts(row: Any) -> str:
    """The score's parts as a caption."""
    if pd.isna(row.label_suspicion):
        return NOT_SCORED
    group = f"group {row.group_name} · " if isinstance(row.group_name, str) else ""
    certainty = "–" if pd.isna(row.entropy) else f"{1 - min(max(row.entropy, 0.0), 1.0):.2f}"
    evidence = "" if pd.isna(row.image_evidence) else f" · image evidence {row.image_evidence:.2f}"
    return (f"{group}{row.split} · contradiction {row.contradiction:.2f} · certainty {certainty}{evidence} · consensus "
            f"dice {row.consensus_dice:.2f} · agreement {row.agreement:.2f} · median dice {ui.fmt(row.dice_median, 2)} "
            f"over {int(row.trials)} trials")


def card(ctx: ui.Context, rank: int, row: Any, size: int) -> None:
    """Image | mask as scored | consensus votes | consensus against the mask, the score's parts, the review."""
    share = ctx.query("consensus", ctx.sweep, int(row.image_id))
    eval_size = int(share.shape[0]) if share is not None else size
    majority = [encode_mask(labels.majority(share, 1))] if share is not None and share.ndim == 2 and share.size else [None]
    p = ui.panels(ctx, row, eval_size, majority, display=PANEL_PX)
    votes = images.vote_panel(share, PANEL_PX) if share is not None else images.placeholder(PANEL_PX, "no votes stored")
    with st.container(border=True):
        score = "not scored" if pd.isna(row.label_suspicion) else f"**{row.label_suspicion:.3f}**"
        likely = " · likely a label error" if not pd.isna(row.label_suspicion) and \
            row.label_suspicion >= LIKELY_LABEL_ERROR else ""
        st.markdown(f"**{rank}. {row.name}** — label suspicion {score}{likely}")
        st.image(images.strip([p.photo, p.truth, votes, p.predictions[0]]), width="content",
                 caption="image | mask as scored | consensus (white: every model says foreground) | "
                         "consensus against the mask")
        st.caption(parts(row))
        st.caption(ui.mark_line(None if row.mark == UNMARKED else (row.mark, row.note)))
        for note in p.notes:
            st.caption(f"⚠ {note}")
        mark_controls(ctx, row)


def render(ctx: ui.Context) -> None:
    if not ctx.query("has_label_suspicion"):
        path = sqlite_path(ctx.url) if ctx.url.startswith("sqlite") else None
        st.info("This store predates the suspect-label score and review marks (schema version 4). The dashboard never "
                f"upgrades it; `python -m jobs.upgrade --db {path or ctx.url}` does, in place, then reload.")
        return
    ui.mark_error()
    frame = ranked(ctx)
    if frame.empty:
        st.info("No complete trial has per-image results in this sweep yet: images are ranked once trials finish.")
        return
    st.caption(f"Images whose models agree with each other, and are sure, yet not with the mask come first: likely "
               f"label errors (label suspicion ≥ {LIKELY_LABEL_ERROR}). Images the models disagree on, or are unsure "
               "about, are hard rather than mislabelled and score low. Its parts: contradiction (the share of mask and "
               "consensus where the models unanimously contradict the mask), certainty (1 − the models' median "
               "entropy), image evidence (above 1 where the image's own edges follow the models' outline rather than "
               "the mask's), consensus dice, agreement, median dice; the formula is in docs/metrics.md, 'Across a sweep: suspect labels'.")
    said = trust(ctx, frame)
    if said:
        st.caption(said)
    export(ctx, sorted(frame["dataset"].dropna().unique()))
    if ui.started_read_only():
        st.caption("Started read-only: marks are shown, not written.")
    st.markdown(images.legend_html(band=ctx.has_ignore_band, title="Consensus against the mask"),
                unsafe_allow_html=True)
    frame, size = filters(ctx, frame)
    page = ui.pager(len(frame), size, (ctx.sweep, hash(tuple(frame["image_id"])), size),
                    "most suspect first", key="suspect_page")
    rows = frame.iloc[(page - 1) * size:page * size]
    eval_size = int(ctx.complete()["image_size"].max()) if len(ctx.complete()) else 64
    for i, row in enumerate(rows.itertuples()):
        card(ctx, (page - 1) * size + i + 1, row, eval_size)
    if frame["label_suspicion"].isna().all() and len(frame):
        st.info(NOT_SCORED[0].upper() + NOT_SCORED[1:] + ".")


ui.run("Suspect labels", "🏷️", render)
