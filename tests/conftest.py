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
