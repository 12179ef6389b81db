"""Kill -9 a real daemon in the middle of 10k concurrent sends; nothing returned is lost.

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


if __name__ == "__main__":
    trio.run(run_hive, *make_hive_config(sys.argv[1], Workload()))
