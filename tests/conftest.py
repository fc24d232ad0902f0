"""Shared fixtures: the real sample dataset, small prepared datasets, temporary stores."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # README's ../shared/data: the real samples, beside the checkout
REQUIRE_DATA = "SEGSWEEP_REQUIRE_DATA"  # set (by .ci/run): a missing sample fails its tests instead of skipping


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains real models for a while (still part of the suite)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="streamlit")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's ~/.cache/segsweep."""
    os.environ["SEGSWEEP_CACHE"] = str(tmp_path_factory.mktemp("segsweep-cache"))


def sample_root(name: str) -> Path:
    """The real sample ../shared/data/<name>, resolved.

    Absent (a fresh clone elsewhere), its tests skip with the folder named, so README's test
    command still passes; with $SEGSWEEP_REQUIRE_DATA set (CI), they fail instead.
    """
    root = SHARED_DATA / name
    if not root.is_dir():
        message = f"the real sample {name} is not at {root} (../shared/data/{name} beside the checkout)"
        if os.environ.get(REQUIRE_DATA):
            pytest.fail(f"{message}; ${REQUIRE_DATA} requires it")
        pytest.skip(message)
    return root.resolve()


@pytest.fixture(scope="session")
def pets_root() -> Path:
    """../shared/data/oxford-pets-sample: Oxford-IIIT Pet's official layout, a few hundred images."""
    return sample_root("oxford-pets-sample")


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """../shared/data/busi-sample: the breast-ultrasound sample."""
    return sample_root("busi-sample")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def diverging_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """core.training.loop's loss made NaN whatever the batch: every run diverges at its first step."""
    import torch

    from core.training import loop as train

    class NanLoss(torch.nn.Module):
        def __init__(self, *weights: float):
            super().__init__()

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return logits.mean() * float("nan")

    monkeypatch.setattr(train, "SegmentationLoss", NanLoss)


def require_system(what: str) -> None:
    """Skip locally when a system service is absent; fail in CI, where .ci/run installs it."""
    if os.environ.get("SEGSWEEP_REQUIRE_SYSTEM"):
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} is not installed here (.ci/run installs it)")


# -- the dashboard's demo store (test_dashboard.py, test_browser.py) ------------------------------

from typing import TYPE_CHECKING  # noqa: E402  (kept with its block; the fixtures import dashboard when used)

if TYPE_CHECKING:
    from dashboard.demo_store import DemoStore, FolderDemo


@pytest.fixture(scope="session")
def _demo_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoStore, FolderDemo]:
    """dashboard.demo_store's two sweeps, built once a session: "demo-folder" over the user's own kind of
    folder (groups, a few wrong masks), then the sweep "demo" over 60 synthetic images in the Oxford-IIIT Pet layout."""
    import optuna

    from core.data.synthetic import generate_synthetic
    from dashboard.demo_store import build_demo_sweeps

    base = tmp_path_factory.mktemp("demo-store")
    root = generate_synthetic(base / "synthetic", n_images=60, image_size=64, seed=0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return build_demo_sweeps(f"sqlite:///{base / 'results.db'}", root, base / "folder-demo", sweep="demo")


@pytest.fixture(scope="module")
def demo_sweeps(_demo_build: tuple[DemoStore, FolderDemo],
                tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoStore, FolderDemo]:
    """(DemoStore, FolderDemo) on the module's own copy of the demo database, so what one module writes
    (review marks, another sweep) never reaches another. The image folders are the session's, shared
    (test_dashboard adds one outbound link to the pet images, which no other module's store lists)."""
    import dataclasses
    import sqlite3
    from contextlib import closing

    demo, folder = _demo_build
    copy = tmp_path_factory.mktemp("demo-db") / "results.db"
    with closing(sqlite3.connect(demo.url.removeprefix("sqlite:///"))) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    url = f"sqlite:///{copy}"
    return dataclasses.replace(demo, url=url), dataclasses.replace(folder, url=url)


@pytest.fixture(scope="module")
def demo(demo_sweeps: tuple[DemoStore, FolderDemo]) -> DemoStore:
    """The sweep "demo" over the synthetic images (dashboard.demo_store.DemoStore)."""
    return demo_sweeps[0]


@pytest.fixture(scope="module")
def folder(demo_sweeps: tuple[DemoStore, FolderDemo]) -> FolderDemo:
    """The user-folder sweep "demo-folder" (dashboard.demo_store.FolderDemo)."""
    return demo_sweeps[1]


# -- closing a trial as a trial run does (test_summaries, test_suspicion, test_labels) ------------------

@pytest.fixture
def close_trial():
    """close_trial(store, sweep, number, image_ids, dice, dataset=..., image_size=..., ...) -> trial id: starts a
    unet trial of `sweep` and closes it with these per-image results (iou and border-aware dice default to `dice`),
    masks and diagnostics, as a trial run does; a complete close runs the sweep's summary and label upkeep."""
    from core.store.db import ImageResults

    def close(store, sweep: str, number: int, image_ids, dice, *, dataset: str, image_size: int, masks=None,
              diagnostics=None, state: str = "complete", iou=None, dice_no_border=None) -> int:
        tid = store.start_trial(sweep=sweep, study=f"{sweep}/unet", arch="unet", number=number, params={},
                                device="cpu", dataset=dataset, image_size=image_size)
        store.finish_trial(tid, state=state, val_dice=0.5, results=ImageResults(
            image_ids, dice, dice if iou is None else iou, dice if dice_no_border is None else dice_no_border,
            masks=masks, diagnostics=diagnostics))
        return tid

    return close
