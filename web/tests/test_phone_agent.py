"""An agent's page on a phone (390 x 844, touch) and on a desktop: everything reachable and whole.

Each test keeps screenshots under test-artifacts/web/ to look at.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from hyperhive_web import dashboard_of
from webkit import ARTIFACTS, dashboard_hive, screenshot

from hyperhive_core.testing import needs_claude, wait_until

pytestmark = [needs_claude, pytest.mark.slow]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}
# Every bundled plugin that puts a panel on an agent's page.
PANEL_PLUGINS = ("telemetry", "compaction", "nap", "crashwatch", "allowlist")


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


async def open_agent_page(browser: Any, hive: Any, size: dict[str, int], agent: str = "worker") -> Any:
    """A fresh context at ``size`` (a phone's is touch and mobile), logged in, on ``agent``'s page, live."""
    dashboard = dashboard_of(hive)
    phone = size["width"] < 600

    def open_page() -> Any:
        page = browser.new_context(viewport=size, is_mobile=phone, has_touch=phone).new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(f"{dashboard.url}/login?token={dashboard.token}&next=/agent/{agent}/")
        page.wait_for_selector("#link.live")
        return page

    return await browser.run(open_page)


def overflow(page: Any) -> dict[str, int]:
    return page.evaluate("() => ({scroll: document.documentElement.scrollWidth, inner: innerWidth})")


def whole_and_on_top(page: Any, selector: str) -> None:
    """``selector`` is inside the page's width, and a tap at its centre reaches it (nothing lies over it)."""
    page.locator(selector).scroll_into_view_if_needed()
    found = page.evaluate(
        """(selector) => {
          const el = document.querySelector(selector);
          const box = el.getBoundingClientRect();
          const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
          return {left: box.left, right: box.right, width: innerWidth, hit: !!hit && (el === hit || el.contains(hit))};
        }""",
        selector,
    )
    assert found["left"] >= 0, (selector, found)
    assert found["right"] <= found["width"], (selector, found)
    assert found["hit"], f"{selector} is covered by another element"


def cut_panels(page: Any) -> list[str]:
    """The agent page's panels whose content is wider than they are, or that stick out of the page."""
    return page.evaluate(
        """() => [...document.querySelectorAll("main .panel")].filter((panel) => {
          const box = panel.getBoundingClientRect();
          return panel.scrollWidth > panel.clientWidth + 1 || box.left < 0 || box.right > innerWidth;
        }).map((panel) => panel.id)"""
    )


async def test_the_agent_page_on_a_phone(tmp_path, make_pm, browser):
    pm = make_pm("web", *PANEL_PLUGINS)
    async with dashboard_hive(tmp_path, pm, telemetry={"sample_interval_seconds": 1}) as hive:
        page = await open_agent_page(browser, hive, PHONE)

        def first_look() -> None:
            for plugin in PANEL_PLUGINS:
                expect(page.locator(f'section.panel.plugin[data-plugin="{plugin}"]')).to_have_count(1)
            expect(page.locator("#tail-empty")).to_be_visible()
            # The page opens at its top, the input focused all the same.
            assert page.evaluate("() => window.scrollY") == 0
            expect(page.locator("#line")).to_be_focused()
            page.screenshot(path=str(ARTIFACTS / "phone-agent-screen.png"))  # what the phone shows at first
            screenshot(page, "phone-agent")
            assert overflow(page)["scroll"] <= overflow(page)["inner"], overflow(page)
            whole_and_on_top(page, "#dashboard-link")
            whole_and_on_top(page, "#rebuild")
            # The page scrolls down to the inbox and the panels, and back.
            height = page.evaluate("() => document.scrollingElement.scrollHeight")
            assert height > PHONE["height"] * 1.5, height
            page.evaluate("() => window.scrollTo(0, document.scrollingElement.scrollHeight)")
            wait_until(page, "() => window.scrollY > 0")
            page.evaluate("() => window.scrollTo(0, 0)")

        def say(text: str) -> None:
            whole_and_on_top(page, "#line")
            page.locator("#line").tap()
            page.keyboard.type(text)
            whole_and_on_top(page, "#say button")
            page.locator("#say button").tap()

        def talk() -> None:
            say("ping")
            expect(page.locator(".toast", has_text="sent #").first).to_be_visible()
            expect(page.locator("#tail .ev.message_sent", has_text="operator: pong: ping")).to_be_visible(
                timeout=30_000
            )
            expect(page.locator("#tail-empty")).to_have_count(0)
            expect(page.locator("#badge")).to_have_text("idle", timeout=30_000)
            say("/model sonnet")
            expect(page.locator(".toast", has_text="model is now sonnet").first).to_be_visible()
            expect(page.locator("#model")).to_contain_text("model sonnet")
            # The inbox, below the tail: whole, and its message readable.
            expect(page.locator("#inbox-list li").first).to_contain_text("ping")
            whole_and_on_top(page, "#inbox-list li")

        def long_tail() -> None:
            # The tail scrolls inside its box, pinned to the newest line; the page keeps its width.
            wait_until(page, "() => document.querySelectorAll('#tail .ev.note').length >= 60")
            tail = page.evaluate(
                "() => { const t = document.getElementById('tail'); return {scroll: t.scrollHeight, "
                "client: t.clientHeight, top: t.scrollTop, bottom: t.getBoundingClientRect().bottom} }"
            )
            assert tail["scroll"] > tail["client"] > 150, tail
            assert tail["top"] >= tail["scroll"] - tail["client"] - 40, tail
            assert overflow(page)["scroll"] <= overflow(page)["inner"], overflow(page)
            page.locator("#tail").evaluate("(t) => t.scrollTo(0, 0)")
            expect(page.locator("#jump")).to_be_hidden()
            screenshot(page, "phone-agent-tail")

        def terminal() -> None:
            page.evaluate("() => window.scrollTo(0, 0)")
            page.get_by_role("tab", name="terminal").tap()
            expect(page.locator("#term-status")).to_have_text("● shell in worker's container")
            expect(page.locator(".xterm-rows")).to_contain_text(re.compile(r"[$#]"), timeout=15_000)
            # xterm fits the box: no wider than the page, and wide enough for a command line.
            fit = page.evaluate(
                """() => {
                  const screen = document.querySelector('.xterm-screen').getBoundingClientRect();
                  const wrap = document.querySelector('.term-wrap').getBoundingClientRect();
                  return {left: screen.left, right: screen.right, wrapRight: wrap.right, inner: innerWidth};
                }"""
            )
            assert fit["left"] >= 0, fit
            assert fit["right"] <= fit["wrapRight"] <= fit["inner"], fit
            page.locator(".xterm-screen").tap()
            page.keyboard.type("echo phone-$((6*7)) size $(stty size)")
            page.keyboard.press("Enter")
            expect(page.locator(".xterm-rows")).to_contain_text("phone-42")
            # The shell's PTY was told the fitted size: lines wrap where the screen does.
            rows, cols = map(
                int, re.search(r"phone-42 size (\d+) (\d+)", page.locator(".xterm-rows").inner_text()).groups()
            )
            assert cols >= 30, (rows, cols)
            assert rows >= 10, (rows, cols)
            print(f"phone terminal: {cols} columns x {rows} rows")
            assert overflow(page)["scroll"] <= overflow(page)["inner"], overflow(page)
            screenshot(page, "phone-agent-terminal")
            page.get_by_role("tab", name="live tail").tap()

        def panels() -> None:
            # Each plugin panel is whole; its controls are reachable and work.
            wait_until(page, "() => document.querySelectorAll('#panel-telemetry .uplot').length >= 4")
            assert cut_panels(page) == []
            whole_and_on_top(page, "#panel-compaction button")
            page.locator("#panel-compaction button").tap()
            # A real round trip: the plugin answers that a fresh agent has nothing to compact yet.
            expect(page.locator(".toast.error", has_text="worker has no notes to compact").first).to_be_visible()
            whole_and_on_top(page, "#model-choice")
            whole_and_on_top(page, "#model-switch")
            assert overflow(page)["scroll"] <= overflow(page)["inner"], overflow(page)
            screenshot(page, "phone-agent-panels")

        with trio.fail_after(240):
            await browser.run(first_look)
            await browser.run(talk)
            for index in range(60):
                hive.events.publish("worker", "note", text=f"a note to fill the tail, number {index}")
            await browser.run(long_tail)
            await browser.run(terminal)
            await browser.run(panels)
        assert page.errors == []


async def test_the_agent_page_on_a_desktop_fits_the_window(hive, browser):
    page = await open_agent_page(browser, hive, DESKTOP)

    def steps() -> None:
        expect(page.locator("#tail-empty")).to_be_visible()
        screenshot(page, "desktop-agent")
        # Side by side, in the window: the tail beside the inbox, and the page itself does not scroll.
        layout = page.evaluate(
            """() => {
              const tail = document.querySelector('.tail-panel').getBoundingClientRect();
              const side = document.querySelector('.side').getBoundingClientRect();
              return {tailRight: tail.right, sideLeft: side.left, tailTop: tail.top, sideTop: side.top,
                      height: document.scrollingElement.scrollHeight, inner: innerHeight};
            }"""
        )
        assert layout["tailRight"] < layout["sideLeft"], layout
        assert abs(layout["tailTop"] - layout["sideTop"]) < 2, layout
        assert layout["height"] <= layout["inner"], layout
        assert overflow(page)["scroll"] <= overflow(page)["inner"], overflow(page)
        for selector in ("#dashboard-link", "#line", "#model-choice", "#inbox-list li"):
            whole_and_on_top(page, selector)

    with trio.fail_after(60):
        await browser.run(steps)
    assert page.errors == []


async def test_the_live_tail_says_what_will_appear_until_the_first_event(hive, browser):
    page = await open_agent_page(browser, hive, PHONE)

    def explained() -> None:
        explanation = page.locator("#tail-empty")
        expect(explanation).to_be_visible()
        for words in ("turn", "tool calls", "messages it sends", "/help"):
            expect(explanation).to_contain_text(words)

    def gone() -> None:
        expect(page.locator("#tail .ev.note", has_text="the first event")).to_be_visible()
        expect(page.locator("#tail-empty")).to_have_count(0)

    def still_gone_after_reload() -> None:
        page.reload()
        page.wait_for_selector("#link.live")
        expect(page.locator("#tail .ev.note", has_text="the first event")).to_be_visible()
        expect(page.locator("#tail-empty")).to_have_count(0)

    with trio.fail_after(60):
        await browser.run(explained)
        hive.events.publish("worker", "note", text="the first event")
        await browser.run(gone)
        await browser.run(still_gone_after_reload)
    assert page.errors == []


@pytest.mark.parametrize(
    "size", [{"width": 320, "height": 568}, {"width": 820, "height": 1180}], ids=["small", "tablet"]
)
async def test_the_agent_page_fits_a_small_phone_and_a_tablet(hive, browser, size):
    page = await open_agent_page(browser, hive, size)

    def steps() -> None:
        expect(page.locator("#tail-empty")).to_be_visible()
        assert overflow(page)["scroll"] <= overflow(page)["inner"], overflow(page)
        for selector in ("#dashboard-link", "#line", "#say button", "#model-choice", "#model-switch", "#inbox-list li"):
            whole_and_on_top(page, selector)
        assert cut_panels(page) == []
        screenshot(page, f"agent-{size['width']}")

    with trio.fail_after(60):
        await browser.run(steps)
    assert page.errors == []
