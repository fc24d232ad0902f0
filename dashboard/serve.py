"""Start the dashboard on a free local port and drive it with the system's headless Chromium.

Shared by the browser test and the screenshot script. The server listens on 127.0.0.1 only,
every wait is bounded, and the server is always stopped (its whole process group) on exit.
Chromium is Debian's `/usr/bin/chromium`, driven by Playwright's Python API: no browser download.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {  # page -> URL path (file-based pages: the file name without the number prefix)
    "home": "",
    "curves": "Learning_curves",
    "distributions": "Dice_distributions",
    "hardest": "Hardest_images",
    "insights": "Sweep_insights",
    "suspects": "Suspect_labels",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dashboard(db_url: str, port: int | None = None, timeout_s: float = 40.0) -> Iterator[str]:
    """Run `streamlit run dashboard/Home.py` against db_url; yields the base URL, always stops it."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "Home.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
           "--server.fileWatcherType", "none", "--server.runOnSave", "false",
           "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "RESULTS_DB": db_url}
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode} before serving")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {base} within {timeout_s:.0f} s")
            time.sleep(0.3)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def launch_chromium(playwright: Any) -> Any:
    """The system Chromium, headless, through Playwright (raises if it is not installed)."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} not found; install Debian's chromium package")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def wait_until_idle(page: Any, timeout_ms: int = 30000, quiet_ms: int = 500) -> None:
    """Wait until Streamlit has finished the current run: no running icon and no stale element,
    for `quiet_ms` in a row (a rerun triggered by a widget starts a moment after the click)."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    busy = ("() => !!document.querySelector(\"[data-testid='stStatusWidgetRunningIcon'], [data-stale='true']\")")
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(busy):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_ms / 1000:
            return
        page.wait_for_timeout(100)
    raise TimeoutError(f"the dashboard was still running after {timeout_ms / 1000:.0f} s")
