"""Shared fixtures: the real sample dataset, small prepared datasets, temporary stores."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PETS_SAMPLE = REPO / ".." / "shared" / "data" / "oxford-pets-sample"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains real models for a while (still part of the suite)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="streamlit")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's ~/.cache/segsweep."""
    os.environ["SEGSWEEP_CACHE"] = str(tmp_path_factory.mktemp("segsweep-cache"))


@pytest.fixture(scope="session")
def pets_root() -> Path:
    if not PETS_SAMPLE.is_dir():
        pytest.fail(f"the real sample dataset is missing at {PETS_SAMPLE}")
    return PETS_SAMPLE.resolve()


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
