"""Fixtures for the dashboard's tests: a real hive with the web plugin, and Chromium."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import hyperhive_web
import pytest

from hyperhive_core import Hive

# The suite runs with --import-mode=importlib: make the helper module next to this file importable.
sys.path.insert(0, str(Path(__file__).parent))

from webkit import Browser, dashboard_hive

from hyperhive_core.testing import CHROMIUM


@pytest.fixture
def web_pm(make_pm: Callable[..., Any]) -> Any:
    return make_pm(web=hyperhive_web)


@pytest.fixture
async def hive(tmp_path: Path, web_pm: Any) -> AsyncIterator[Hive]:
    async with dashboard_hive(tmp_path, web_pm) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    pytest.importorskip("playwright", reason="pip install playwright (web's test extra); `make install` does it")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make test` does it)")
    chromium = Browser()
    yield chromium
    chromium.close()
