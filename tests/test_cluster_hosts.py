"""One hive on two hosts: two daemons in this process, one real three-node JetStream cluster.

Each host has its own state dir and its own agents; they share the broker, the
placement and host buckets, forwarded commands and events (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import nats
import nats.js.errors
import pytest
import trio

from hyperhive_core.boot import config_schemas
from hyperhive_core.brokers.localcluster import LocalCluster
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import ConfigError
from hyperhive_core.hostclient import HostCommandError
from hyperhive_core.testing import (
    Script,
    call_tool,
    host_request,
    needs_claude,
    next_event,
    operator_reply,
    running_hive,
)

# A loaded machine: the cluster may take a while to elect its leaders at first.
JETSTREAM = {"ack_wait_seconds": 5.0, "heartbeat_seconds": 1.0, "request_timeout_seconds": 20.0}
CLUSTER = {"heartbeat_seconds": 0.5, "down_after_seconds": 3.0, "forward_timeout_seconds": 20.0}


def placement_ready(urls: list[str], seconds: float = 60) -> None:
    """Wait until the cluster places a three-replica stream: a fresh cluster is healthy a moment
    before its JetStream leader knows every node, and refuses placement until then."""

    async def probe() -> None:
        nc = await nats.connect(servers=urls)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + seconds
            while True:
                try:
                    await js.add_stream(name="PROBE", subjects=["probe"], num_replicas=3)
                    await js.delete_stream("PROBE")
                    return
                except (
                    nats.js.errors.BadRequestError,
                    nats.js.errors.ServiceUnavailableError,
                    nats.errors.TimeoutError,  # a loaded machine's fresh cluster may not answer in time yet
                ):
                    assert time.monotonic() < deadline, f"the cluster placed no R3 stream within {seconds} s"
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    asyncio.run(probe())


@pytest.fixture
def cluster(nats_cluster: LocalCluster) -> LocalCluster:
    """The three-node cluster, ready to place the hive's streams and buckets."""
    placement_ready(nats_cluster.urls)
    return nats_cluster


@asynccontextmanager
async def host(tmp_path: Path, pm, name: str, urls: list[str], script: Script, agents: dict, **sections: dict):
    """Host ``name`` of the hive, in this process: its own state dir, ``agents`` and ``sections``."""
    (tmp_path / name).mkdir()
    async with running_hive(
        tmp_path / name,
        pm,
        script,
        agents=agents,
        broker={"backend": "jetstream"},
        jetstream={"urls": urls, **JETSTREAM},
        cluster={"host": name, **CLUSTER},
        **sections,
    ) as hive:
        yield hive


def conversation() -> tuple[Script, Script]:
    """alice (on a) asks bob (on b) by name; bob answers; alice tells the operator."""
    on_a, on_b = Script(), Script()
    on_a.on("alice", "ping").call("send", {"to": "bob", "body": "hello bob"}).reply("asked")
    on_a.on("alice", "hi alice").call("send", {"to": "operator", "body": "bob answered"}).reply("done")
    on_b.on("bob", "hello bob").call("send", {"to": "alice", "body": "hi alice"}).reply("answered")
    return on_a, on_b


@needs_claude
async def test_two_hosts_share_names_messages_commands_and_events(make_pm, tmp_path, cluster):
    on_a, on_b = conversation()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            host(tmp_path, make_pm(), "a", cluster.urls, on_a, {"alice": {"allowed_recipients": ["bob"]}})
        )
        b = await stack.enter_async_context(
            host(tmp_path, make_pm(), "b", cluster.urls, on_b, {"bob": {"allowed_recipients": ["alice"]}})
        )
        # One manager: on the host that placed it first.
        assert {agent.name for agent in a.agents} == {"manager", "alice"}
        assert {agent.name for agent in b.agents} == {"bob"}
        assert b.cluster.placement == {"manager": "a", "alice": "a", "bob": "b"}

        # A name another host holds is refused, naming that host.
        with pytest.raises(HostCommandError, match="'alice' is taken hive-wide: .* placed on host 'a'"):
            await host_request(b, "spawn", agent="alice")
        assert "alice" not in b.agents

        # The operator on b sends to alice on a; alice asks bob on b by name; the answer comes back.
        sent = await host_request(b, "send", to="alice", body="ping")
        assert sent["to"] == "alice"
        with trio.fail_after(90):
            assert (await operator_reply(a, "alice")).startswith("bob answered")
            # b's live tail shows alice's turn, tagged with her host.
            remote = await next_event(b, "alice", "turn_end", after=0)
        assert remote.data["host"] == "a"

        # b's status lists every host and every agent, each with its host.
        status = await host_request(b, "status")
        assert [(h["name"], h["up"]) for h in status["cluster"]["hosts"]] == [("a", True), ("b", True)]
        assert {(x["name"], x["host"]) for x in status["agents"]} == {("manager", "a"), ("alice", "a"), ("bob", "b")}

        # A command about alice, asked on b, runs on a and answers as if local.
        paused = await host_request(b, "pause", agent="alice")
        assert (paused["name"], paused["paused"]) == ("alice", True)
        assert a.agents.get("alice").status.paused
        with pytest.raises(HostCommandError, match="no agent named 'carol'"):
            await host_request(b, "pause", agent="carol")
        # The manager lists every host's agents, and may message them.
        listed, _ = await call_tool(a, "manager", "list_agents")
        assert "bob: on host b" in listed.splitlines()
        assert "bob" in (await call_tool(a, "manager", "peers"))[0].splitlines()

        # The manager's spawn requests name a host, or the hive picks the up host with the fewest agents.
        assert (
            "no host named 'c' in this hive; its hosts: a, b"
            in (await call_tool(a, "manager", "request_spawn", name="carol", description="helps", host="c"))[0]
        )
        await call_tool(a, "manager", "request_spawn", name="carol", description="helps bob")
        [pending] = await host_request(b, "approvals", status="pending")  # they live with the manager, on a
        assert (pending["agent"], pending["host"]) == ("carol", "b")
        approved = await host_request(b, "approve", approval_id=pending["id"])
        assert approved["status"] == "approved", approved
        assert "carol" in b.agents
        assert a.cluster.placement["carol"] == "b"
        assert await host_request(b, "approvals") == await host_request(a, "approvals")


async def test_a_cluster_host_needs_the_jetstream_broker(make_pm, tmp_path):
    pm = make_pm()
    raw = {"hive": {"state_dir": str(tmp_path / "state"), "container_backend": "process"}, "cluster": {"host": "a"}}
    config = load_config(tmp_path / "hyperhive.toml", raw, config_schemas(pm))
    with trio.fail_after(30), pytest.raises(ConfigError, match=r"\[cluster\] host = .a. needs \[broker\] backend"):
        await run_hive(config, pm)


@pytest.mark.parametrize(
    ("cluster", "says"),
    [
        ({"host": "Host A"}, "host must be 1-32 lowercase letters"),
        ({"host": "a", "heartbeat_seconds": 0}, "heartbeat_seconds must be positive"),
        ({"host": "a", "heartbeat_seconds": 5, "down_after_seconds": 6}, "at least twice heartbeat_seconds"),
    ],
)
def test_nonsense_cluster_settings_are_a_config_error(make_pm, tmp_path, cluster, says):
    with pytest.raises(ConfigError, match=says):
        load_config(tmp_path / "hyperhive.toml", {"cluster": cluster}, config_schemas(make_pm()))


async def test_a_hive_of_one_host_has_no_other_host_to_spawn_on(make_pm, tmp_path):
    idle = Script()
    idle.otherwise("nothing to do")
    async with running_hive(tmp_path, make_pm(), idle) as hive:
        with pytest.raises(HostCommandError, match="this hive runs on one host, so there is no host 'b' to choose"):
            await host_request(hive, "spawn", agent="carol", host="b")
        status = await host_request(hive, "status")
        assert status["cluster"] == {"host": None, "hosts": []}
        assert "host" not in status["agents"][0]
        assert "carol" not in hive.agents


def step_down_leaders(urls: list[str], streams: list[str]) -> None:
    """Ask each stream's leader to step down: until a new one is elected, the stream answers nothing."""

    async def step_down() -> None:
        nc = await nats.connect(servers=urls)
        try:
            for stream in streams:
                # Unanswered on a loaded machine, it may or may not have stepped down: either way the test goes on.
                with contextlib.suppress(nats.errors.TimeoutError):
                    await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=10)
        finally:
            await nc.close()

    asyncio.run(step_down())


@needs_claude
async def test_buckets_electing_their_leaders_hold_up_no_start_claim_or_release(make_pm, tmp_path, cluster):
    idle = Script()
    idle.otherwise("nothing to do")
    async with host(tmp_path, make_pm(), "a", cluster.urls, idle, {}) as a:
        buckets = [f"KV_HIVE_{a.cluster.jetstream.name}_{kind}" for kind in ("PLACEMENT", "HOSTS")]
        for n in range(5):
            await trio.to_thread.run_sync(step_down_leaders, cluster.urls, buckets)
            await a.cluster.claim(f"agent{n}")
            await trio.to_thread.run_sync(step_down_leaders, cluster.urls, buckets)
            await a.cluster.release(f"agent{n}")
        # A host joining while both buckets elect: its first heartbeat and watches wait for the leaders.
        for name in ("b", "c"):
            await trio.to_thread.run_sync(step_down_leaders, cluster.urls, buckets)
            async with host(tmp_path, make_pm(), name, cluster.urls, idle, {}) as joined:
                assert joined.cluster.is_up("a")
                assert joined.cluster.placement["manager"] == "a"


@needs_claude
async def test_a_host_started_before_its_cluster_has_a_quorum_waits_for_one(make_pm, tmp_path, nats_cluster):
    """The hive's hosts booting together: one node up, too few to place the streams and buckets."""
    idle = Script()
    idle.otherwise("nothing to do")
    nats_cluster.stop(*nats_cluster.nodes[1:])

    async def quorum_later() -> None:
        await trio.sleep(4)
        await trio.to_thread.run_sync(nats_cluster.start, *nats_cluster.nodes[1:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(quorum_later)
        with trio.fail_after(60):
            async with host(tmp_path, make_pm(), "a", nats_cluster.urls, idle, {"alice": {}}) as a:
                assert a.cluster.placement["alice"] == "a"
                sent = await a.broker.send("operator", "alice", "hello")
                assert sent.recipient == "alice"
