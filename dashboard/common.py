"""What every dashboard page shares: the database and sweep pickers, cached reads, colours,
and the guidance shown instead of a traceback when there is nothing (readable) to show.

The database is opened once per URL as a read-only `core.store.db.Store` (SQLite `mode=ro`), the
same module the jobs write through. Queries are cached for a few seconds only, so a sweep that
is still running shows up as it goes.

The one write is a person's review mark on an image (core.store.reviews), made only when they click
a mark, through its own engine. A dashboard started read-only (`SEGSWEEP_READ_ONLY=1`, or
`streamlit run dashboard/Home.py -- --read-only`) never writes: it shows marks but no mark buttons.
"""
from __future__ import annotations

import datetime as dt
import importlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import plotly.express as px
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core.store import queries, reviews, selection
from core.store.db import (
    SchemaVersionError,
    Store,
    StoreError,
    decode_mask,
    make_engine,
    normalize_url,
    sqlite_path,
)
from core.data.layout import has_breeds, has_ignore_band
from core.store.engine import error_detail
from core.store.schema import utc_now
from dashboard import images

REPO = Path(__file__).resolve().parents[1]
CACHE_TTL_S = 5
DEFAULT_DB = REPO / "results.db"
PALETTE = px.colors.qualitative.D3
STATE_ORDER = ("running", "complete", "pruned", "failed")
METRIC_LABELS = {  # every per-image metric the pages can show, in menu order
    "dice": "dice", "dice_no_border": "border-aware dice", "iou": "IoU", "precision": "precision",
    "recall": "recall", "fp_area": "false-positive area", "fn_area": "false-negative area",
    "boundary_iou": "Boundary IoU", "hd95": "HD95 (px)", "fp_blobs": "false-positive blobs",
    "entropy": "mean entropy (bits)",
}
MODE_COLORS = {"ok": "#4daf4a", "boundary": "#984ea3", "missed object": "#56b4e9",
               "background leak": "#e69f00", "empty prediction": "#d62728", "not computed": "#bbbbbb"}
READ_ONLY_ENV = "SEGSWEEP_READ_ONLY"
READ_ONLY_FLAG = "--read-only"
UPGRADE_HELP = ("This results store has schema version 1: it holds dice, border-aware dice and IoU per image, but not "
                "why each image fails (failure modes, precision and recall, Boundary IoU, HD95, false-positive blobs, "
                "entropy). The dashboard never writes; upgrade the store in place (its old trials are backfilled from "
                "their masks and the dataset's ground truth), then reload:\n\n```\npython -m jobs.upgrade --db {db}\n```\n\n"
                "Running `jobs.train` or `jobs.sweep` on it upgrades it too.")
CREATE_HELP = """**Create one** by running a sweep from the repository folder, then reload this page:

```
python -m jobs.sweep                         # a quick sweep into results.db here
python -m jobs.sweep --db {db}
```

or point the sidebar (or the `RESULTS_DB` environment variable) at an existing results database."""


def default_database() -> str:
    """$RESULTS_DB (a SQLAlchemy URL or a file path), else results.db at the repository's top level."""
    return os.environ.get("RESULTS_DB") or str(DEFAULT_DB)


@st.cache_resource(show_spinner=False)
def open_store(url: str) -> Store:
    """One read-only Store per database URL for the whole server (raises StoreError)."""
    return Store(url, read_only=True)


def _reader(name: str) -> Callable[..., Any]:
    """core.store.queries.<name>, or core.store.<module>.<function> for a dotted name ("reviews.export_csv")."""
    if "." in name:
        module, function = name.split(".", 1)
        return getattr(importlib.import_module(f"core.store.{module}"), function)
    return getattr(queries, name)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=1024)
def cached_query(name: str, url: str, *args: Any, **kwargs: Any) -> Any:
    """core.store.queries.<name>(store, *args, **kwargs) (or a dotted core.store reader), cached for a few seconds."""
    return _reader(name)(open_store(url), *args, **kwargs)


@st.cache_data(ttl=600, show_spinner=False, max_entries=64)
def _cached_per_version(name: str, url: str, version: Any, *args: Any, **kwargs: Any) -> Any:
    return _reader(name)(open_store(url), *args, **kwargs)


def started_read_only() -> bool:
    """Whether the dashboard was started read-only: SEGSWEEP_READ_ONLY=1 (or true/yes), or `-- --read-only`
    after the script on the streamlit command line. Then nothing is ever written, review marks included."""
    env = os.environ.get(READ_ONLY_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return env or READ_ONLY_FLAG in sys.argv[1:]


@st.cache_resource(show_spinner=False)
def _review_engine(url: str) -> Any:
    """The engine review marks are written through: its own, writable, used only on a person's click."""
    return make_engine(url)


@dataclass
class Context:
    """The database and sweep a page shows, with the sweep's trials."""

    url: str
    sweep: str
    sweeps: pd.DataFrame
    trials: pd.DataFrame
    diagnostics: bool = True  # the store has the v2 per-image diagnostics (a v1 store read as it is has not)
    kinds: dict[str, dict[str, Any]] | None = None  # the sweep's datasets: name -> source, layout, root

    def sources(self) -> list[str | None]:
        """datasets.source of each dataset of the sweep (None where the store does not describe it)."""
        datasets = self.trials["dataset"].unique().tolist() if len(self.trials) else []
        return [((self.kinds or {}).get(d) or {}).get("source") for d in datasets]

    @property
    def has_breeds(self) -> bool:
        """Every dataset of the sweep has breeds and species (core.data.layout.has_breeds)."""
        return all(has_breeds(s) for s in self.sources())

    @property
    def has_ignore_band(self) -> bool:
        """Every dataset of the sweep has an ignore band, which border-aware dice leaves out (core.data.layout)."""
        return all(has_ignore_band(s) for s in self.sources())

    @property
    def metrics(self) -> list[str]:
        """The per-image metrics this store holds, in menu order (border-aware dice only where there is a band)."""
        shown = list(METRIC_LABELS) if self.diagnostics else list(queries.V1_METRICS)
        return shown if self.has_ignore_band else [m for m in shown if m != "dice_no_border"]

    def upgrade_note(self) -> None:
        """On a v1 store: what is missing and the command that upgrades it."""
        if not self.diagnostics:
            path = sqlite_path(self.url) if self.url.startswith("sqlite") else None
            st.info(UPGRADE_HELP.format(db=str(path) if path else self.url))

    def query(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return cached_query(name, self.url, *args, **kwargs)

    def sweep_aggregate(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """A query over every complete trial of the sweep (seconds on huge stores): cached until
        a trial completes or someone marks an image, rather than for a few seconds."""
        done = self.complete()
        version = (self.sweep, len(done), str(done["finished_at"].max()) if len(done) else "",
                   self.query("reviews_version"))
        return _cached_per_version(name, self.url, version, *args, **kwargs)

    @property
    def can_mark(self) -> bool:
        """Whether mark buttons are shown: the store keeps review marks (v4) and the dashboard was not
        started read-only."""
        return not started_read_only() and bool(self.query("has_reviews"))

    def marks(self, dataset: str) -> dict[str, tuple[str, str]]:
        """The dataset's review marks: image name -> (mark, note); none on a store without the reviews table."""
        if not self.query("has_reviews"):
            return {}
        found = self.query("reviews.marks", dataset)
        return {r.image: (r.mark, r.note or "") for r in found.itertuples()}

    @property
    def archs(self) -> list[str]:
        return sorted(self.trials["arch"].unique())

    @property
    def colors(self) -> dict[str, str]:
        return arch_colors(self.archs)

    def best(self) -> pd.DataFrame:
        """Each architecture's result: its refit once complete, else its best complete trial by
        validation dice (core.store.selection)."""
        return self.query("best_trials", self.sweep)

    def complete(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == "complete"]

    def paired(self, a: int, b: int) -> pd.DataFrame | None:
        """Trials a and b scored on the images both evaluated (queries.paired_scores); None, after
        saying why, when there is nothing to compare."""
        if a == b:
            st.info("Choose two different trials.")
            return None
        pairs = self.query("paired_scores", int(a), int(b))
        if pairs.empty:
            st.info("These two trials evaluated no image in common.")
            return None
        return pairs


def arch_colors(archs: Iterable[str]) -> dict[str, str]:
    """A stable colour per architecture (by sorted name), the same on every page."""
    return {arch: PALETTE[i % len(PALETTE)] for i, arch in enumerate(sorted(archs))}


def trial_label(arch: str, number: int) -> str:
    return f"{arch} #{int(number)}"


def labels(trials: pd.DataFrame, best_ids: Iterable[int] = ()) -> dict[int, str]:
    """Trial id -> "arch #n" (with "best" and "refit" marked), for selectors."""
    best = set(int(i) for i in best_ids)

    def mark(r: Any) -> str:
        refit = selection.is_refit(getattr(r, "params", None) if isinstance(getattr(r, "params", None), dict) else None)
        tags = [t for t, on in (("best", int(r.id) in best), ("refit", refit)) if on]
        return f" ({', '.join(tags)})" if tags else ""
    return {int(r.id): trial_label(r.arch, r.number) + mark(r) for r in trials.itertuples()}


def fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and pd.isna(value)) else f"{value:.{digits}f}"


def ago(when: dt.datetime | None) -> str:
    """"12 s ago" for a naive-UTC store timestamp."""
    if when is None or pd.isna(when):
        return "–"
    seconds = (utc_now() - pd.Timestamp(when).to_pydatetime()).total_seconds()
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


# -- the page frame ------------------------------------------------------------------------

def _database_picker() -> str:
    """Sidebar text box for the database; its value is kept in session_state across pages."""
    if "results_db" not in st.session_state:
        st.session_state["results_db"] = default_database()
    text = st.sidebar.text_input(
        "Results database", value=st.session_state["results_db"], key="_results_db_widget",
        help="A SQLAlchemy URL (sqlite:///…, postgresql+psycopg://…) or a SQLite file path. "
             "Default: $RESULTS_DB, else results.db in the repository folder. Opened read-only.")
    st.session_state["results_db"] = text.strip() or default_database()
    return normalize_url(st.session_state["results_db"])


def _explain(kind: str, message: str, url: str, *, taken: bool = False) -> None:
    """`message`, then how to create a store; `taken`: the file at `url` is no store, so the command
    names a new file beside it (never that one: a sweep must not be pointed at someone's file)."""
    path = sqlite_path(url) if url.startswith("sqlite") else None
    db = str(fresh_path(path) if path and taken else path or url)
    getattr(st, kind)(message)
    st.info(CREATE_HELP.format(db=db))
    st.stop()


def fresh_path(taken: Path) -> Path:
    """A file name beside `taken` that nothing uses yet: results.db, else results-2.db, ..."""
    for n in range(1, 1000):
        candidate = taken.with_name("results.db" if n == 1 else f"results-{n}.db")
        if not candidate.exists():
            return candidate
    raise AssertionError(f"no free results-N.db beside {taken}")


def _open_or_explain(url: str) -> Store:
    try:
        path = sqlite_path(url)
    except Exception:  # not parseable as a URL: let Store say so in one line
        path = None
    if path is not None and not path.exists():
        _explain("warning", f"No results database at `{path}`.", url)
    try:
        return open_store(url)
    except SchemaVersionError as exc:
        _explain("error", str(exc), url)
    except StoreError as exc:
        _explain("error", str(exc).splitlines()[0], url, taken=path is not None)
    raise AssertionError("unreachable")


def _sweep_picker(url: str, sweeps: pd.DataFrame) -> str:
    names = sweeps["sweep"].tolist()
    current = st.session_state.get("sweep") or st.query_params.get("sweep")  # ?sweep=NAME opens that sweep
    if current not in names:
        current = names[0]  # the most recently active
    info = sweeps.set_index("sweep")

    def describe(name: str) -> str:
        row = info.loc[name]
        running = f" · {int(row['running'])} running" if row["running"] else ""
        return f"{name} · {int(row['trials'])} trials{running}"

    choice = st.sidebar.selectbox("Sweep", names, index=names.index(current), format_func=describe,
                                  key=f"_sweep_widget::{url}")
    st.session_state["sweep"] = choice
    return choice


def page(title: str, icon: str) -> Context:
    """Page config, sidebar pickers and title; stops the page with guidance when there is nothing to show."""
    st.set_page_config(page_title=f"{title} · SegSweep", page_icon=icon, layout="wide")
    url = _database_picker()
    st.title(title)
    _open_or_explain(url)
    try:
        has_tables = cached_query("has_results_tables", url)
        sweeps = cached_query("sweeps", url) if has_tables else pd.DataFrame()
    except SQLAlchemyError as exc:
        _explain("error", f"Cannot read `{url}`: {error_detail(exc)}", url)
    if sweeps.empty:
        _explain("warning", f"The database `{url}` holds no results yet (no trial recorded).", url)
    sweep = _sweep_picker(url, sweeps)
    trials = cached_query("sweep_trials", url, sweep)
    writes = "started read-only: nothing is written" if started_read_only() else \
        "the only write is a review mark, on your click"
    st.sidebar.caption(f"Reading `{url}`; data refreshes every {CACHE_TTL_S} s; {writes}.")
    return Context(url=url, sweep=sweep, sweeps=sweeps, trials=trials,
                   diagnostics=bool(cached_query("has_diagnostics", url)), kinds=cached_query("dataset_kinds", url))


def run(title: str, icon: str, render: Callable[[Context], None]) -> None:
    """A page: the frame, then `render(ctx)`; database errors end as one line, not a traceback."""
    ctx = page(title, icon)
    try:
        render(ctx)
    except (StoreError, SQLAlchemyError) as exc:
        st.error(f"Cannot read the results database: {error_detail(exc)}")




def pager(total: int, size: int, signature: Any, what: str, key: str = "gallery_page") -> int:
    """How many images match, and the page number input (1-based, session key `key`), reset to 1 when the
    filters (`signature`) change."""
    if total == 0:
        st.info("No image matches the filters.")
        return 1
    pages = max(1, math.ceil(total / size))
    if st.session_state.get(f"_{key}_signature") != signature:
        st.session_state[f"_{key}_signature"] = signature
        st.session_state[key] = 1
    if st.session_state.get(key, 1) > pages:
        st.session_state[key] = pages
    text, box = st.columns([4, 1], vertical_alignment="bottom")
    with box:
        page = int(st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=key))
    start = (page - 1) * size + 1
    text.markdown(f"**{total} images match** · showing {start}–{min(total, start + size - 1)} {what}")
    return page


# -- pictures ------------------------------------------------------------------------------

@st.cache_data(max_entries=512, show_spinner=False)
def _panels(files: images.ImageFiles, eval_size: int, display: int, pngs: tuple[bytes | None, ...]) -> images.Panels:
    preds = [decode_mask(p) if p is not None else None for p in pngs]
    return images.make_panels(files, eval_size, display, preds)


def image_files(ctx: Context, image: Any, eval_size: int) -> images.ImageFiles:
    """Where an image's pictures are (a store row with dataset, name, image id and, v4, path): its dataset's
    recorded root, its file, and its ground truth as scored at `eval_size` where the store keeps it."""
    get = image.get if isinstance(image, dict) else lambda k, d=None: getattr(image, k, d)
    dataset, name = get("dataset"), get("name")
    kind = (ctx.kinds or {}).get(dataset) or {}
    image_id = get("image_id", get("id"))
    truth = ctx.query("truth_pngs", (int(image_id),), int(eval_size)).get(int(image_id)) if image_id is not None else None
    path = get("path")
    return images.image_files(kind.get("root"), name, path if isinstance(path, str) else None,
                              has_ignore_band(kind.get("source")), truth)


def panels(ctx: Context, image: Any, eval_size: int, pngs: Iterable[bytes | None], display: int = 192) -> images.Panels:
    """Photo, ground truth and overlays of one image (see image_files), read from its dataset's recorded root only."""
    files = image_files(ctx, image, eval_size)
    return _panels(files, int(eval_size), max(int(display), int(eval_size)), tuple(pngs))


def legend(ctx: Context) -> None:
    st.markdown(images.legend_html(band=ctx.has_ignore_band), unsafe_allow_html=True)


# -- review marks ------------------------------------------------------------------------------

def mark_line(mark: tuple[str, str] | None) -> str:
    """A card's review line: 'review: **label error** — note', or 'review: not marked yet'."""
    if mark is None:
        return "review: not marked yet"
    verdict, note = mark
    return f"review: **{verdict}**" + (f" — {note}" if note else "")


def save_mark(url: str, dataset: str, image: str, mark: str | None, note: str | None) -> None:
    """Write one review mark (None clears it): the dashboard's only write, made on a person's click; refused when
    the dashboard was started read-only. The caches are cleared so every card and filter shows it at once."""
    if started_read_only():
        st.session_state["_mark_error"] = "The dashboard was started read-only: the mark was not saved."
        return
    try:
        reviews.mark(_review_engine(url), dataset, image, mark, note)
    except (StoreError, SQLAlchemyError, ValueError) as exc:
        st.session_state["_mark_error"] = f"The mark was not saved: {error_detail(exc)}"
        return
    cached_query.clear()
    _cached_per_version.clear()


def mark_error() -> None:
    """Show (once) why the last mark was not saved."""
    message = st.session_state.pop("_mark_error", None)
    if message:
        st.error(message)
