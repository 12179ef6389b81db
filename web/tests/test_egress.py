"""An agent's refused connections on its page: the chip with the count and targets, and the line in its tail."""

from __future__ import annotations

import json
import re

import trio
from hyperhive_web import dashboard_of
from test_bwrap import needs_bwrap
from test_network import run_inside
from webkit import dashboard_hive, operator, screenshot

from hyperhive_core.testing import next_event


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


@needs_bwrap
async def test_a_refused_connection_shows_on_the_agents_page(tmp_path, web_pm, browser):
    async with dashboard_hive(
        tmp_path,
        web_pm,
        agents={"worker": {"egress": ["github.com:443"]}},
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 63320, "uid_range_size": 10},
    ) as hive:
        page = await browser.page()

        def before() -> None:
            page.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}&next=/agent/worker/")
            expect(page.locator("#badge")).not_to_be_empty()
            expect(page.locator("#egress")).to_be_hidden()  # nothing refused yet

        with trio.fail_after(60):
            await browser.run(before)
            curl = "curl -sS --noproxy '' --max-time 20 --proxytunnel -o /dev/null http://127.0.0.1:9/"
            rc, _, err = await run_inside(hive, "worker", curl)
            await next_event(hive, "worker", "egress_denied")
        assert (rc, err.strip()) == (56, "curl: (56) CONNECT tunnel failed, response 403")
        state = json.loads((await operator(hive).get("/api/agents/worker/state")).body)
        assert [(entry["target"], entry["count"]) for entry in state["egress_denied"]] == [("127.0.0.1:9", 1)]

        def after() -> None:
            chip = page.locator("#egress")
            expect(chip).to_have_text("egress 1 denied")
            title = re.compile(r"^127\.0\.0\.1:9: 1 refused, last .+\nallowed: github\.com:443$")
            expect(chip).to_have_attribute("title", title)
            expect(page.locator("#tail .ev.egress_denied")).to_have_text(
                re.compile(r"egress to 127\.0\.0\.1:9 denied \(1 so far\): not on its egress list")
            )
            screenshot(page, "agent-egress-denied")

        with trio.fail_after(60):
            await browser.run(after)
