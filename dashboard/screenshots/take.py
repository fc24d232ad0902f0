"""Screenshot every dashboard page with headless Chromium, for the README.

    python dashboard/screenshots/take.py results.db                 # the most recent sweep
    python dashboard/screenshots/take.py sqlite:///x.db --sweep NAME --out /tmp/shots
    python dashboard/screenshots/take.py busi.db --only suspect_labels.png hardest_images_folder.png

Starts `streamlit run dashboard/Home.py` on a free 127.0.0.1 port against the database (a
SQLAlchemy URL or a file path), opens each page in Debian's /usr/bin/chromium through
Playwright, waits for its charts or gallery, and writes one PNG per page (palette-reduced
when needed to stay under 300 KB).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from core.store.db import normalize_url
from dashboard.serve import PAGES, dashboard, launch_chromium, wait_until_idle

HERE = Path(__file__).resolve().parent
MAX_BYTES = 300_000
WIDTH = 1440
SHOTS = {  # file -> (page, viewport height, what must be on screen: a text, or a count of charts)
    "home.png": ("home", 1250, "Result per architecture"),
    "learning_curves.png": ("curves", 1150, 2),
    "dice_distributions.png": ("distributions", 1500, 4),
    "hardest_images.png": ("hardest", 1350, "images match"),
    "sweep_insights.png": ("insights", 2300, "Hyperparameters vs the hardest images"),
    "suspect_labels.png": ("suspects", 1500, "images match"),       # of a sweep on the user's own folder
    "hardest_images_folder.png": ("hardest", 1350, "images match"),  # the gallery on the user's own folder
}


def small_png(png: bytes, limit: int = MAX_BYTES) -> bytes:
    """The PNG as is when under `limit`, else reduced to a palette (octree keeps small areas of
    distinct colour, like the overlay's false negatives, that median cut merges away)."""
    if len(png) <= limit:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (256, 128, 64):
        out = io.BytesIO()
        image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            out, format="PNG", optimize=True)
        if out.tell() <= limit:
            break
    return out.getvalue()


def take(db: str, out_dir: Path, sweep: str | None = None, timeout_ms: int = 60_000,
         only: list[str] | None = None) -> list[Path]:
    """Write one screenshot per page (or the `only` ones of SHOTS) into out_dir; returns the files written."""
    unknown = sorted(set(only or ()) - set(SHOTS))
    if unknown:
        raise SystemExit(f"take.py: no shot named {', '.join(unknown)}; choose from {', '.join(SHOTS)}")
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    query = f"?sweep={quote(sweep)}" if sweep else ""
    written = []
    with dashboard(normalize_url(db)) as base, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for filename, (name, height, expect) in SHOTS.items():
                if only and filename not in only:
                    continue
                page = browser.new_page(viewport={"width": WIDTH, "height": height})
                page.set_default_timeout(timeout_ms)
                page.goto(f"{base}/{PAGES[name]}{query}", wait_until="domcontentloaded")
                if isinstance(expect, str):
                    page.get_by_text(expect).first.wait_for()
                else:
                    page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot').length >= n",
                                           arg=expect)
                wait_until_idle(page, timeout_ms)
                page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
                page.wait_for_function("() => [...document.images].every(i => i.complete)")
                page.wait_for_timeout(800)  # plotly's transitions
                path = out_dir / filename
                path.write_bytes(small_png(page.screenshot()))
                written.append(path)
                page.close()
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Screenshot every dashboard page (headless Chromium).")
    p.add_argument("db", help="results database: SQLAlchemy URL or SQLite file path")
    p.add_argument("--sweep", default=None, help="sweep to show (default: the most recently active)")
    p.add_argument("--out", type=Path, default=HERE, help=f"folder for the PNGs (default {HERE})")
    p.add_argument("--only", nargs="+", default=None, metavar="FILE", help=f"just these shots, of {', '.join(SHOTS)}")
    args = p.parse_args(argv)
    for path in take(args.db, args.out, args.sweep, only=args.only):
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
