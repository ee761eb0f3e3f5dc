"""Fixtures for the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serve_artifact(tiny_artifact: Path) -> Path:
    """The model dir the real training code wrote (tests/conftest.py: 64 px, 1 epoch, 5 classes)."""
    return tiny_artifact
