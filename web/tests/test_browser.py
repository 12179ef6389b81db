"""The dashboard in Debian's Chromium, driven by Playwright: what the operator sees and does.

Each test keeps a screenshot under test-artifacts/web/ to look at.
"""

from __future__ import annotations

import datetime
import re

import pytest
import trio
from hyperhive_web import dashboard_of
from webkit import dashboard_hive, screenshot

from hyperhive_core import State
from hyperhive_core.testing import needs_claude, next_event

pytestmark = [needs_claude, pytest.mark.slow]


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def login(page, hive, path: str = "/") -> None:
    page.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}&next={path}")
    page.wait_for_selector("#link.live")


def toast(page, text: str) -> None:
    expect(page.locator(".toast", has_text=text).first).to_be_visible()


async def test_login_shows_the_swarm_live(hive, browser):
    page = await browser.page()

    def steps() -> None:
        page.goto(dashboard_of(hive).url + "/")
        expect(page).to_have_url(re.compile(r"/login\?next=/$"))
        screenshot(page, "login")
        page.fill("#token", dashboard_of(hive).token)
        page.click("button[type=submit]")
        expect(page).to_have_url(dashboard_of(hive).url + "/")
        expect(page.locator("#link")).to_have_class(re.compile("live"))
        expect(page.locator("#agent-rows tr")).to_have_count(2)
        expect(page.locator("#agent-worker .state")).to_have_text("idle")
        expect(page.locator(".banner.rehearsal")).to_contain_text("R3H34RS4L M0D3L")
        expect(page.locator(".banner.exposed")).to_contain_text("N0 1S0L4T10N")
        expect(page.get_by_role("region", name="agents", exact=True)).to_be_visible()
        expect(page.get_by_role("region", name="operator inbox")).to_be_visible()
        page.get_by_role("button", name="log out").click()
        expect(page).to_have_url(re.compile(r"/login$"))
        page.goto(dashboard_of(hive).url + "/agent/worker/")
        expect(page).to_have_url(re.compile(r"/login\?next=/agent/worker/$"))  # the session is gone

    with trio.fail_after(60):
        await browser.run(steps)


async def test_a_message_shows_in_the_live_tail_and_the_badge_goes_thinking_then_idle(hive, browser):
    page = await browser.page()

    def steps() -> None:
        login(page, hive, "/agent/worker/")
        expect(page.locator("#badge")).to_have_text("idle")
        expect(page.locator("#last-turn")).to_be_hidden()
        page.fill("#line", "ping")
        page.press("#line", "Enter")
        toast(page, "sent #")
        expect(page.locator("#badge")).to_have_text("thinking")
        expect(page.locator("#inbox-list li").first).to_contain_text("ping")
        screenshot(page, "agent-thinking")
        expect(page.locator("#badge")).to_have_text("idle", timeout=30_000)
        expect(page.locator("#tail .ev.assistant_text", has_text="on it")).to_be_visible()
        expect(page.locator("#tail .ev.tool_use", has_text="send")).to_be_visible()
        expect(page.locator("#tail .ev.message_sent", has_text="operator: pong: ping")).to_be_visible()
        expect(page.locator("#tail .ev.turn_end")).to_contain_text("ok ·")
        expect(page.locator("#tail .ev.turn_start")).to_contain_text("turn · 1 message · operator: ping")
        expect(page.locator("#last-turn")).to_be_visible()
        expect(page.locator("#last-turn .v")).to_have_text(re.compile(r"^(\d+ms|\d+\.\ds|\d+m \d\ds)$"))
        screenshot(page, "agent")

    with trio.fail_after(90):
        await browser.run(steps)


async def test_the_last_turn_chip_and_the_napping_badge_follow_the_daemons_state(hive, browser):
    page = await browser.page()
    await browser.run(login, page, hive, "/agent/worker/")
    status = hive.agents.get("worker").status

    async def turn_took(ms: int) -> None:
        hive.agents.set_state("worker", State.THINKING, "1 message(s)")
        status.last_turn_ms = ms
        hive.agents.set_state("worker", State.IDLE)

    with trio.fail_after(60):
        for ms, shown in ((850, "850ms"), (12_300, "12.3s"), (125_000, "2m 05s")):
            await turn_took(ms)
            await browser.run(lambda shown=shown: expect(page.locator("#last-turn .v")).to_have_text(shown))
        wake = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=95)
        hive.agents.set_state("worker", State.NAPPING, wake.isoformat(timespec="seconds").replace("+00:00", "Z"))

        def napping() -> None:
            expect(page.locator("#badge")).to_have_text(re.compile(r"^napping 😴 · 01:3\d$"))
            first = page.locator("#badge time").inner_text()
            expect(page.locator("#badge time")).not_to_have_text(first, timeout=3000)  # it counts down
            expect(page.locator("#cancel")).to_be_visible()
            screenshot(page, "agent-napping")

        await browser.run(napping)
        hive.agents.set_state("worker", State.COMPACTING, "notes.md past the threshold")
        await browser.run(lambda: expect(page.locator("#badge")).to_have_text("compacting 📦"))


async def test_the_dashboard_link_opens_the_host_dashboard_in_a_new_tab(hive, browser):
    page = await browser.page()

    def steps() -> None:
        login(page, hive, "/agent/worker/")
        link = page.get_by_role("link", name="open the host dashboard in a new tab")
        expect(link).to_have_text("↑ DASHB04RD")
        expect(link).to_have_attribute("href", f"http://127.0.0.1:{dashboard_of(hive).port}/")
        expect(link).to_have_attribute("target", "_blank")
        with page.expect_popup() as popup:
            link.click()
        dashboard = popup.value
        dashboard.wait_for_selector("#agent-worker")
        expect(dashboard).to_have_url(f"http://127.0.0.1:{dashboard_of(hive).port}/")
        expect(page).to_have_url(re.compile("/agent/worker/$"))  # the tail stays where it was

    with trio.fail_after(60):
        await browser.run(steps)


async def test_slash_model_switches_at_once_when_idle(hive, browser):
    page = await browser.page()

    def steps() -> None:
        login(page, hive, "/agent/worker/")
        expect(page.locator("#model")).to_contain_text("model haiku")
        page.fill("#line", "/model sonnet")
        page.press("#line", "Enter")
        toast(page, "model is now sonnet")
        expect(page.locator("#model")).to_contain_text("model sonnet")
        expect(page.locator("#model")).to_contain_text("switched just now")
        expect(page.locator("#line")).to_have_value("")
        page.fill("#line", "/help")
        page.press("#line", "Enter")
        expect(page.locator("#tail .ev.local")).to_contain_text("/model")
        page.fill("#line", "/frobnicate")
        page.press("#line", "Enter")
        toast(page, "unknown command '/frobnicate'; the commands are /cancel, /model (/help says what each does)")

    with trio.fail_after(60):
        await browser.run(steps)
    assert hive.agents.get("worker").status.model == "sonnet"


async def test_slash_model_is_queued_during_a_turn_and_slash_cancel_interrupts_it(hive, browser):
    page = await browser.page()

    def start() -> None:
        login(page, hive, "/agent/worker/")
        page.fill("#line", "slow")
        page.press("#line", "Enter")
        expect(page.locator("#badge")).to_have_text("thinking")

    def queue_then_cancel() -> None:
        page.fill("#line", "/model opus")
        page.press("#line", "Enter")
        toast(page, "model opus queued")
        expect(page.locator("#model .queued")).to_have_text("→ opus queued")
        screenshot(page, "agent-model-queued")
        page.fill("#line", "/cancel")
        page.press("#line", "Enter")
        toast(page, "turn cancelled")
        expect(page.locator("#badge")).to_have_text("idle")
        expect(page.locator("#tail .ev.turn_end").last).to_contain_text("interrupted")
        expect(page.locator("#model")).to_contain_text("model opus")
        expect(page.locator("#model .queued")).to_have_count(0)

    with trio.fail_after(90):
        await browser.run(start)
        await hive.rehearsal.wait_for_request(lambda r: r.agent == "worker" and r.rule == "slow")
        await browser.run(queue_then_cancel)


async def test_the_terminal_tab_echoes_a_command(hive, browser):
    page = await browser.page()

    def steps() -> None:
        login(page, hive, "/agent/worker/")
        page.get_by_role("tab", name="terminal").click()
        expect(page.locator("#term-status")).to_have_text("● shell in worker's container")
        expect(page.locator(".xterm-rows")).to_contain_text(re.compile(r"[$#]"), timeout=15_000)  # the prompt
        page.locator(".xterm-helper-textarea").focus()
        page.keyboard.type("echo hi-$((6*7))")
        page.keyboard.press("Enter")
        expect(page.locator(".xterm-rows")).to_contain_text("hi-42")
        screenshot(page, "agent-terminal")

    with trio.fail_after(60):
        await browser.run(steps)


async def test_reload_replays_the_tail_without_duplicates_or_gaps(hive, browser):
    page = await browser.page()

    def tail_ids() -> list[int]:
        return [int(i) for i in page.locator("#tail .ev[data-id]").evaluate_all("els => els.map(e => e.dataset.id)")]

    def before_reload() -> list[int]:
        login(page, hive, "/agent/worker/")
        page.fill("#line", "ping")
        page.press("#line", "Enter")
        expect(page.locator("#tail .ev.turn_end")).to_have_count(1, timeout=30_000)
        return tail_ids()

    def after_reload() -> list[int]:
        page.reload()
        page.wait_for_selector("#link.live")
        expect(page.locator("#tail .ev.turn_end")).to_have_count(1)
        return tail_ids()

    with trio.fail_after(90):
        first = await browser.run(before_reload)
        await next_event(hive, "worker", "turn_end")
        history = [event.id for event in await hive.events.history("worker")]
        second = await browser.run(after_reload)
        hive.events.publish("worker", "note", text="after the reload")
        await browser.run(lambda: expect(page.locator("#tail .ev.note", has_text="after the reload")).to_have_count(1))
        third = await browser.run(tail_ids)
    assert first == history  # live, every event once, in order
    assert second == history  # replayed: the same, nothing missing, nothing twice
    assert third[:-1] == history
    assert len(set(third)) == len(third)


async def test_destroy_and_purge_take_two_clicks(hive, browser):
    await hive.spawn("scout")
    page = await browser.page()

    def steps() -> None:
        login(page, hive)
        row = page.locator("#agent-scout")
        destroy = row.get_by_role("button", name="destroy scout, keeping its state")
        destroy.click()
        expect(destroy).to_have_text("sure? D3STR0Y")
        expect(destroy).to_have_class(re.compile("armed"))
        screenshot(page, "host-destroy-armed")
        page.wait_for_timeout(300)
        assert row.count() == 1  # one click destroyed nothing
        # The shot can outlast the arm (4 s) on a loaded machine: let it lapse, arm again, confirm at once.
        expect(destroy).to_have_text("D3STR0Y", timeout=15_000)
        destroy.click()
        expect(destroy).to_have_text("sure? D3STR0Y")
        destroy.click()
        toast(page, "destroyed scout; its state is kept")
        expect(row).to_have_count(0)
        kept = page.locator("#kept-list li", has_text="scout")
        expect(kept).to_be_visible()
        purge = kept.get_by_role("button", name="purge the state of scout, for good")
        purge.click()
        expect(purge).to_have_text("sure? PURG3 for good")
        purge.click()
        toast(page, "purged scout")
        expect(kept).to_have_count(0)

    with trio.fail_after(60):
        await browser.run(steps)
    assert "scout" not in hive.agents
    assert "scout" not in await hive.kept_state()


async def test_approving_a_spawn_from_its_diff(hive, browser):
    page = await browser.page()
    await browser.run(login, page, hive)
    approval = await hive.approvals.request_spawn("manager", "helper", "a helper for the worker")

    def steps() -> None:
        card = page.locator(f"#approval-{approval.id}")
        expect(card).to_be_visible()  # arrived live, no reload
        expect(card).to_contain_text("spawn")
        expect(card).to_contain_text("a helper for the worker")
        expect(card.locator("pre.diff .file", has_text="agent.toml").first).to_be_visible()
        expect(card.locator("pre.diff .add").first).to_be_visible()
        screenshot(page, "host-approval")
        card.get_by_role("textbox").fill("welcome aboard")
        card.get_by_role("button", name=f"approve {approval.id}").click()
        toast(page, f"#{approval.id} approved")
        expect(page.locator("#agent-helper")).to_be_visible()
        expect(card).to_have_count(0)
        expect(page.locator("details.history")).to_contain_text("approved")

    with trio.fail_after(60):
        await browser.run(steps)
    resolved = await hive.approvals.get(approval.id)
    assert (resolved.status, resolved.note) == ("approved", "welcome aboard")
    assert "helper" in hive.agents


async def test_denying_takes_two_clicks_and_a_note(hive, browser):
    page = await browser.page()
    await browser.run(login, page, hive)
    approval = await hive.approvals.request_spawn("manager", "helper", "another helper")

    def steps() -> None:
        card = page.locator(f"#approval-{approval.id}")
        deny = card.get_by_role("button", name=f"deny {approval.id}")
        deny.click()
        expect(deny).to_have_text("sure? D3NY")
        deny.click()
        toast(page, "note must not be empty")  # the daemon wants a reason
        card.get_by_role("textbox").fill("not now")
        deny.click()
        deny.click()
        toast(page, f"#{approval.id} denied")
        expect(card).to_have_count(0)

    with trio.fail_after(60):
        await browser.run(steps)
    assert (await hive.approvals.get(approval.id)).status == "denied"


async def test_spawn_inbox_reply_and_drafts_follow_live_events(hive, browser):
    page = await browser.page()
    await browser.run(login, page, hive)

    def spawn() -> None:
        page.fill("#spawn-name", "scout")
        page.get_by_role("button", name="spawn", exact=True).click()
        toast(page, "spawned")
        expect(page.locator("#agent-scout")).to_be_visible()
        expect(page.locator("#spawn-name")).to_have_value("")

    def reply() -> None:
        message = page.locator("#inbox-list li", has_text="pong: ping")
        expect(message).to_be_visible(timeout=30_000)  # the worker's answer, live
        message.get_by_role("button", name="reply to worker").click()
        message.get_by_role("textbox", name="reply to worker").fill("thanks")
        message.get_by_role("button", name="send the reply").click()
        toast(page, "to worker")

    def drafted() -> None:
        expect(page.locator("#draft-list li", has_text="drafty")).to_contain_text("drafted by manager")
        screenshot(page, "host-busy")

    with trio.fail_after(90):
        await browser.run(spawn)
        await hive.broker.send("operator", "worker", "ping")
        await browser.run(reply)
        await hive.approvals.request_spawn_draft("manager", "drafty")
        await browser.run(drafted)
    assert [m.body for m in await hive.broker.recent_for("worker", 1)] == ["thanks"]


async def test_the_state_detail_shows_beside_the_badge_live_and_an_idle_agent_falls_asleep(tmp_path, web_pm, browser):
    # The model takes 15 s to answer: the wait shows from 8 s, counted every 4 s (a quarter of stall_seconds).
    scenario = '[[agents.worker.rules]]\nsteps = [{ text = "done", delay = 15 }]\n'
    settings = {"idle_release_seconds": 3, "stall_seconds": 16}
    async with dashboard_hive(tmp_path, web_pm, scenario, claude=settings) as hive:
        host, agent = await browser.page(), await browser.page()
        await browser.run(login, host, hive, "/")
        await browser.run(login, agent, hive, "/agent/worker/")

        def asleep() -> None:
            expect(host.locator("#agent-worker .state")).to_have_text("asleep")
            expect(agent.locator("#badge")).to_have_text("asleep")
            expect(agent.locator("#state-detail")).to_be_hidden()

        def waiting() -> None:
            wait = re.compile(r"^waiting on model API · \d+s$")
            expect(agent.locator("#badge")).to_have_text("thinking")
            detail = agent.locator("#state-detail")
            expect(detail).to_have_text(wait, timeout=30_000)
            expect(detail).to_be_visible()
            first = detail.inner_text()
            expect(detail).not_to_have_text(first, timeout=8_000)  # it counts on, live
            shown = host.locator("#agent-worker .state .state-detail")
            expect(shown).to_have_text(wait)
            expect(shown).to_be_visible()
            screenshot(agent, "agent-state-detail")
            screenshot(host, "host-state-detail")

        def answered() -> None:
            expect(agent.locator("#badge")).to_have_text("idle", timeout=30_000)
            expect(agent.locator("#state-detail")).to_be_hidden()
            expect(host.locator("#agent-worker .state")).to_have_text("idle")

        with trio.fail_after(120):
            await browser.run(asleep)  # three idle seconds after the hive started
            screenshot_path = await browser.run(screenshot, host, "host-asleep")
            assert screenshot_path.stat().st_size > 0
            await hive.broker.send("operator", "worker", "take your time")
            await browser.run(waiting)
            await browser.run(answered)
            await browser.run(asleep)  # and asleep again
