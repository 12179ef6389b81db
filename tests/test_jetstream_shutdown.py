"""A host stopped while an agent is mid-turn on JetStream: the stop neither fails nor hangs, and
the turn's message is given back and delivered again once the host is up again."""

from __future__ import annotations

import trio
from test_cluster_hosts import CLUSTER, JETSTREAM, placement_ready

from hyperhive_core.testing import Script, needs_claude, next_event, running_hive

# Stops mid-turn in a row: a race between giving the lease back and closing the broker shows
# within a few of them.
STOPS = 10


def on_jetstream(tmp_path, make_pm, urls, script):
    """Host ``a`` of a hive on the cluster at ``urls``, alice its agent; the same state dir each time."""
    return running_hive(
        tmp_path,
        make_pm(),
        script,
        agents={"alice": {}},
        broker={"backend": "jetstream", "max_attempts": STOPS + 5},
        jetstream={"urls": urls, **JETSTREAM},
        cluster={"host": "a", **CLUSTER},
    )


@needs_claude
async def test_a_host_stopped_mid_turn_stops_cleanly_and_the_turns_message_comes_back(make_pm, tmp_path, nats_cluster):
    placement_ready(nats_cluster.urls)
    slow = Script()
    # The turn sends as it goes, then waits on the model: a stop lands mid-send or mid-wait.
    working = slow.on("alice", "work")
    for step in range(5):
        working.call("send", {"to": "operator", "body": f"step {step}"}, delay=0.1)
    working.reply("working", delay=300)
    slow.otherwise("nothing to do")
    work, seen = None, 0
    for stop in range(STOPS):
        # A stop that raised or hung ends the test here.
        with trio.fail_after(120):
            async with on_jetstream(tmp_path, make_pm, nats_cluster.urls, slow) as a:
                if work is None:
                    work = await a.broker.send("operator", "alice", "work to do")
                # The first turn after each restart has the message the last stop cut short.
                turn = await next_event(a, "alice", "turn_start", after=seen)
                assert turn.data["message_ids"] == [work.id], f"stop {stop}"
                seen = turn.id
                await trio.sleep(stop % 5 * 0.2)
    assert work is not None
    done = Script()
    done.on("alice", "work").reply("done")
    with trio.fail_after(120):
        async with on_jetstream(tmp_path, make_pm, nats_cluster.urls, done) as a:
            turn = await next_event(a, "alice", "turn_start", after=seen)
            assert turn.data["message_ids"] == [work.id]
            assert (await next_event(a, "alice", "turn_end", after=turn.id)).data["exit"] == "ok"
            while await a.broker.inbox_depth("alice"):
                await trio.sleep(0.1)
            [delivered] = [message for message in await a.broker.recent_for("alice") if message.id == work.id]
    assert delivered.state == "acked"
