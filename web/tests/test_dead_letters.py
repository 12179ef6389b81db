"""D34D L3TT3RS on the host dashboard: the HTTP routes, and the section in Chromium, with dead letters made for real.

The worker's turns fail (the rehearsal model answers 500 after the worker has sent
the operator a note), so with ``max_attempts = 1`` each message dies in one turn.
"""

from __future__ import annotations

import re

import pytest
import trio
from hyperhive_web import dashboard_of
from webkit import Http, browser_session, dashboard_hive, operator, screenshot

from hyperhive_core.testing import needs_claude, next_event

pytestmark = needs_claude

# Two failures in all, then the model answers: the third turn (a requeue) succeeds.
DOOMED = """
[[agents.worker.rules]]
name = "doomed"
when = "doomed"
steps = [
  { tool = "send", input = { to = "operator", body = "working on it" } },
  { text = "done", status = 500, times = 2 },
]

[[agents."*".rules]]
steps = [{ text = "noted" }]
"""


def doomed_hive(tmp_path, web_pm):
    return dashboard_hive(
        tmp_path, web_pm, DOOMED, claude={"turn_attempts": 1, "api_retries": 0}, broker={"max_attempts": 1}
    )


async def dead_letter(hive, body: str) -> int:
    """Send ``body`` to the worker and wait until its one attempt has failed and it is dead."""
    sent = await hive.broker.send("operator", "worker", body)
    died = await next_event(hive, "worker", "message_dead", lambda event: event.data["id"] == sent.id)
    await next_event(hive, "worker", "turn_end", after=died.id)
    return sent.id


async def test_the_dead_letter_routes(tmp_path, web_pm):
    async with doomed_hive(tmp_path, web_pm) as hive:
        http = operator(hive)
        with trio.fail_after(60):
            assert (await http.get("/api/state")).json()["dead_letters"] == 0
            dead = await dead_letter(hive, "doomed: one")
            state = (await http.get("/api/state")).json()
            listed = await http.get("/api/dead-letters")
            shown = await http.get(f"/api/dead-letters/{dead}")
            by_agent = (await http.get("/api/dead-letters?agent=manager")).json()
            bad_limit = await http.get("/api/dead-letters?limit=0")
            too_many = await http.get("/api/dead-letters?limit=5000")
            bad_agent = await http.get("/api/dead-letters?agent=Not%20A%20Name")
            missing = await http.get("/api/dead-letters/99999")
            anonymous = Http(dashboard_of(hive).url)
            unknown_reader = await anonymous.get("/api/dead-letters")
            unknown_dropper = await anonymous.post(
                f"/api/dead-letters/{dead}/drop", headers={"Origin": dashboard_of(hive).url}
            )
            browser, csrf = await browser_session(hive)
            forged = await browser.post(f"/api/dead-letters/{dead}/requeue")
            still_dead = (await http.get("/api/dead-letters")).json()["total"]
            not_dead = await http.post(f"/api/dead-letters/{dead + 1}/drop")  # the note to the operator
            # Paused, the worker leaves the requeued message queued: it cannot die again before the second requeue.
            assert (await http.post("/-/web/agents/worker/pause")).status == 200
            requeued = await browser.post(f"/api/dead-letters/{dead}/requeue", headers={"X-CSRF-Token": csrf})
            again = await http.post(f"/api/dead-letters/{dead}/requeue")
        assert state["dead_letters"] == 1
        assert listed.status == 200
        [letter] = listed.json()["dead_letters"]
        assert listed.json()["total"] == 1
        assert (letter["id"], letter["recipient"], letter["sender"]) == (dead, "worker", "operator")
        assert letter["attempts"] == 1
        assert letter["last_error"].startswith("turn failure")
        assert [attempt["exit"] for attempt in letter["history"]] == ["failure"]
        detail = shown.json()
        assert detail["body"] == "doomed: one"
        assert detail["warning"].startswith("a requeue delivers the message again: the agent may repeat work")
        assert [item["type"] for item in detail["history"][0]["activity"]][:2] == ["tool_use", "message_sent"]
        assert by_agent == {"total": 0, "dead_letters": []}
        assert (bad_limit.status, bad_limit.json()["error"]) == (400, "?limit= must be at least 1, not 0")
        assert (too_many.status, too_many.json()["error"]) == (
            400,
            "limit must be a whole number from 1 to 1000, not 5000",
        )
        assert bad_agent.status == 400
        assert "invalid agent name" in bad_agent.json()["error"]
        assert missing.status == 404
        assert "message 99999 does not exist" in missing.json()["error"]
        assert (unknown_reader.status, unknown_dropper.status) == (401, 401)
        assert forged.status == 403  # a logged-in browser needs the CSRF token to change anything
        assert still_dead == 1
        assert not_dead.status == 404
        assert f"message {dead + 1} is queued, waiting for delivery" in not_dead.json()["error"]
        assert requeued.status == 200, requeued.body
        assert requeued.json() == {"requeued": [dead], "warning": detail["warning"]}
        assert again.status == 404
        assert "nothing was requeued" in again.json()["error"]


@pytest.mark.slow
async def test_the_section_lists_requeues_and_drops_dead_letters_live(tmp_path, web_pm, browser):
    async with doomed_hive(tmp_path, web_pm) as hive:
        page = await browser.page()

        def empty() -> None:
            from playwright.sync_api import expect

            page.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}")
            page.wait_for_selector("#link.live")
            section = page.get_by_role("region", name="dead letters: messages whose every delivery attempt failed")
            expect(section).to_contain_text("no dead letters")
            expect(section.locator("h2 .count")).to_have_text("0")
            expect(page.locator("#dead-chip")).to_be_hidden()

        await browser.run(empty)
        with trio.fail_after(60):
            first = await dead_letter(hive, "doomed: the first")

        def one_arrives() -> None:
            from playwright.sync_api import expect

            card = page.get_by_role("article", name=f"dead letter {first} to worker")
            expect(card).to_be_visible()  # live: no reload
            expect(card).to_contain_text("from operator")
            expect(card).to_contain_text("doomed: the first")
            expect(card.locator(".last-error")).to_contain_text("turn failure")
            expect(card.locator(".attempts li")).to_have_count(1)
            expect(card.locator(".attempts li")).to_contain_text("failure")
            expect(card).to_contain_text("the agent may repeat work these attempts already did")
            expect(page.locator("#dead-chip")).to_have_text("◆ 1 D34D")
            expect(page.locator("#dead-title .count")).to_have_text("1")
            card.locator("summary", has_text="what the attempts did").click()
            activity = card.get_by_role("region", name="attempt 1")
            expect(activity.locator("li.tool_use")).to_contain_text("send")
            expect(activity.locator("li.message_sent")).to_contain_text("to operator: working on it")
            screenshot(page, "host-dead-letter")

        await browser.run(one_arrives)
        tail = await browser.page()

        def the_agents_tail_says_so() -> None:
            from playwright.sync_api import expect

            tail.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}&next=/agent/worker/")
            tail.wait_for_selector("#link.live")
            line = tail.locator("#tail .ev.message_dead")
            expect(line).to_contain_text(f"message #{first} from operator is dead after 1 attempt: turn failure")
            expect(line.get_by_role("link", name="D34D L3TT3RS")).to_have_attribute("href", f"/#dead-{first}")

        await browser.run(the_agents_tail_says_so)
        with trio.fail_after(60):
            second = await dead_letter(hive, "doomed: the second")

        def drop_takes_two_clicks() -> None:
            from playwright.sync_api import expect

            expect(page.locator("article.dead-letter")).to_have_count(2)
            expect(page.locator("article.dead-letter").first).to_have_id(f"dead-{second}")  # newest first
            # The first card's opened details survived the list's refresh.
            expect(page.locator(f"#dead-{first} details.activity")).to_have_attribute("open", "")
            drop = page.get_by_role("button", name=f"drop dead letter {second} for good")
            drop.click()
            expect(drop).to_have_text("sure? DR0P for good")
            expect(drop).to_have_class(re.compile("armed"))
            screenshot(page, "host-dead-letter-drop-armed")
            page.wait_for_timeout(300)
            expect(page.locator(f"#dead-{second}")).to_have_count(1)  # one click dropped nothing
            # The shot can outlast the arm (4 s) on a loaded machine: let it lapse, arm again, confirm at once.
            expect(drop).to_have_text("DR0P", timeout=15_000)
            drop.click()
            expect(drop).to_have_text("sure? DR0P for good")
            drop.click()
            expect(page.locator(".toast", has_text=f"dropped #{second}").first).to_be_visible()
            expect(page.locator(f"#dead-{second}")).to_have_count(0)
            expect(page.locator("#dead-chip")).to_have_text("◆ 1 D34D")

        with trio.fail_after(60):
            await browser.run(drop_takes_two_clicks)
        assert await hive.broker.dead_count() == 1
        assert [m.id for m in await hive.broker.recent_for("worker", 10) if m.id == second] == []

        def requeue() -> None:
            from playwright.sync_api import expect

            page.get_by_role("button", name=f"requeue dead letter {first}").click()
            expect(page.locator(".toast", has_text=f"requeued #{first}").first).to_be_visible()
            expect(page.locator(f"#dead-{first}")).to_have_count(0)
            expect(page.locator("#dead-letters")).to_contain_text("no dead letters")
            expect(page.locator("#dead-chip")).to_be_hidden()

        with trio.fail_after(60):
            await browser.run(requeue)
            requeued = await next_event(hive, "worker", "message_requeued")
            start = await next_event(hive, "worker", "turn_start", after=requeued.id)
            end = await next_event(hive, "worker", "turn_end", after=start.id)
        assert start.data["message_ids"] == [first]

        def the_tail_has_the_requeue() -> None:
            from playwright.sync_api import expect

            expect(tail.locator("#tail .ev.message_requeued")).to_contain_text(f"#{first} requeued by the operator")

        await browser.run(the_tail_has_the_requeue)
        assert end.data["exit"] == "ok"
        assert await hive.broker.dead_count() == 0
