"""The host dashboard on a phone (390x844) and on a desktop, in Chromium: everything fits and every action works.

A hive with something in every section: a question, an approval with a diff wider
than the screen, a dead letter, a message to the operator, a draft and kept state.
Screenshots go to test-artifacts/web/ (``phone-*``, ``desktop-*``).
"""

from __future__ import annotations

import re
from typing import Any

import hyperhive_compaction
import hyperhive_crashwatch
import hyperhive_questions
import hyperhive_telemetry
import hyperhive_web
import pytest
import trio
from hyperhive_web import dashboard_of
from webkit import ARTIFACTS, dashboard_hive

from hyperhive_core import State
from hyperhive_core.testing import call_tool, needs_claude, next_event

pytestmark = [needs_claude, pytest.mark.slow]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}

# The worker's turns fail once each (the model answers 500 after it told the operator),
# so with one attempt per message, each message to it dies.
SCENARIO = """
[[agents.worker.rules]]
name = "doomed"
when = "doomed"
steps = [
  { tool = "send", input = { to = "operator", body = "working on it, a long line to see it wrap on a phone screen" } },
  { text = "done", status = 500 },
]

[[agents.worker.rules]]
name = "ping"
when = "ping"
steps = [{ tool = "send", input = { to = "operator", body = "pong" } }, { text = "answered" }]

[[agents."*".rules]]
steps = [{ text = "noted" }]
"""

# Controls (and the page) that reach past the window's edges; a control inside a box
# that scrolls sideways by itself (the diff) does not count.
OFF_SCREEN = """() => {
  const visible = (el) => el.getClientRects().length && getComputedStyle(el).visibility !== "hidden";
  const scrolls = (el) => {
    for (let up = el.parentElement; up; up = up.parentElement) {
      const x = getComputedStyle(up).overflowX;
      if ((x === "auto" || x === "scroll") && up !== document.documentElement && up.localName !== "main") return true;
    }
    return false;
  };
  return [...document.querySelectorAll("button, input:not([type=hidden]), select, textarea, a, summary")]
    .filter((el) => visible(el) && !scrolls(el) && !el.matches(".skip:not(:focus)"))  // the skip link waits off screen
    .filter((el) => { const r = el.getBoundingClientRect(); return r.left < -0.5 || r.right > innerWidth + 0.5; })
    .map((el) => el.getAttribute("aria-label") || el.textContent.trim().slice(0, 40));
}"""

# The controls a toast's box overlaps: there must never be any.
# A control's box is what shows of it: cut by every box around it that clips what overflows.
UNDER_TOASTS = """() => {
  const boxes = [...document.querySelectorAll(".toast")].map((t) => t.getBoundingClientRect());
  const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const shown = (el) => {
    let r = el.getBoundingClientRect();
    r = { left: r.left, right: r.right, top: r.top, bottom: r.bottom };
    for (let up = el.parentElement; up; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (style.overflowX === "visible" && style.overflowY === "visible") continue;
      const c = up.getBoundingClientRect();
      r = {
        left: Math.max(r.left, c.left), right: Math.min(r.right, c.right),
        top: Math.max(r.top, c.top), bottom: Math.min(r.bottom, c.bottom),
      };
    }
    return r.left < r.right && r.top < r.bottom ? r : null;
  };
  return [...document.querySelectorAll("button, input:not([type=hidden]), select, textarea, summary")]
    .filter((el) => el.getClientRects().length && !el.closest(".toasts"))
    .filter((el) => { const r = shown(el); return r && boxes.some((b) => hit(b, r)); })
    .map((el) => el.getAttribute("aria-label") || el.textContent.trim().slice(0, 40));
}"""


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


async def open_page(
    browser: Any,
    hive: Any,
    viewport: dict[str, int],
    *,
    clock: bool = False,
    allow_notifications: bool = False,
    init_script: str = "",
) -> Any:
    """A page in a fresh context of ``viewport``, logged in, on the host dashboard, live.

    With ``clock``, the page's timers are Playwright's, for the test to pause and move on;
    ``init_script`` runs in every page before the page's own scripts.
    """
    url, token = dashboard_of(hive).url, dashboard_of(hive).token

    def open_it() -> Any:
        context = browser.new_context(viewport=viewport, device_scale_factor=1)
        if clock:
            context.clock.install()
        if allow_notifications:
            context.grant_permissions(["notifications"], origin=url)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.goto(f"{url}/login?token={token}")
        page.wait_for_selector("#link.live")
        return page

    return await browser.run(open_it)


# The host page scrolls its sections inside the window; unrolled, a screenshot shows them all.
UNROLLED = (
    "body.host { height: auto !important; overflow: visible !important; }"
    " body.host > main { overflow: visible !important; }"
)


def shot(page: Any, name: str) -> None:
    """The whole page, every section, under test-artifacts/web/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    style = page.add_style_tag(content=UNROLLED)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    style.evaluate("el => el.remove()")


def fits(page: Any) -> None:
    """Nothing reaches past the window: not the page, not a control."""
    width = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], f"the page is {width[0]}px wide in a {width[1]}px window"
    # The sections scroll inside <main>: it must not scroll sideways either.
    width = page.evaluate(
        "() => [document.querySelector('main').scrollWidth, document.querySelector('main').clientWidth]"
    )
    assert width[0] <= width[1], f"the sections are {width[0]}px wide in {width[1]}px"
    assert page.evaluate(OFF_SCREEN) == []


def toast_covers_nothing(page: Any, text: str) -> None:
    toast = page.locator(".toast", has_text=text).first
    expect(toast).to_be_visible()
    assert page.evaluate(UNDER_TOASTS) == []


@pytest.fixture
async def hive(tmp_path, make_pm):
    # With the bundled plugins that put panels on the host page.
    pm = make_pm(
        web=hyperhive_web,
        questions=hyperhive_questions,
        telemetry=hyperhive_telemetry,
        compaction=hyperhive_compaction,
        crashwatch=hyperhive_crashwatch,
    )
    settings = {"claude": {"turn_attempts": 1, "api_retries": 0}, "broker": {"max_attempts": 1}}
    async with dashboard_hive(tmp_path, pm, SCENARIO, **settings) as running:
        yield running


async def fill_every_section(hive: Any) -> dict[str, int]:
    """A question, an approval, a dead letter (and the note to the operator), a draft, kept state."""
    text, is_error = await call_tool(
        hive, "manager", "ask_operator", question="ship the release-candidate-with-a-long-name today?"
    )
    assert not is_error, text
    question = int(text.split()[1])
    approval = await hive.approvals.request_spawn(
        "manager", "helper-with-quite-a-long-name", "a helper for the worker, to see the card on a phone"
    )
    await hive.spawn("scout")
    await hive.destroy("scout")
    await hive.approvals.request_spawn_draft("manager", "drafty")
    sent = await hive.broker.send("operator", "worker", "doomed: a message that dies")
    died = await next_event(hive, "worker", "message_dead", lambda event: event.data["id"] == sent.id)
    await next_event(hive, "worker", "turn_end", after=died.id)
    return {"question": question, "approval": approval.id, "dead": sent.id}


async def test_the_host_page_fits_a_phone_and_every_action_works_there(hive, browser):
    with trio.fail_after(90):
        ids = await fill_every_section(hive)
    page = await open_page(browser, hive, PHONE)

    def looks() -> None:
        expect(page.locator(f"#approval-{ids['approval']}")).to_be_visible()
        expect(page.locator(f"#dead-{ids['dead']}")).to_be_visible()
        expect(page.locator("#panel-questions")).to_be_visible()
        expect(page.locator("#inbox-list li", has_text="working on it")).to_be_visible()
        expect(page.locator("#kept-list li", has_text="scout")).to_be_visible()
        expect(page.locator("#draft-list li", has_text="drafty")).to_be_visible()
        expect(page.locator("section.panel.plugin").first).to_be_attached()
        shot(page, "phone-host")
        fits(page)
        diff = page.locator(f"#approval-{ids['approval']} pre.diff")
        sizes = diff.evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert sizes[0] > sizes[1], "the diff is no wider than its box: nothing to scroll"
        diff.evaluate("el => { el.scrollLeft = 10000; }")  # it scrolls sideways in its own box ...
        assert diff.evaluate("el => el.scrollLeft") > 0
        fits(page)  # ... and the page does not
        diff.evaluate("el => { el.scrollLeft = 0; }")

    def act() -> None:
        # the question: typed, answered
        question = page.locator(f'[data-question="{ids["question"]}"]')
        question.locator("textarea").fill("yes, today")
        question.get_by_role("button", name=f"send the answer to question {ids['question']}").click()
        toast_covers_nothing(page, f"answered question {ids['question']}")
        expect(page.locator("#panel-questions")).to_be_hidden()
        # the approval: a note, then deny, twice
        card = page.locator(f"#approval-{ids['approval']}")
        card.get_by_role("textbox").fill("not this one")
        deny = card.get_by_role("button", name=f"deny {ids['approval']}")
        deny.click()
        expect(deny).to_have_text("sure? D3NY")
        shot(page, "phone-host-deny-armed")
        fits(page)
        # A full-page shot on a loaded machine can outlast the arm (4 s): let it lapse, then
        # arm it again and confirm at once, so the second click is never a first one.
        expect(deny).to_have_text("✗ D3NY", timeout=15_000)
        deny.click()
        expect(deny).to_have_text("sure? D3NY")
        deny.click()
        toast_covers_nothing(page, f"#{ids['approval']} denied")
        expect(card).to_have_count(0)
        # spawn
        page.fill("#spawn-name", "phoned")
        page.get_by_role("button", name="spawn", exact=True).click()
        toast_covers_nothing(page, "spawned")
        expect(page.locator("#agent-phoned")).to_be_visible()
        # the dead letter: what the attempts did, then drop it, twice
        letter = page.locator(f"#dead-{ids['dead']}")
        letter.locator("summary").click()
        expect(letter.locator(".activity-body .attempt")).to_have_count(1)
        fits(page)
        shot(page, "phone-host-dead-letter")
        drop = letter.get_by_role("button", name=f"drop dead letter {ids['dead']} for good")
        drop.click()
        expect(drop).to_have_text("sure? DR0P for good")
        drop.click()
        toast_covers_nothing(page, f"dropped #{ids['dead']}")
        expect(letter).to_have_count(0)
        # kept state: restore
        page.locator("#kept-list li", has_text="scout").get_by_role("button", name="restore scout").click()
        toast_covers_nothing(page, "restored scout")
        expect(page.locator("#agent-scout")).to_be_visible()
        # a row's action, at the far right of the table on a desktop
        destroy = page.get_by_role("button", name="destroy scout, keeping its state")
        destroy.click()
        expect(destroy).to_have_text("sure? D3STR0Y")
        fits(page)
        destroy.click()
        toast_covers_nothing(page, "destroyed scout")
        expect(page.locator("#agent-scout")).to_have_count(0)
        fits(page)
        shot(page, "phone-host-after")

    with trio.fail_after(120):
        await browser.run(looks)
        await browser.run(act)
    assert (await hive.approvals.get(ids["approval"])).status == "denied"
    assert "phoned" in hive.agents


async def test_the_host_page_on_a_desktop_keeps_its_two_columns(hive, browser):
    with trio.fail_after(90):
        ids = await fill_every_section(hive)
    page = await open_page(browser, hive, DESKTOP)

    def looks() -> None:
        expect(page.locator(f"#approval-{ids['approval']}")).to_be_visible()
        expect(page.locator(f"#dead-{ids['dead']}")).to_be_visible()
        fits(page)
        agents = page.locator("#agents").bounding_box()
        inbox = page.locator("#inbox").bounding_box()
        assert inbox["x"] > agents["x"] + agents["width"]  # the inbox beside the swarm, not under it
        shown = page.locator("table.agents thead th").evaluate_all("ths => ths.filter((th) => th.offsetWidth).length")
        assert shown == 6  # the table is a table: every column but the host's (one host)
        row = page.locator("#agent-worker").bounding_box()
        assert row["height"] < 60  # one line per agent
        shot(page, "desktop-host")
        page.get_by_role("button", name=f"deny {ids['approval']}").click()
        page.get_by_role("button", name=f"deny {ids['approval']}").click()
        toast_covers_nothing(page, "note must not be empty")
        expect(page.locator(".toast.error")).to_have_text(re.compile("note"))

    with trio.fail_after(90):
        await browser.run(looks)


async def test_an_armed_deny_and_a_half_typed_answer_survive_live_updates(hive, browser):
    text, is_error = await call_tool(hive, "manager", "ask_operator", question="what should the helper do first?")
    assert not is_error, text
    question = int(text.split()[1])
    approval = await hive.approvals.request_spawn("manager", "helper", "a helper for the worker")
    await hive.broker.send("worker", "operator", "an earlier note")
    page = await open_page(browser, hive, PHONE, clock=True)
    card = page.locator(f"#approval-{approval.id}")
    deny = card.get_by_role("button", name=f"deny {approval.id}")
    earlier = page.locator("#inbox-list li", has_text="an earlier note")

    def arm_and_type() -> None:
        # From here on the page's time moves only when the test moves it: the deny stays
        # armed for its four seconds however slow the machine is, unless a re-render resets it.
        page.clock.pause_at(page.evaluate("() => Date.now()") / 1000 + 1)
        earlier.get_by_role("button", name="reply to worker").click()  # a reply form, opened and typed in
        earlier.get_by_role("textbox", name="reply to worker").fill("a reply in the works")
        card.get_by_role("textbox").fill("not now")
        deny.click()
        expect(deny).to_have_text("sure? D3NY")
        page.locator(f'[data-question="{question}"] textarea').click()
        page.keyboard.type("half an ans")
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")

    later: dict[str, int] = {}

    def updated() -> None:
        """Move the page's time on, a little at a time, until every update has been rendered."""
        rendered = """(ids) => !!document.getElementById(`approval-${ids.approval}`)
          && !!document.querySelector(`[data-question="${ids.question}"]`)
          && [...document.querySelectorAll("#inbox-list li")].some((li) => li.textContent.includes("pong"))
          && document.querySelector("#agent-manager .state").textContent.includes("idle")"""
        for _ in range(120):  # 3 s of the page's time at most: the deny disarms by itself after 4
            if page.evaluate(rendered, later):
                return
            page.clock.run_for(25)
            page.wait_for_timeout(150)
        raise AssertionError("the live updates did not all arrive")

    def still_armed_and_typed() -> None:
        expect(deny).to_have_text("sure? D3NY")
        expect(deny).to_have_class(re.compile("armed"))
        focused = page.evaluate(
            """() => { const el = document.activeElement;
              const q = el.closest("[data-question]")?.dataset.question;
              return [q, el.value, el.selectionStart, el.selectionEnd]; }"""
        )
        assert focused == [str(question), "half an ans", 9, 9]
        expect(earlier.get_by_role("textbox", name="reply to worker")).to_have_value("a reply in the works")
        shot(page, "phone-host-kept-through-updates")
        deny.click()
        expect(page.locator(".toast", has_text=f"#{approval.id} denied")).to_be_visible()
        expect(card).to_have_count(0)

    with trio.fail_after(120):
        await browser.run(arm_and_type)
        # The manager's turn: its state changes, a second approval and a question arrive, a message comes in.
        hive.agents.set_state("manager", State.THINKING, "1 message(s)")
        later["approval"] = (await hive.approvals.request_spawn("manager", "helper-two", "another helper")).id
        text, is_error = await call_tool(hive, "manager", "ask_operator", question="and then?")
        later["question"] = int(text.split()[1])
        await hive.broker.send("operator", "worker", "ping")
        await next_event(hive, "worker", "message_sent", lambda event: event.data["to"] == "operator")
        hive.agents.set_state("manager", State.IDLE)
        await browser.run(updated)
        await browser.run(still_armed_and_typed)
    denied = await hive.approvals.get(approval.id)
    assert (denied.status, denied.note) == ("denied", "not now")
