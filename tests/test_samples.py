"""tests/conftest.py's real-sample fixtures: absent samples skip locally and fail in CI."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


def test_a_present_sample_is_returned_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "busi-sample").mkdir()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    assert conftest.sample_root("busi-sample") == (tmp_path / "busi-sample").resolve()


def test_an_absent_sample_skips_naming_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.delenv(conftest.REQUIRE_DATA, raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        conftest.sample_root("oxford-pets-sample")
    assert str(info.value) == (f"the real sample oxford-pets-sample is not at {tmp_path / 'oxford-pets-sample'} "
                               f"(../shared/data/oxford-pets-sample beside the checkout)")


def test_an_absent_sample_fails_when_ci_requires_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv(conftest.REQUIRE_DATA, "1")
    with pytest.raises(pytest.fail.Exception) as info:
        conftest.sample_root("busi-sample")
    assert str(info.value).endswith("beside the checkout); $SEGSWEEP_REQUIRE_DATA requires it")


def test_ci_requires_the_samples() -> None:
    ci = (conftest.REPO / ".ci" / "run").read_text()
    assert f"export {conftest.REQUIRE_DATA}=1" in ci
    assert ci.index(conftest.REQUIRE_DATA) < ci.index("python -m pytest tests")
