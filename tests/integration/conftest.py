"""Fixtures for the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TrainingRun, sample_run


@pytest.fixture(scope="session")
def serve_artifact(tiny_artifact: Path) -> Path:
    """The model dir the real training code wrote (tests/conftest.py: 64 px, 1 epoch, 5 classes)."""
    return tiny_artifact


@pytest.fixture(scope="session")
def compiled_run(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    """One real run with ``--compile true`` per session: AOTInductor takes 20-40 s (minutes on a
    loaded machine), so test_compiled.py and test_self_test.py share it."""
    return sample_run(tmp_path_factory, "compiled_run", "--compile", "true")
