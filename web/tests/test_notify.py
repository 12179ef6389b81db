"""What needs the operator, on the host dashboard in Chromium: notifications, the tab's title and its icon.

Notifications are recorded by an init script that stands in for ``window.Notification``
(Chromium headless shows none); a hidden tab is ``document.visibilityState`` overridden
the same way. Questions, approvals, dead letters and errors are made for real.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import hyperhive_questions
import hyperhive_web
import pytest
import trio
from hyperhive_web import dashboard_of
from test_phone_host import DESKTOP, open_page
from webkit import ARTIFACTS, dashboard_hive, operator

from hyperhive_core.testing import call_tool, needs_claude, next_event, wait_until

pytestmark = [needs_claude, pytest.mark.slow]

# The worker's model fails twice: its turn is tried twice (an error event between), then its message dies.
SCENARIO = """
[[agents.worker.rules]]
name = "doomed"
when = "doomed"
steps = [{ tool = "send", input = { to = "operator", body = "trying" } }, { text = "done", status = 500, times = 2 }]

[[agents."*".rules]]
steps = [{ text = "noted" }]
"""

# Records each notification and each permission request; the real permission still decides.
RECORD = """(() => {
  const Real = window.Notification;
  window.notified = [];
  window.permissionAsked = 0;
  function Recorder(title, options = {}) {
    window.notified.push({ title, body: options.body || "", tag: options.tag || "" });
    this.close = () => {};
  }
  Object.defineProperty(Recorder, "permission", { get: () => Real.permission });
  Recorder.requestPermission = (...args) => {
    window.permissionAsked += 1;
    return Real.requestPermission(...args);
  };
  window.Notification = Recorder;
})();"""

# The operator is looking at another tab.
HIDDEN = """
Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
Object.defineProperty(document, "hidden", { get: () => true });
"""

TITLE = "hyperhive · dashboard"
ICON = "/static/icon.svg"
SHOWN = "() => [document.title, document.querySelector('link[rel=icon]').getAttribute('href')]"


@pytest.fixture
async def hive(tmp_path, make_pm):
    pm = make_pm(web=hyperhive_web, questions=hyperhive_questions)
    settings = {"claude": {"turn_attempts": 2, "api_retries": 0}, "broker": {"max_attempts": 1}}
    async with dashboard_hive(tmp_path, pm, SCENARIO, **settings) as running:
        yield running


async def watched_page(browser: Any, hive: Any, *, hidden: bool, allowed: bool) -> Any:
    """The host dashboard, live, its notifications recorded; allowed, or not asked yet."""
    script = RECORD + (HIDDEN if hidden else "")
    return await open_page(browser, hive, DESKTOP, allow_notifications=allowed, init_script=script)


def notified(page: Any) -> list[dict[str, str]]:
    return page.evaluate("() => window.notified")


def shows(page: Any, count: int) -> None:
    """The title and the favicon say ``count`` things wait (or, at 0, are as they were)."""
    if count:
        wait_until(page, "(title) => document.title === title", f"({count}) {TITLE}")
        icon = page.evaluate(SHOWN)[1]
        assert icon.startswith("data:image/svg+xml,")
        assert f">{count}</text>" in unquote(icon)
    else:
        wait_until(page, "(title) => document.title === title", TITLE)
        assert page.evaluate(SHOWN) == [TITLE, ICON]


async def test_the_permission_is_asked_on_the_first_click_and_a_visible_tab_is_not_notified(hive, browser):
    page = await watched_page(browser, hive, hidden=False, allowed=False)

    def before_any_click() -> None:
        assert page.evaluate("() => Notification.permission") == "default"
        page.wait_for_timeout(500)
        assert page.evaluate("() => window.permissionAsked") == 0  # never on page load
        shows(page, 0)

    def waiting_and_clicks() -> None:
        shows(page, 1)
        assert notified(page) == []  # the operator is looking
        page.locator("#approvals-title").click()
        wait_until(page, "() => window.permissionAsked === 1")
        page.locator("#spawn-title").click()
        page.wait_for_timeout(300)
        assert page.evaluate("() => window.permissionAsked") == 1  # asked once

    with trio.fail_after(60):
        await browser.run(before_any_click)
        await hive.approvals.request_spawn("manager", "helper", "a helper")
        await browser.run(waiting_and_clicks)


async def test_a_hidden_tab_is_notified_and_its_title_and_icon_count_what_waits(hive, browser):
    page = await watched_page(browser, hive, hidden=True, allowed=True)
    http = operator(hive)

    def notes_say(*titles: str) -> None:
        script = "(titles) => titles.every((t) => window.notified.some((n) => n.title === t))"
        wait_until(page, script, list(titles))

    with trio.fail_after(120):
        await browser.run(shows, page, 0)
        text, is_error = await call_tool(hive, "manager", "ask_operator", question="ship it today?")
        assert not is_error, text
        question = int(text.split()[1])
        await browser.run(notes_say, "manager asks the operator")
        await browser.run(shows, page, 1)

        approval = await hive.approvals.request_spawn("manager", "helper", "a helper for the worker")
        await browser.run(notes_say, f"approval #{approval.id} waits: spawn helper")
        await browser.run(shows, page, 2)

        sent = await hive.broker.send("operator", "worker", "doomed: this one dies")
        died = await next_event(hive, "worker", "message_dead", lambda event: event.data["id"] == sent.id)
        await browser.run(notes_say, "worker: error", f"dead letter #{sent.id} to worker")
        await browser.run(shows, page, 3)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await browser.run(lambda: page.screenshot(path=str(ARTIFACTS / "notify-three-waiting.png")))

        # Reloaded, nothing already there is news.
        await browser.run(lambda: page.reload() and None)
        await browser.run(page.wait_for_selector, "#link.live")
        await browser.run(shows, page, 3)
        assert await browser.run(notified, page) == []

        # Answered, denied, dropped: the title and the icon go back.
        answered = await http.post("/api/answer-question", {"id": question, "answer": "yes"})
        assert answered.status == 200, answered.body
        await browser.run(shows, page, 2)
        denied = await http.post(f"/api/approvals/{approval.id}/deny", {"note": "not now"})
        assert denied.status == 200, denied.body
        await browser.run(shows, page, 1)
        dropped = await http.post(f"/api/dead-letters/{died.data['id']}/drop")
        assert dropped.status == 200, dropped.body
        await browser.run(shows, page, 0)

    seen = await browser.run(notified, page)
    assert seen == []  # resolving things notifies nobody
    assert await browser.run(page.evaluate, "() => window.permissionAsked") == 0  # allowed already


async def test_the_manifest_and_the_icons_are_served_for_an_installed_app(hive):
    http = operator(hive)
    manifest = await http.get("/static/manifest.webmanifest")
    assert manifest.status == 200
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    body = manifest.json()
    assert (body["name"], body["start_url"], body["display"], body["theme_color"]) == (
        "hyperhive",
        "/",
        "standalone",
        "#07080a",
    )
    for icon in body["icons"]:
        served = await http.get(icon["src"])
        assert served.status == 200, icon
        assert served.headers["content-type"].startswith(icon["type"])
        if icon["type"] == "image/png":
            side = int(icon["sizes"].split("x")[0])
            assert served.body[:8] == b"\x89PNG\r\n\x1a\n"
            assert int.from_bytes(served.body[16:20], "big") == side  # the PNG's own width
    page = (await http.get("/")).body.decode()
    assert '<link rel="manifest" href="/static/manifest.webmanifest">' in page
    assert '<meta name="theme-color" content="#07080a">' in page


async def test_chromium_reads_the_manifest_under_the_pages_policy(hive, browser):
    page = await watched_page(browser, hive, hidden=False, allowed=False)
    refused: list[str] = []

    def read() -> dict[str, Any]:
        page.on("console", lambda message: refused.append(message.text) if "Content Security" in message.text else None)
        page.reload()
        page.wait_for_selector("#link.live")
        cdp = page.context.new_cdp_session(page)
        return cdp.send("Page.getAppManifest")

    with trio.fail_after(60):
        manifest = await browser.run(read)
    assert manifest["url"] == f"{dashboard_of(hive).url}/static/manifest.webmanifest"
    assert manifest["errors"] == []
    assert '"display": "standalone"' in manifest["data"]
    assert refused == []
