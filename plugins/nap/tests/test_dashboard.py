"""Naps on the real dashboard: the N4P section and its wake route, and the badge in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import hyperhive_nap
import hyperhive_web
import pytest
import trio
from hyperhive_nap import NAPS
from hyperhive_nap.web import nap_panel
from hyperhive_web import dashboard_of
from hyperhive_web.panels import panel_body

from hyperhive_core import iso_utc
from hyperhive_core.testing import call_tool, dashboard_page, needs_claude, next_event, running_hive

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "nap"

SCENARIO = """
[[agents.worker.rules]]
name = "nap"
when = "take a nap"
steps = [{ tool = "nap", input = { seconds = 600 } }, { text = "{{result}}" }]

[[agents."*".rules]]
name = "awake"
steps = [{ text = "awake and reading" }]
"""


def fetch(url: str, token: str, method: str = "GET") -> tuple[int, dict]:
    """A request as a script sends it: the operator token as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, headers=headers, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
async def hive(make_pm, tmp_path):
    pm = make_pm(web=hyperhive_web, nap=hyperhive_nap)
    async with running_hive(tmp_path, pm, SCENARIO, agents={"worker": {}}, web={"port": 0}) as running:
        yield running


async def test_the_nap_section_and_the_wake_route(hive):
    url, token = dashboard_of(hive).url, dashboard_of(hive).token

    async def request(path, method="GET"):
        return await trio.to_thread.run_sync(fetch, f"{url}{path}", token, method)

    status, awake = await request("/-/web/agents/worker/panels/nap")
    assert status == 200
    assert 'class="nap nap-awake"' in awake["html"]  # there, and hidden by its stylesheet
    text, is_error = await call_tool(hive, "worker", "nap", seconds=600)
    assert not is_error, text
    _, napping = await request("/-/web/agents/worker/panels/nap")
    label = iso_utc(hive.stash[NAPS].wake_time("worker"))
    assert f'napping until <time datetime="{label}">{label}</time> · 0 messages wait for it.' in napping["html"]
    assert 'data-api="/-/nap/agents/worker/wake"' in napping["html"]
    assert await request("/-/nap/agents/worker/wake", "POST") == (200, {"agent": "worker", "woken": True})
    assert await request("/-/nap/agents/worker/wake", "POST") == (200, {"agent": "worker", "woken": False})
    assert await request("/-/nap/agents/ghost/wake", "POST") == (
        404,
        {"error": "no agent named 'ghost'; known agents: manager, worker"},
    )


HOSTILE = "<script>alert(1)</script>"


async def test_the_section_escapes_the_agents_name(hive):
    """Core refuses such a name for an agent; the section escapes it all the same."""
    dashboard = dashboard_of(hive)
    async with dashboard.app.app_context():
        html = await panel_body(nap_panel(HOSTILE, time.time() + 60, 1), dashboard)
    assert "<script>" not in html
    assert 'data-done="&lt;script&gt;alert(1)&lt;/script&gt; is awake"' in html
    assert 'aria-label="wake &lt;script&gt;alert(1)&lt;/script&gt; now"' in html
    assert 'data-api="/-/nap/agents/%3Cscript%3Ealert%281%29%3C/script%3E/wake"' in html
    assert "1 message waits for it." in html


@needs_claude
@pytest.mark.slow
async def test_the_badge_counts_down_and_the_button_wakes_the_agent(hive):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (web's test extra)")

    async def worker_naps() -> None:
        await hive.broker.send("operator", "worker", "take a nap")
        with trio.fail_after(60):
            await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "napping")
        await hive.broker.send("operator", "worker", "are you there?")

    def browse(url: str, token: str) -> dict:
        from playwright.sync_api import expect

        errors: list[str] = []
        seen: dict = {}
        with dashboard_page(url, token, errors) as page:
            page.goto(f"{url}/agent/worker/")
            page.wait_for_selector("#link.live")
            section = page.locator("#panel-nap")
            seen["hidden_at_first"] = not section.is_visible()

            trio.from_thread.run(worker_naps)
            badge = page.locator("#badge .badge.napping")
            expect(badge).to_have_text(re.compile(r"napping 😴 · 09:[45]\d"))  # MM:SS, counting down
            section.get_by_role("button", name="wake worker now").wait_for()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "napping.png"))
            seen["badge"] = " ".join(badge.inner_text().split())
            section.get_by_role("button", name="wake worker now").click()
            page.get_by_text("worker is awake").wait_for()
            section.wait_for(state="hidden")
            expect(page.locator("#badge .badge.napping")).to_have_count(0)
        return {"errors": errors, **seen}

    with trio.fail_after(120):
        shown = await trio.to_thread.run_sync(browse, dashboard_of(hive).url, dashboard_of(hive).token)
        end = await next_event(hive, "worker", "turn_end", lambda e: e.data["exit"] == "ok", after=0)
        awake = await next_event(hive, "worker", "turn_end", after=end.id)
    assert shown["errors"] == []
    assert shown["hidden_at_first"]
    assert re.fullmatch(r"napping 😴 · 09:[45]\d", shown["badge"])
    assert awake.data["exit"] == "ok"
    assert hive.rehearsal.requests[-1].rule == "awake"
