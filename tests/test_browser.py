"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against a
`streamlit run dashboard/Home.py` server on a free local port."""
from __future__ import annotations

import re
import time
from pathlib import Path

import optuna
import pytest

from core.store.queries import ImageFilter, best_trials, count_images, filter_options, hardest_images
from core.store.db import Store
from core.data.synthetic import generate_synthetic
from dashboard.demo_store import DemoStore, build_demo_store
from dashboard.serve import CHROMIUM, PAGES, dashboard, launch_chromium, wait_until_idle
from tests.conftest import require_system

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    base = tmp_path_factory.mktemp("browser")
    root = generate_synthetic(base / "synthetic", n_images=60, image_size=64, seed=0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return build_demo_store(f"sqlite:///{base / 'results.db'}", root, sweep="demo")


def _expected(demo: DemoStore, species: tuple[str, ...] | None) -> tuple[int, str]:
    """(matching images, name of the worst) for the page's default trial, straight from the store."""
    store = Store(demo.url, read_only=True)
    try:
        trial = int(best_trials(store, demo.sweep).iloc[0]["id"])  # first arch by name, its best trial
        flt = ImageFilter(species=species)
        return count_images(store, trial, flt), hardest_images(store, trial, flt, limit=1)["name"].iloc[0]
    finally:
        store.dispose()


def _gallery_state(page) -> tuple[int, str]:
    """(the "N images match" count, the rank-1 image's name) as the browser shows them."""
    main = page.locator("[data-testid='stMain']")
    count = main.get_by_text(re.compile(r"^\d+ images match$")).first.inner_text()
    first = main.get_by_text(re.compile(r"^1\. \S+$")).first.inner_text()
    return int(count.split()[0]), first.split(". ", 1)[1]


def test_species_filter_in_the_browser_changes_the_gallery(demo: DemoStore) -> None:
    if not Path(CHROMIUM).exists():
        require_system("chromium (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    all_count, all_first = _expected(demo, None)
    dog_count, dog_first = _expected(demo, ("dog",))
    assert dog_count < all_count  # the filter must make a visible difference

    started = time.monotonic()
    with dashboard(demo.url) as base, sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{base}/{PAGES['hardest']}", wait_until="domcontentloaded")
            page.get_by_text(f"{all_count} images match").first.wait_for()
            assert _gallery_state(page) == (all_count, all_first)
            sync_api.expect(page.locator("[data-testid='stMain'] [data-testid='stImage'] img")).to_have_count(12)

            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.get_by_role("button", name="cat", exact=True).click()  # species pills: drop the cats
            page.get_by_text(f"{dog_count} images match").first.wait_for()
            sync_api.expect(page.get_by_text(f"1. {dog_first}", exact=True)).to_have_count(1)
            wait_until_idle(page, WAIT_MS)
            assert _gallery_state(page) == (dog_count, dog_first)
            captions = page.locator("[data-testid='stMain'] [data-testid='stCaptionContainer']").all_inner_texts()
            described = [c for c in captions if " · test · " in c]
            assert described and all(" · dog · " in c for c in described)
        finally:
            browser.close()
    assert time.monotonic() - started < 60


def test_failure_mode_filter_in_the_browser_changes_the_gallery(demo: DemoStore) -> None:
    if not Path(CHROMIUM).exists():
        require_system("chromium (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    store = Store(demo.url, read_only=True)
    try:
        trial = int(best_trials(store, demo.sweep).iloc[0]["id"])
        modes = filter_options(store, [trial])["modes"]
        kept = tuple(m for m in modes if m != "ok")
        all_count = count_images(store, trial, ImageFilter())
        kept_count = count_images(store, trial, ImageFilter(modes=kept))
        kept_first = hardest_images(store, trial, ImageFilter(modes=kept), limit=1)["name"].iloc[0]
    finally:
        store.dispose()
    assert "ok" in modes and kept_count < all_count  # dropping `ok` must make a visible difference

    with dashboard(demo.url) as base, sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{base}/{PAGES['hardest']}", wait_until="domcontentloaded")
            page.get_by_text(f"{all_count} images match").first.wait_for()
            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.get_by_role("button", name="ok", exact=True).click()  # failure-mode pills: drop `ok`
            page.get_by_text(f"{kept_count} images match").first.wait_for()
            sync_api.expect(page.get_by_text(f"1. {kept_first}", exact=True)).to_have_count(1)
            wait_until_idle(page, WAIT_MS)
            assert _gallery_state(page) == (kept_count, kept_first)
            captions = page.locator("[data-testid='stMain'] [data-testid='stCaptionContainer']").all_inner_texts()
            named = [c for c in captions if c.startswith("failure mode: ")]
            assert named and all(c.split(" · ")[0].removeprefix("failure mode: ") in kept for c in named)
        finally:
            browser.close()
