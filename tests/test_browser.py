"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against a
`streamlit run dashboard/Home.py` server on a free local port."""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from core.store.queries import ImageFilter, best_trials, count_images, filter_options, hardest_images, suspects
from core.store.db import Store
from dashboard.demo_store import DemoStore, FolderDemo
from dashboard.serve import CHROMIUM, PAGES, dashboard, launch_chromium, wait_until_idle
from tests.conftest import require_system

WAIT_MS = 30_000


def _browser():
    """Playwright's sync API, after skipping (or, in CI, failing) without the system Chromium."""
    if not Path(CHROMIUM).exists():
        require_system("chromium (/usr/bin/chromium)")
    return pytest.importorskip("playwright.sync_api")


def _expected(demo: DemoStore, species: tuple[str, ...] | None = None,
              groups: tuple[str, ...] | None = None) -> tuple[int, str]:
    """(matching images, name of the worst) for the page's default trial, straight from the store."""
    store = Store(demo.url, read_only=True)
    try:
        trial = int(best_trials(store, demo.sweep).iloc[0]["id"])  # first arch by name, its best trial
        flt = ImageFilter(species=species, groups=groups)
        return count_images(store, trial, flt), hardest_images(store, trial, flt, limit=1)["name"].iloc[0]
    finally:
        store.dispose()


def _gallery_state(page) -> tuple[int, str]:
    """(the "N images match" count, the rank-1 image's name) as the browser shows them."""
    main = page.locator("[data-testid='stMain']")
    count = main.get_by_text(re.compile(r"^\d+ images match$")).first.inner_text()
    first = main.get_by_text(re.compile(r"^1\. .+$")).first.inner_text()
    return int(count.split()[0]), first.split(". ", 1)[1]


@contextmanager
def _page(db_url: str, path: str, height: int = 1000, **options: Any) -> Iterator[Any]:
    """A Chromium page on a dashboard served from `db_url`, opened at `path`; server and browser stop after."""
    sync_api = _browser()
    with dashboard(db_url) as base, sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height}, **options)
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{base}/{path}", wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def _drop_pill(page: Any, pill: str, expected: tuple[int, str]) -> list[str]:
    """Click a sidebar pill off, wait until the gallery shows `expected` (count, rank-1 name); its captions."""
    page.locator("[data-testid='stSidebar']").get_by_role("button", name=pill, exact=True).click()
    page.get_by_text(f"{expected[0]} images match").first.wait_for()
    _browser().expect(page.get_by_text(f"1. {expected[1]}", exact=True)).to_have_count(1)
    wait_until_idle(page, WAIT_MS)
    assert _gallery_state(page) == expected
    return page.locator("[data-testid='stMain'] [data-testid='stCaptionContainer']").all_inner_texts()


def test_species_filter_in_the_browser_changes_the_gallery(demo: DemoStore) -> None:
    sync_api = _browser()
    all_count, all_first = _expected(demo, None)
    dog_count, dog_first = _expected(demo, ("dog",))
    assert dog_count < all_count  # the filter must make a visible difference

    started = time.monotonic()
    with _page(demo.url, PAGES["hardest"]) as page:
        page.get_by_text(f"{all_count} images match").first.wait_for()
        assert _gallery_state(page) == (all_count, all_first)
        sync_api.expect(page.locator("[data-testid='stMain'] [data-testid='stImage'] img")).to_have_count(12)
        captions = _drop_pill(page, "cat", (dog_count, dog_first))  # species pills: drop the cats
        described = [c for c in captions if " · test · " in c]
        assert described and all(" · dog · " in c for c in described)
    assert time.monotonic() - started < 60


def test_failure_mode_filter_in_the_browser_changes_the_gallery(demo: DemoStore) -> None:
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

    with _page(demo.url, PAGES["hardest"]) as page:
        page.get_by_text(f"{all_count} images match").first.wait_for()
        captions = _drop_pill(page, "ok", (kept_count, kept_first))  # failure-mode pills: drop `ok`
        named = [c for c in captions if c.startswith("failure mode: ")]
        assert named and all(c.split(" · ")[0].removeprefix("failure mode: ") in kept for c in named)


def test_group_filter_in_the_browser_changes_the_gallery_of_a_users_folder(folder: FolderDemo) -> None:
    all_count, all_first = _expected(folder)
    b_count, b_first = _expected(folder, groups=("site-b",))
    assert b_count < all_count

    with _page(folder.url, f"{PAGES['hardest']}?sweep={folder.sweep}") as page:
        page.get_by_text(f"{all_count} images match").first.wait_for()
        assert _gallery_state(page) == (all_count, all_first)
        sidebar = page.locator("[data-testid='stSidebar']")
        assert not sidebar.get_by_text("Species", exact=True).count()  # no breed filters on the user's own data
        captions = _drop_pill(page, "site-a", (b_count, b_first))  # group pills: drop site-a
        described = [c for c in captions if " · test · " in c]
        assert described and all(c.startswith("group site-b · ") for c in described)


def test_marking_an_image_and_downloading_the_review_csv_in_the_browser(folder: FolderDemo, tmp_path: Path) -> None:
    store = Store(folder.url, read_only=True)
    try:
        top = suspects(store, folder.sweep, limit=1).iloc[0]
    finally:
        store.dispose()

    with _page(folder.url, f"{PAGES['suspects']}?sweep={folder.sweep}", 1200, accept_downloads=True) as page:
        page.get_by_text(f"1. {top['name']}", exact=True).wait_for()
        wait_until_idle(page, WAIT_MS)
        note = page.get_by_placeholder("note (optional)").first
        note.fill("mask erased")
        note.press("Enter")
        wait_until_idle(page, WAIT_MS)
        main = page.locator("[data-testid='stMain']")  # the sidebar's mark filter has a "label error" pill too
        main.get_by_role("button", name="label error", exact=True).first.click()
        page.get_by_text("review: label error — mask erased").first.wait_for()
        wait_until_idle(page, WAIT_MS)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download the review marks as CSV (1 marked)").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
    assert saved.name == "review-marks-folder-folder-demo.csv"
    assert saved.read_text().splitlines() == [
        "name,path,mark,note,score", f"{top['name']},{top['path']},label error,mask erased,{top['label_suspicion']:.6g}"]
