"""Attacks on the dashboard through the text of events: links that leave it.

A plugin's event may carry a link to a dashboard page (docs/plugins.md). The agent
page shows it only when it is a path here; a browser drops tabs and newlines from a
URL, so ``/<TAB>/evil.example`` would become ``//evil.example``, another site.
"""

from __future__ import annotations

import hyperhive_web
import trio
from hyperhive_web import dashboard_of

from hyperhive_core.testing import needs_claude, running_hive, wait_until

pytestmark = needs_claude

SCENARIO = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""
HOSTILE = ["/\t/evil.example/", "/\n/evil.example/", "/\r\\evil.example/", "javascript:alert(1)", "//evil.example/"]


async def test_an_event_link_never_leads_off_the_dashboard(make_pm, tmp_path, chromium):
    async with running_hive(tmp_path, make_pm(web=hyperhive_web), SCENARIO, web={"port": 0}) as hive:
        await hive.spawn("scout")
        errors: list[str] = []
        page = await chromium.dashboard(hive, "/agent/scout/", errors)
        await chromium.run(lambda: page.wait_for_selector("#link.live"))
        for number, href in enumerate(HOSTILE):
            hive.events.publish("scout", "plugin.linked", text=f"hostile {number}", link={"href": href, "label": "go"})
        hive.events.publish("scout", "plugin.linked", text="ours", link={"href": "/-/web/x", "label": "go"})
        with trio.fail_after(60):
            await chromium.run(wait_until, page, "() => document.body.innerText.includes('ours')")
            hrefs = await chromium.run(
                page.evaluate, "() => [...document.querySelectorAll('#tail a')].map((a) => a.href)"
            )
            shown = await chromium.run(page.evaluate, "() => document.querySelector('#tail').innerText")
        origin = dashboard_of(hive).url
        assert [href for href in hrefs if not href.startswith(origin + "/")] == []
        assert f"{origin}/-/web/x" in hrefs
        assert all(f"hostile {number}" in shown for number in range(len(HOSTILE)))
        assert errors == []
