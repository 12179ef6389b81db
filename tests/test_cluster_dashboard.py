"""One dashboard for a hive on two hosts, in Chromium: every host's agents with their host, a host
filter, approvals that act on the manager's host, and a host that stops shown down."""

from __future__ import annotations

import hyperhive_web
import pytest
import trio
from test_cluster_hosts import host, placement_ready

from hyperhive_core.testing import Script, needs_claude, wait_until

pytestmark = [needs_claude, pytest.mark.slow]


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


async def test_one_dashboard_shows_every_host_filters_by_host_and_approves_on_the_managers_host(
    make_pm, tmp_path, nats_cluster, chromium
):
    placement_ready(nats_cluster.urls)
    idle = Script()
    idle.otherwise("nothing to do")
    async with trio.open_nursery() as nursery:
        on_a = trio.CancelScope()
        started = trio.Event()
        hosts = {}

        async def run_a() -> None:
            with on_a:
                async with host(tmp_path, make_pm(), "a", nats_cluster.urls, idle, {"alice": {}}) as a:
                    hosts["a"] = a
                    started.set()
                    await trio.sleep_forever()

        nursery.start_soon(run_a)
        await started.wait()
        a = hosts["a"]
        web_pm = make_pm(web=hyperhive_web)
        async with host(tmp_path, web_pm, "b", nats_cluster.urls, idle, {"bob": {}}, web={"port": 0}) as b:
            page = await chromium.dashboard(b)

            def every_host() -> None:
                expect(page.locator("#agent-rows tr")).to_have_count(3)
                for name, where in (("manager", "a"), ("alice", "a"), ("bob", "b")):
                    expect(page.locator(f"#agent-{name} .host")).to_have_text(where)
                expect(page.locator("#host-list")).to_contain_text("a up")
                expect(page.locator("#agent-bob .name a")).to_have_attribute("href", "/agent/bob/")
                expect(page.locator("#agent-alice .name a")).to_have_attribute("href", "/agent/alice/")
                page.select_option("#host-filter", "a")
                expect(page.locator("#agent-rows tr")).to_have_count(2)
                expect(page.locator("#agent-bob")).to_have_count(0)
                page.select_option("#host-filter", "")
                expect(page.locator("#agent-rows tr")).to_have_count(3)

            with trio.fail_after(60):
                await chromium.run(every_host)

            # The manager on a asks for an agent where the hive has room (b); b's dashboard hears of it
            # live and approves it; a, which keeps the approvals, has b create it.
            approval = await a.approvals.request_spawn("manager", "helper", "a helper for alice")

            def approve() -> None:
                card = page.locator(f"#approval-{approval.id}")
                expect(card).to_be_visible()
                card.get_by_role("button", name=f"approve {approval.id}").click()
                expect(card).to_have_count(0)
                wait_until(page, "() => document.querySelector('#agent-helper .host')?.textContent === 'b'")

            with trio.fail_after(90):
                await chromium.run(approve)
            assert (await a.approvals.get(approval.id)).status == "approved"
            assert "helper" in b.agents
            assert a.cluster.placement["helper"] == "b"

            # Host a stops: b's dashboard shows it down, and its agents down, not idle.
            on_a.cancel()

            def a_down() -> None:
                expect(page.locator("#host-list")).to_contain_text("a down", timeout=30_000)
                expect(page.locator("#agent-alice .state")).to_contain_text("down", timeout=15_000)

            with trio.fail_after(60):
                await chromium.run(a_down)
