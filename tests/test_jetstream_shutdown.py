"""A host stopped while an agent is mid-turn on JetStream: the stop neither fails nor hangs, and
the turn's message is delivered again once the host is up again (given back at the stop, or, with
the cluster away then, once its lease runs out)."""

from __future__ import annotations

import time

import trio
from test_cluster_hosts import CLUSTER, JETSTREAM, placement_ready

from hyperhive_core.testing import Script, needs_claude, next_event, running_hive

# Stops mid-turn in a row: a race between giving the lease back and closing the broker shows
# within a few of them.
STOPS = 10


def on_jetstream(tmp_path, make_pm, script, jetstream, cluster=None):
    """A hive on JetStream (host ``a`` of a cluster with ``cluster``), alice its agent; the same state dir each time."""
    return running_hive(
        tmp_path,
        make_pm(),
        script,
        agents={"alice": {}},
        broker={"backend": "jetstream", "max_attempts": STOPS + 5},
        jetstream=jetstream,
        cluster=cluster or {},
    )


def slow_work() -> Script:
    """alice's turn on "work" sends as it goes, then waits on the model: a stop lands mid-send or mid-wait."""
    slow = Script()
    working = slow.on("alice", "work")
    for step in range(5):
        working.call("send", {"to": "operator", "body": f"step {step}"}, delay=0.1)
    working.reply("working", delay=300)
    slow.otherwise("nothing to do")
    return slow


async def work_done(hive, work, seen: int) -> None:
    """The first turn after event ``seen`` has ``work`` alone, and acks it."""
    turn = await next_event(hive, "alice", "turn_start", after=seen)
    assert turn.data["message_ids"] == [work.id]
    assert (await next_event(hive, "alice", "turn_end", after=turn.id)).data["exit"] == "ok"
    while await hive.broker.inbox_depth("alice"):
        await trio.sleep(0.1)
    [delivered] = [message for message in await hive.broker.recent_for("alice") if message.id == work.id]
    assert delivered.state == "acked"


def done_work() -> Script:
    done = Script()
    done.on("alice", "work").call("send", {"to": "operator", "body": "done"}).reply("done")
    return done


def wait_for(check, what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.2)


@needs_claude
async def test_a_host_stopped_mid_turn_stops_cleanly_and_the_turns_message_comes_back(make_pm, tmp_path, nats_cluster):
    placement_ready(nats_cluster.urls)
    slow = slow_work()
    jetstream, cluster = {"urls": nats_cluster.urls, **JETSTREAM}, {"host": "a", **CLUSTER}
    work, seen = None, 0
    for stop in range(STOPS):
        # A stop that raised or hung ends the test here.
        with trio.fail_after(120):
            async with on_jetstream(tmp_path, make_pm, slow, jetstream, cluster) as a:
                if work is None:
                    work = await a.broker.send("operator", "alice", "work to do")
                # The first turn after each restart has the message the last stop cut short.
                turn = await next_event(a, "alice", "turn_start", after=seen)
                assert turn.data["message_ids"] == [work.id], f"stop {stop}"
                seen = turn.id
                await trio.sleep(stop % 5 * 0.2)
    assert work is not None
    with trio.fail_after(120):
        async with on_jetstream(tmp_path, make_pm, done_work(), jetstream, cluster) as a:
            await work_done(a, work, seen)


@needs_claude
async def test_a_host_stopped_mid_turn_with_the_cluster_away_stops_and_the_message_comes_back_after_its_lease(
    make_pm, tmp_path, nats_cluster
):
    placement_ready(nats_cluster.urls)
    # No [cluster]: the broker alone; a short request timeout, so the give-back fails soon.
    jetstream = {"urls": nats_cluster.urls, **JETSTREAM, "request_timeout_seconds": 3.0}
    with trio.fail_after(120):
        async with on_jetstream(tmp_path, make_pm, slow_work(), jetstream) as a:
            work = await a.broker.send("operator", "alice", "work to do")
            turn = await next_event(a, "alice", "turn_start")
            nats_cluster.stop()  # the give-back at the stop finds no cluster: logged, and the stop goes on
    nats_cluster.start()
    placement_ready(nats_cluster.urls)
    with trio.fail_after(120):
        async with on_jetstream(tmp_path, make_pm, done_work(), jetstream) as a:
            await work_done(a, work, turn.id)


@needs_claude
def test_hyperhive_up_stopped_by_sigterm_mid_turn_exits_cleanly_and_the_message_comes_back(hive_daemon, nats_cluster):
    placement_ready(nats_cluster.urls)
    sections = {
        "broker": {"backend": "jetstream"},
        "jetstream": {"urls": nats_cluster.urls, **JETSTREAM},
        "agents": {"alice": {}},
    }
    daemon = hive_daemon(slow_work(), **sections)
    daemon.request("send", to="alice", body="work to do")
    wait_for(lambda: daemon.request("agent", agent="alice")["state"] == "thinking", "alice mid-turn")
    assert daemon.stop() == 0, daemon.log.read_text()
    assert "Traceback" not in daemon.log.read_text()
    again = hive_daemon(done_work(), **sections)  # a fresh state dir: the message is in the cluster
    wait_for(
        lambda: any(message["body"] == "done" for message in again.request("recv", agent="operator")),
        "alice's turn on the message given back",
    )
    assert again.stop() == 0, again.log.read_text()
