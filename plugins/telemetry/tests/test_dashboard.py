"""Telemetry on the real dashboard: /api/stats and /metrics over HTTP, and the charts in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import hyperhive_telemetry
import hyperhive_web
import pytest
import trio
from hyperhive_telemetry.api import stats_body
from hyperhive_web import dashboard_of
from prometheus_client.parser import text_string_to_metric_families
from quart import render_template

from hyperhive_core.testing import dashboard_page, needs_claude, next_event, running_hive, wait_until

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "telemetry"

SCENARIO = """
[[agents.manager.rules]]
when = "from operator"
steps = [
  { tool = "send", input = { to = "worker", body = "please report" } },
  { text = "asked the worker" },
]

[[agents.worker.rules]]
when = "please report"
steps = [
  { tool = "Read", input = { file_path = "/etc/hostname" } },
  { tool = "send", input = { to = "operator", body = "report: all quiet" } },
  { text = "done" },
]
"""

pytestmark = [needs_claude, pytest.mark.slow]


def get(url: str, token: str | None) -> tuple[int, str, str]:
    """A GET as a script sends it: the operator token as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def browse(url: str, token: str) -> dict:
    """Log in, open the worker's page and the host page; return what the panels show."""

    errors = []
    with dashboard_page(url, token, errors) as page:
        page.goto(f"{url}/agent/worker/")
        panel = page.locator("#panel-telemetry")
        wait_until(
            page,
            "() => document.querySelectorAll('#panel-telemetry .telemetry-chart canvas').length === 5"
            " && document.querySelector('#panel-telemetry .telemetry-figures dd').textContent.startsWith('3 (')",
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        panel.screenshot(path=str(ARTIFACTS / "agent-panel.png"))
        figures = dict(
            zip(
                panel.locator(".telemetry-figures dt").all_inner_texts(),
                panel.locator(".telemetry-figures dd").all_inner_texts(),
                strict=True,
            )
        )
        page.goto(f"{url}/")
        page.wait_for_selector("#panel-telemetry .telemetry-table tbody tr >> nth=1")
        wait_until(page, "() => document.querySelectorAll('#panel-telemetry canvas').length === 2")
        page.locator("#panel-telemetry").screenshot(path=str(ARTIFACTS / "hive-panel.png"))
        rows = page.locator("#panel-telemetry .telemetry-table tbody tr").all_inner_texts()
    return {"figures": figures, "rows": rows, "errors": errors}


async def test_stats_over_http_and_charts_in_the_browser(make_pm, tmp_path):
    pm = make_pm(web=hyperhive_web, telemetry=hyperhive_telemetry)
    async with running_hive(
        tmp_path, pm, SCENARIO, agents={"worker": {}}, web={"port": 0}, telemetry={"sample_interval_seconds": 1}
    ) as hive:
        after = 0
        for _ in range(3):
            await hive.broker.send("operator", "manager", "status please")
            with trio.fail_after(60):
                after = (await next_event(hive, "worker", "turn_end", after=after)).id
        with trio.fail_after(10):  # the figures are written just after the turn_end event
            while (await stats_body(hive, {"series": ["0"]}))["summary"].get("worker", {}).get("turns") != 3:
                await trio.sleep(0.05)
        dashboard = dashboard_of(hive)
        url, token = dashboard.url, dashboard.token

        status, kind, body = await trio.to_thread.run_sync(get, f"{url}/api/stats?since=1h&agent=worker", token)
        assert (status, kind) == (200, "application/json")
        worker = json.loads(body)["summary"]["worker"]
        assert worker["turns"] == 3
        assert worker["tools"] == {"Read": 3, "send": 3}

        status, _, body = await trio.to_thread.run_sync(get, f"{url}/api/stats?since=yesterday", token)
        assert status == 400
        assert json.loads(body)["error"].startswith("since='yesterday' is not a time: give seconds since the epoch")
        status, _, _ = await trio.to_thread.run_sync(get, f"{url}/api/stats", None)
        assert status == 401

        status, kind, body = await trio.to_thread.run_sync(get, f"{url}/metrics", token)
        assert (status, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
        families = {family.name: family for family in text_string_to_metric_families(body)}
        turns = {s.labels["agent"]: s.value for s in families["hyperhive_turns"].samples}
        assert turns == {"manager": 3, "worker": 3}

        if shutil.which("chromium") is None:
            pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
        pytest.importorskip("playwright", reason="pip install playwright (web's test extra)")
        with trio.fail_after(90):
            shown = await trio.to_thread.run_sync(browse, url, token)
    assert shown["errors"] == []
    assert shown["figures"]["exits"] == "ok 3"
    assert shown["figures"]["tools"] in ("Read 3 · send 3", "send 3 · Read 3")
    assert shown["figures"]["received per turn"] == "manager 1.0"
    assert re.fullmatch(r"\d+\.\d MB / \d+\.\d MB", shown["figures"]["memory now / max"])  # the warm CLI
    assert [row.split("\t")[0] for row in shown["rows"]] == ["manager", "worker"]
    assert (ARTIFACTS / "agent-panel.png").stat().st_size > 0


HOSTILE = "<script>alert(1)</script>"


async def test_the_panels_escape_what_they_show(make_pm, tmp_path):
    """The agent panel's template, rendered by the dashboard, shows a hostile agent name as text."""
    pm = make_pm(web=hyperhive_web, telemetry=hyperhive_telemetry)
    async with running_hive(tmp_path, pm, SCENARIO, web={"port": 0}) as hive:
        app = dashboard_of(hive).app
        [panel] = hyperhive_telemetry.agent_panels(hive=hive, agent=HOSTILE)
        [host] = hyperhive_telemetry.dashboard_panels(hive=hive)
        async with app.app_context():
            html = await render_template(panel.template, **panel.context)
            host_html = await render_template(host.template, **host.context)
    assert panel.label == f"turn statistics of {HOSTILE}"  # the dashboard escapes the label itself
    assert HOSTILE not in html
    assert 'data-telemetry-agent="&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    assert html.count('<div class="telemetry-chart" data-chart=') == 5
    assert '<th scope="col">inbox now / max</th>' in host_html
