"""SegSweep dashboard, home: which sweep, on which data, how its trials stand, and which won.

Run from the repository folder:  RESULTS_DB=results.db streamlit run dashboard/Home.py
"""

import shlex
from pathlib import Path

import pandas as pd
import streamlit as st

from core.store import selection
from core.store.db import display_url, sqlite_path
from dashboard import common as ui

SORTS = {  # label -> (column, ascending)
    "val dice, best first": ("val dice", False),
    "test dice, best first": ("test dice", False),
    "started, newest first": ("started", False),
    "trial number": ("trial", True),
}
PARAM_COLUMNS = ("lr", "dice_weight", "aug_hflip", "aug_rotate", "aug_brightness", "aug_contrast")
ABOUT = {"synthetic": " — synthetic images, not Oxford-IIIT Pet", "folder": " — your own images"}
TABLE_FORMATS = {
    "val dice": st.column_config.NumberColumn(format="%.4f"),
    "test dice": st.column_config.NumberColumn(format="%.4f"),
    "latest val dice": st.column_config.NumberColumn(format="%.4f"),
    "latest val loss": st.column_config.NumberColumn(format="%.4f"),
    "lr": st.column_config.NumberColumn(format="%.2e"),
}


def trials_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The sweep's trials as shown: one row each, key hyperparameters as columns."""
    params = pd.DataFrame([p or {} for p in trials["params"]], index=trials.index)
    finished = pd.to_datetime(trials["finished_at"])
    started = pd.to_datetime(trials["started_at"])
    table = pd.DataFrame({
        "arch": trials["arch"], "trial": trials["number"], "state": trials["state"],
        "val dice": trials["val_dice"], "test dice": trials["test_dice"], "epochs": trials["epochs_run"],
        "started": started, "minutes": ((finished - started).dt.total_seconds() / 60).round(1),
        "device": trials["device"],
    })
    for col in PARAM_COLUMNS:
        if col in params:
            table[col] = params[col]
    table["error"] = trials["error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
    return table


def layout(info: dict) -> str:
    """How the user's own folder was read (datasets.layout, v4), e.g. ' (paired-folders layout)'."""
    return f" ({info['layout']} layout)" if info["source"] == "folder" and info.get("layout") else ""


def show_dataset(ctx: ui.Context) -> None:
    names = ctx.trials["dataset"].unique().tolist()
    for name in names:
        info = ctx.query("dataset_summary", name)
        if info is None:
            st.markdown(f"**Dataset** `{name}` (not registered in this database)")
            continue
        splits = " · ".join(f"{k} {v}" for k, v in sorted(info["splits"].items()))
        groups = " · ".join(f"{k} {v}" for k, v in info["groups"].items())
        groups = f"  \ngroups: {groups}" if groups else ""
        st.markdown(f"**Dataset** `{name}`{ABOUT.get(info['source'], '')}{layout(info)}  \nimages: {splits}{groups}  \n"
                    f"root: `{info['root']}`")
    sizes = sorted(ctx.trials["image_size"].unique())
    devices = sorted(ctx.trials["device"].unique())
    st.caption(f"Evaluated at {', '.join(f'{s} px' for s in sizes)} · device {', '.join(devices)}")


def show_best(ctx: ui.Context) -> None:
    st.subheader("Result per architecture")
    best = ctx.best()
    if best.empty:
        st.info("No complete trial yet: the best trials appear when the first trial of an architecture finishes.")
        return
    params = pd.DataFrame([p or {} for p in best["params"]])
    table = pd.DataFrame({"arch": best["arch"], "encoder start": [encoder_start(w) for w in best["encoder_weights"]],
                          "trial": best["number"], "val dice": best["val_dice"],
                          "test dice": best["test_dice"], "epochs": best["epochs_run"],
                          "chosen as": [selection.chosen_as(p) for p in best["params"]]})
    for col in ("lr", "dice_weight"):
        if col in params:
            table[col] = params[col].to_numpy()
    st.dataframe(table, hide_index=True, column_config=TABLE_FORMATS)
    st.caption("Each architecture's result is the refit (its best configuration by validation dice, trained "
               "again for the rest of the budget, as an ensemble of networks where the budget trains more than one "
               "long enough, or from its search's weights where the budget is short) once it is complete, else its "
               "trial with the highest validation "
               "dice. Test dice, the mean over test images, chooses nothing.")
    with st.expander("Use a result: segment new images, export the model"):
        st.markdown("Run from the repository folder. `jobs.predict` writes one mask per image at the image's own "
                    "size and `predictions.csv`; `jobs.export` writes an ONNX (or `--format torchscript`) file "
                    "taking RGB 0-255 at the trained size, with its model card beside it (`FILE.json`).")
        for row in best.itertuples():
            kept = isinstance(row.checkpoint, str) and row.checkpoint
            st.markdown(f"**{row.arch}**" + ("" if kept else " — its weights are not on disk: these need them"))
            st.code(use_commands(ctx.url, ctx.sweep, row.arch), language="bash")


def encoder_start(source: str | None) -> str:
    """trials.encoder_weights as a reader wants it: 'imagenet', 'random', or the file's name; a trial from
    before v6 started from random weights."""
    if not isinstance(source, str) or source == "none":
        return "random"
    kind, _, file = source.partition(":")
    return "imagenet" if kind == "imagenet" else Path(file).name


def use_commands(url: str, sweep: str, arch: str) -> str:
    """The jobs.predict and jobs.export commands for one architecture's result (a password stays hidden)."""
    path = sqlite_path(url)
    result = f"--db {shlex.quote(str(path) if path else display_url(url))} --sweep {shlex.quote(sweep)} --arch {arch}"
    return (f"python -m jobs.predict {result} --images YOUR_IMAGES --out predictions-{arch}\n"
            f"python -m jobs.export {result} --format onnx --out {arch}.onnx")


def show_live(ctx: ui.Context) -> None:
    """States, the running trials and the trials table; re-drawn on a timer while the sweep runs."""
    trials = ctx.query("sweep_trials", ctx.sweep)
    counts = trials["state"].value_counts()
    cols = st.columns(len(ui.STATE_ORDER))
    for col, state in zip(cols, ui.STATE_ORDER):
        col.metric(state, int(counts.get(state, 0)))
    running = ctx.query("running_progress", ctx.sweep)
    if not running.empty:
        last = pd.to_datetime(trials["finished_at"]).max()
        st.markdown(f"**Sweep running:** {len(running)} trial(s) in progress; last trial finished {ui.ago(last)}.")
        table = pd.DataFrame({
            "arch": running["arch"], "trial": running["number"], "started": running["started_at"].map(ui.ago),
            "last heartbeat": running["heartbeat_at"].map(ui.ago),
            "epochs done": running["epoch"].map(lambda e: 0 if pd.isna(e) else int(e) + 1),
            "latest val dice": running["val_dice"], "latest val loss": running["val_loss"]})
        st.dataframe(table, hide_index=True, column_config=TABLE_FORMATS)

    st.subheader("Trials")
    sort = st.columns([1, 2])[0].selectbox("Sort by", list(SORTS), key="trial_sort")
    column, ascending = SORTS[sort]
    table = trials_table(trials).sort_values(column, ascending=ascending, na_position="last")
    st.dataframe(table, hide_index=True, column_config=TABLE_FORMATS)
    st.caption("Click a column header to sort by it.")


def render(ctx: ui.Context) -> None:
    ctx.upgrade_note()
    show_dataset(ctx)
    show_best(ctx)
    st.subheader("Trials by state")
    is_running = bool((ctx.trials["state"] == "running").any())
    live = st.toggle(f"Auto-refresh every {ui.CACHE_TTL_S} s", value=is_running, key="auto_refresh",
                     help="Re-reads the database while a sweep is running.")
    st.fragment(show_live, run_every=ui.CACHE_TTL_S if live else None)(ctx)
    others = ctx.sweeps
    if len(others) > 1:
        with st.expander(f"All {len(others)} sweeps in this database"):
            st.dataframe(others, hide_index=True)


ui.run("SegSweep results", "🐾", render)
