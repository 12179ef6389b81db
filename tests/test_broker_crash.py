"""Kill -9 a real daemon mid-work: nothing returned is lost, and no retry stores a second copy.

Run as a script, this file is that daemon: the real ``run_hive`` with a plugin
whose services send from several tasks and consume like a harness, printing a line
for each send, lease and ack once it has returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from hivekit import needs_claude, next_event, running_hive

from hyperhive_core import hookimpl
from hyperhive_core.boot import config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.plugins import make_plugin_manager

SENDERS = 8
SENDS = 10_000
KILL_AFTER = 2_500  # returned sends seen before the kill


def emit(tag: str, *values: object) -> None:
    # One write per line, below PIPE_BUF: a line is either whole or absent at the kill.
    os.write(1, f"{tag} {' '.join(map(str, values))}\n".encode())


class Workload:
    """Senders and a consumer that acks every other batch and holds the rest, mid-turn."""

    @hookimpl
    def on_startup(self, hive):
        hive.broker.policy.add("sink")

    @hookimpl
    def hive_services(self, hive):
        async def senders(*, task_status=trio.TASK_STATUS_IGNORED):
            async def send_share(sender):
                for n in range(SENDS // SENDERS):
                    message = await hive.broker.send(sender, "sink", f"{sender}:{n}")
                    emit("S", message.id, message.body)

            task_status.started()
            async with trio.open_nursery() as nursery:
                for index in range(SENDERS):
                    nursery.start_soon(send_share, f"s{index}")

        async def consumer(*, task_status=trio.TASK_STATUS_IGNORED):
            task_status.started()
            for turn in range(SENDS):
                batch = await hive.broker.wait_for_messages("sink", limit=20)
                emit("L", *batch.ids)
                if turn % 2 == 0:
                    await hive.broker.ack(batch)
                    emit("A", *batch.ids)

        return [senders, consumer]


def make_hive_config(state_dir, *plugins):
    pm = make_plugin_manager([])
    for plugin in plugins:
        pm.register(plugin)
    config = load_config(
        Path(state_dir) / "hyperhive.toml", {"hive": {"state_dir": str(state_dir)}}, config_schemas(pm)
    )
    return config, pm


@pytest.mark.slow
async def test_kill_9_mid_send_loses_nothing_that_returned(tmp_path):
    state_dir = tmp_path / "state"
    daemon = await trio.lowlevel.open_process([sys.executable, __file__, str(state_dir)], stdout=subprocess.PIPE)
    buffer = b""
    try:
        with trio.fail_after(120):
            async for chunk in daemon.stdout:
                buffer += chunk
                if buffer.count(b"\nS ") >= KILL_AFTER:
                    daemon.send_signal(signal.SIGKILL)
                    break
            async for chunk in daemon.stdout:  # whatever it printed before dying
                buffer += chunk
            assert await daemon.wait() == -signal.SIGKILL
    finally:
        daemon.kill()
        await daemon.stdout.aclose()
    lines = [line.split() for line in buffer.decode().splitlines()]
    sent = {int(line[1]): line[2] for line in lines if line[0] == "S"}
    leased = {int(id_) for line in lines if line[0] == "L" for id_ in line[1:]}
    acked = {int(id_) for line in lines if line[0] == "A" for id_ in line[1:]}
    held = leased - acked
    assert KILL_AFTER <= len(sent) < SENDS, "the kill must land mid-way"
    assert acked
    assert held

    config, pm = make_hive_config(state_dir, Recipient())
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)  # restart: leases go back to the queue
        stored = await hive.store.read(
            lambda db: {row[0]: row[1:] for row in db.execute("SELECT id, body, state FROM messages")}
        )
        # Every send that returned is there, under its id, exactly once.
        assert {id_: stored[id_][0] for id_ in sent} == sent
        bodies = [body for body, _ in stored.values()]
        assert len(bodies) == len(set(bodies))
        # Acked stays acked; everything leased but not acked is queued again.
        assert {id_ for id_, (_, state) in stored.items() if state == "acked"} == acked
        assert {id_ for id_, (_, state) in stored.items() if state == "leased"} == set()
        queued = {id_ for id_, (_, state) in stored.items() if state == "queued"}
        assert held <= queued

        redelivered = set()
        while batch := await hive.broker.lease("sink", limit=500):
            redelivered.update(batch.ids)
            await hive.broker.ack(batch)
        assert redelivered == queued
        assert not redelivered & acked
        nursery.cancel_scope.cancel()


class Recipient:
    @hookimpl
    def on_startup(self, hive):
        hive.broker.policy.add("sink")


# -- a retried turn replays its sends: the recipient gets one copy -------------------------

REPLAYED_SENDS = """
[[agents.manager.rules]]
when = "from operator"
steps = [
  { tool = "send", input = { to = "operator", body = "twice on purpose" } },
  { tool = "send", input = { to = "operator", body = "twice on purpose" } },
  { tool = "hold" },
  { text = "done" },
]
"""


class Hold:
    """A tool that hangs on its first call, so a test can kill Claude Code mid-turn."""

    def __init__(self):
        self.calls = 0
        self.entered = trio.Event()

    @hookimpl
    def register_tools(self, register):
        async def hold(ctx) -> str:
            """Wait."""
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                await trio.sleep_forever()
            return "go on"

        register(hold)


@needs_claude
async def test_a_retried_turn_replays_its_sends_and_stores_none_twice(make_pm, tmp_path):
    hold = Hold()
    async with running_hive(tmp_path, make_pm(hold=hold), REPLAYED_SENDS) as hive:
        await hive.broker.send("operator", "manager", "go")
        with trio.fail_after(60):
            await hold.entered.wait()
            # Claude Code dies after both sends: the turn runs again from its prompt.
            os.kill(hive.harnesses["manager"].session.pid, signal.SIGKILL)
            first = await next_event(hive, "manager", "turn_end")
        history = await hive.events.history("manager")
        replies = [event.data["content"] for event in history if event.type == "tool_result"]
        assert first.data["exit"] == "ok"
        assert any("restarting it with --resume" in e.data["text"] for e in history if e.type == "error")
        # The same send twice in one attempt is two messages; replayed, it stored none.
        sent = await hive.broker.recent_from("manager")
        assert [message.body for message in sent] == ["twice on purpose"] * 2
        ids = sorted(message.id for message in sent)
        assert replies == [*(f"sent message {id_} to operator" for id_ in ids)] * 2 + ["go on"]

        # The same sends in a later turn, for a newer message, are new messages.
        await hive.broker.send("operator", "manager", "go again")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end", after=first.id)
        assert len(await hive.broker.recent_from("manager")) == 4


if __name__ == "__main__":
    trio.run(run_hive, *make_hive_config(sys.argv[1], Workload()))
