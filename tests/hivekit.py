"""Running a whole hive inside a test: real store, real Claude Code CLI, rehearsal model."""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive_core.boot import config_schemas
from hyperhive_core.claude import BUNDLED_CLI
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.events import Event
from hyperhive_core.hive import Hive
from hyperhive_core.plugins import HivePluginManager
from hyperhive_core.tools import ToolContext

needs_claude = pytest.mark.skipif(
    not BUNDLED_CLI.exists(), reason="the pinned Claude Code CLI is not installed; run `make install`"
)


@asynccontextmanager
async def running_hive(
    tmp_path: Path,
    pm: HivePluginManager,
    scenario: str,
    *,
    agents: dict[str, dict[str, Any]] | None = None,
    claude: dict[str, Any] | None = None,
    hive: dict[str, Any] | None = None,
    endpoint: str | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[Hive]:
    """A hive on the process backend, its agents on the rehearsal model with ``scenario``.

    With ``endpoint``, the agents talk to that Messages API URL as to Claude instead (a
    test's own rehearsal server, priced like the real API); ``scenario`` is unused.
    """
    scenario_path = tmp_path / "scenario.toml"
    scenario_path.write_text(textwrap.dedent(scenario))
    model = {"base_url": endpoint} if endpoint else {"rehearsal_scenario": str(scenario_path)}
    raw = {
        "hive": {"state_dir": str(tmp_path / "state"), "container_backend": "process", **(hive or {})},
        "claude": {**model, "api_error_backoff_seconds": 0.2, **(claude or {})},
        "agents": agents or {},
        **sections,
    }
    config = load_config(tmp_path / "hyperhive.toml", raw, config_schemas(pm))
    async with trio.open_nursery() as nursery:
        running = await nursery.start(run_hive, config, pm)
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


async def next_event(
    hive: Hive, agent: str | None, type_: str, predicate: Callable[[Event], bool] = lambda event: True, after: int = 0
) -> Event:
    """The first event of ``type_`` after event id ``after`` (history included) that matches."""
    async with hive.events.subscribe(agent, after_id=after) as events:
        async for event in events:
            if event.type == type_ and predicate(event):
                return event
    raise AssertionError("the event stream ended")


async def operator_reply(hive: Hive, sender: str) -> str:
    """Wait for the first message ``sender`` sends the operator; return its body."""
    while True:
        for message in await hive.broker.recent_for("operator", 50):
            if message.sender == sender:
                return message.body
        await next_event(hive, sender, "message_sent", lambda event: event.data["to"] == "operator")


async def call_tool(hive: Hive, agent: str, tool: str, **arguments: Any) -> tuple[str, bool]:
    """Call a hive tool as ``agent`` would over its socket: its text, and whether it is an error."""
    ctx = ToolContext(hive, agent, hive.agents.get(agent).role)
    result = await hive.surface.call_tool(ctx, tool, arguments)
    return result.content[0].text, result.is_error


class HeldClock:
    """An autojump clock that jumps only while a test lets time pass.

    Real work (sqlite threads, sockets, child processes) takes real time, during which
    every task waits; a clock that jumps then would run out deadlines mid-step. Held,
    it jumps only after ``STALL`` real seconds of idleness, so a hang still ends the
    test at its ``fail_after``; :meth:`advance` lets virtual time run.
    """

    STALL = 5.0

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        clock.autojump_threshold = self.STALL

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, firing every deadline on the way."""
        self.clock.autojump_threshold = 0
        try:
            await trio.sleep(seconds)
        finally:
            self.clock.autojump_threshold = self.STALL


CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet: this machine's closed network refuses Chromium's background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium through playwright (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def wait_until(page: Any, expression: str, arg: Any = None, timeout: float = 30.0) -> None:
    """Poll ``expression`` (a JS function of ``arg``) in ``page`` until it is truthy.

    Playwright's ``wait_for_function`` polls with ``eval`` inside the page, which the
    dashboard's Content-Security-Policy refuses once a first check comes out false;
    ``evaluate`` runs through the debugger protocol, which the policy does not govern.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f}s: {expression}")
        page.wait_for_timeout(100)


@contextmanager
def dashboard_page(url: str, token: str, errors: list[str], timeout_ms: int = 15_000) -> Iterator[Any]:
    """A Chromium page logged in to the dashboard at ``url``; page errors go to ``errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(timeout_ms)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/login?token={token}")
            yield page
        finally:
            browser.close()
