"""Another host's agent on this host's dashboard, on a real three-node cluster: its page names its
host, shows its state and live tail, sends it messages and forwards the slash commands that are host
commands; one that needs the agent's own state says where to run it; and the page still loads, the
agent shown down, while its host is down. An unknown name is still a 404."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import hyperhive_web
import pytest
import trio
import trio_websocket
from test_cluster_dashboard import expect
from test_cluster_hosts import host, placement_ready

from hyperhive_core import Hive
from hyperhive_core.testing import Script, needs_claude, next_event

pytestmark = [needs_claude, pytest.mark.slow]


class Dashboard:
    """A host's dashboard over real HTTP, with the operator token, as a script uses it."""

    def __init__(self, hive: Any) -> None:
        web = hyperhive_web.dashboard_of(hive)
        self.url, self.token = web.url, web.token

    def _call(self, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, bytes(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, bytes(refused.read())

    async def get(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        return await trio.to_thread.run_sync(self._call, path, body)

    async def terminal(self, agent: str) -> tuple[int, str | None]:
        """How the dashboard closes ``agent``'s terminal socket before any shell output: its code and reason."""
        address = urllib.parse.urlsplit(self.url)
        headers = [("Authorization", f"Bearer {self.token}")]
        # The stream is closed here: trio-websocket's own client leaves it open when the server closes first.
        stream = await trio.open_tcp_stream(address.hostname, address.port)
        async with stream, trio.open_nursery() as nursery:
            resource = f"/-/web/agents/{agent}/terminal"
            socket = await trio_websocket.wrap_client_stream(
                nursery, stream, address.netloc, resource, extra_headers=headers
            )
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await socket.get_message()
        return closed.value.reason.code, closed.value.reason.reason

    async def json(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        code, answer = await self.get(path, body)
        assert code == status, (path, code, answer[:500])
        return json.loads(answer)


async def stoppable_host(*args: Any, task_status: trio.TaskStatus[tuple[Hive, trio.CancelScope]]) -> None:
    """A host (``host``'s arguments) run in the background: started with the hive and the scope that stops it."""
    with trio.CancelScope() as scope:
        async with host(*args) as hive:
            task_status.started((hive, scope))
            await trio.sleep_forever()


async def test_another_hosts_agent_has_its_page_on_every_dashboard(make_pm, tmp_path, nats_cluster, chromium):
    placement_ready(nats_cluster.urls)
    on_a = Script()
    on_a.on("alice", "hello alice").call("send", {"to": "operator", "body": "hi from host a"}).reply("greeted")
    on_a.otherwise("nothing to do")
    idle = Script()
    idle.otherwise("nothing to do")
    async with trio.open_nursery() as nursery:
        a, on_host_a = await nursery.start(
            stoppable_host, tmp_path, make_pm(), "a", nats_cluster.urls, on_a, {"alice": {}}
        )
        web_pm = make_pm("compaction", web=hyperhive_web)
        async with host(tmp_path, web_pm, "b", nats_cluster.urls, idle, {"bob": {}}, web={"port": 0}) as b:
            dashboard = Dashboard(b)
            assert "alice" not in b.agents  # she runs on a only

            # Her page and her state, as a has them, naming a.
            code, html = await dashboard.get("/agent/alice/")
            assert code == 200
            assert b'data-agent="alice"' in html
            alice = await dashboard.json("/api/agents/alice/state")
            assert (alice["name"], alice["host"], alice["state"]) == ("alice", "a", "idle")
            assert (await dashboard.json("/api/agents/bob/state"))["host"] == "b"
            assert (await dashboard.get("/agent/nobody/"))[0] == 404
            unknown = await dashboard.json("/api/agents/nobody/state", status=404)
            assert unknown["error"] == "no agent named 'nobody'; known agents: bob; on other hosts: alice, manager"
            # Her panels need her local state: b says where she runs.
            elsewhere = await dashboard.json("/-/web/agents/alice/panels/notes", status=404)
            assert elsewhere["error"].startswith("agent 'alice' runs on another host of the hive, not this one")

            # A message to her goes through the shared broker; her answer reaches b's operator inbox.
            newest = await a.events.history(None, limit=1)
            sent = await dashboard.json("/api/agents/alice/messages", {"body": "hello alice"})
            assert sent["to"] == "alice"
            with trio.fail_after(120):
                await next_event(a, "alice", "turn_end", after=newest[-1].id if newest else 0)
            inbox = await dashboard.json("/api/agents/alice/inbox")
            assert [m["body"] for m in inbox if m["from"] == "operator"] == ["hello alice"]
            with trio.fail_after(60):
                while not [m for m in await dashboard.json("/api/inbox") if m["body"] == "hi from host a"]:
                    await trio.sleep(0.5)

            # Slash commands that are host commands go to a; one that needs her local state says where to run it.
            model = await dashboard.json("/-/web/agents/alice/slash", {"line": "/model"})
            assert model["text"] == f"model {alice['model']}"
            cancel = await dashboard.json("/-/web/agents/alice/slash", {"line": "/cancel"})
            assert cancel["text"] == "nothing to cancel: alice is idle"
            local = await dashboard.json("/-/web/agents/alice/slash", {"line": "/compact-notes"}, status=400)
            assert local["error"] == (
                "/compact-notes needs alice's own state, and alice runs on host 'a': "
                "use /compact-notes on that host's dashboard"
            )

            # Her terminal is a shell in her container, on a: b's says so, and where.
            closed = await dashboard.terminal("alice")
            assert closed == (4001, "alice runs on host a: open its terminal on that host's dashboard")

            # In Chromium: the host page links her; her page names a, shows her turn live from the
            # merged events, and no panel that needs her local state (b's own agent has them).
            page = await chromium.dashboard(b)
            errors: list[str] = []

            def her_page() -> None:
                page.on("pageerror", lambda error: errors.append(str(error)))
                expect(page.locator("#agent-alice .name a")).to_have_attribute("href", "/agent/alice/")
                page.locator("#agent-alice .name a").click()
                expect(page.locator("#state-detail")).to_have_text("on host a")
                expect(page.locator("#tail .ev.turn_end").first).to_be_attached()
                expect(page.locator("#tail")).to_contain_text("hello alice")
                expect(page.locator("section.panel.plugin")).to_have_count(0)
                page.locator("#tab-term").click()
                expect(page.locator("#term-status")).to_contain_text("alice runs on host a")
                page.goto(page.url.replace("/agent/alice/", "/agent/bob/"))
                expect(page.locator("#state-detail")).to_have_text("on host b")
                expect(page.locator("section.panel.plugin").first).to_be_attached()

            with trio.fail_after(90):
                await chromium.run(her_page)
            assert not errors

            # Host a stops: her page still loads, shows her down and why; a host command says a is down.
            on_host_a.cancel()
            with trio.fail_after(60):
                while (await dashboard.json("/api/agents/alice/state"))["state"] != "down":
                    await trio.sleep(0.5)
            code, html = await dashboard.get("/agent/alice/")
            assert code == 200
            down = await dashboard.json("/api/agents/alice/state")
            assert (down["host"], down["state"]) == ("a", "down")
            assert "host 'a' stopped" in down["detail"]
            refused = await dashboard.json("/-/web/agents/alice/slash", {"line": "/cancel"}, status=400)
            assert "'alice' runs on host 'a', which is down" in refused["error"]

            def shown_down() -> None:
                page.goto(page.url.replace("/agent/bob/", "/agent/alice/"))
                expect(page.locator("#badge")).to_contain_text("down")
                expect(page.locator("#state-detail")).to_contain_text("on host a · host 'a' stopped")

            with trio.fail_after(60):
                await chromium.run(shown_down)
            assert not errors
