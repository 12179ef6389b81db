"""The dashboard's sends carry an idempotency key: a reply lost on the way back is retried, stored once."""

from __future__ import annotations

import trio
from test_browser import expect, login, toast
from webkit import screenshot

from hyperhive_core.testing import needs_claude

pytestmark = needs_claude


async def test_a_send_whose_reply_is_lost_is_retried_and_stored_once(hive, browser):
    await hive.pause("worker")  # no turn: the inbox shows exactly what was stored
    page = await browser.page()
    keys: list[str | None] = []

    def lose_the_first_reply(route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # the daemon stores the message ...
            route.abort("connectionreset")  # ... and the page never hears back
        else:
            route.continue_()

    def steps() -> None:
        page.route("**/api/agents/worker/messages", lose_the_first_reply)
        login(page, hive, "/agent/worker/")
        page.fill("#line", "only once")
        page.press("#line", "Enter")
        toast(page, "sent #")
        expect(page.locator("#line")).to_have_value("")
        screenshot(page, "send-retried")

    with trio.fail_after(60):
        await browser.run(steps)
    stored = [m for m in await hive.broker.recent_for("worker") if m.body == "only once"]
    assert len(stored) == 1
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert keys[0] is not None
    assert len(keys[0]) == 32
