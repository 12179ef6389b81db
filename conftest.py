"""Fixtures for this repository's own tests; the test kit (hyperhive_core.testing) has the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The source tree's root."""
    return REPO
