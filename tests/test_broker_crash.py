"""Kill -9 a real daemon mid-work: nothing returned is lost, and no retry stores a second copy.

Run as a script, this file is that daemon: the real ``run_hive`` with a plugin
whose services send from several tasks and consume like a harness, printing a line
for each send, lease and ack once it has returned; or, with ``up CONFIG HOLD``,
what ``hyperhive up`` runs, plus a consumer that leases and acks the manager's
messages in place of its turns (bench/broker_crash.py measures that run too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.boot import boot, config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_daemon, run_hive
from hyperhive_core.hostsock import request
from hyperhive_core.plugins import make_plugin_manager
from hyperhive_core.testing import needs_claude, next_event, running_hive

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


KILLED_MID_TURN = """
[[agents.manager.rules]]
when = "from operator"
steps = [
  { tool = "send", input = { to = "operator", body = "exactly once" } },
  { text = "done: {{result}}"DELAY },
]
"""


def kill_agents_of(state_dir: Path) -> None:
    """SIGKILL the agent processes a killed daemon left: each leads its own session."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(state_dir).encode() in (proc / "cmdline").read_bytes():
                os.killpg(int(proc.name), signal.SIGKILL)


def wait_for(what: str, check, seconds: float = 60.0):
    """Poll ``check`` until it returns something true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@needs_claude
@pytest.mark.slow
def test_a_turn_retried_after_the_daemon_is_killed_sends_nothing_twice(tmp_path, hyperhive, clean_env):
    state_dir = tmp_path / "state"
    scenario = tmp_path / "scenario.toml"
    config = tmp_path / "hyperhive.toml"
    config.write_text(
        textwrap.dedent(f"""
        [hive]
        state_dir = "{state_dir}"
        container_backend = "process"
        plugins = []
        [claude]
        rehearsal_scenario = "{scenario}"
        """)
    )
    sock = state_dir / "host.sock"

    def up(log_name: str) -> subprocess.Popen:
        with (tmp_path / log_name).open("wb") as log:
            return subprocess.Popen([hyperhive, "-c", str(config), "up"], stderr=log, env=clean_env)

    def from_manager() -> list[dict]:
        return [m for m in request(sock, "recv", agent="operator", retry_for=30) if m["from"] == "manager"]

    # The turn holds after its send (a long step), so the kill lands mid-turn.
    scenario.write_text(KILLED_MID_TURN.replace("DELAY", ", delay = 600"))
    daemon = up("first.log")
    try:
        request(sock, "send", retry_for=30, to="manager", body="go", idempotency_key="go-1")
        [sent] = wait_for("the manager's send", from_manager)
        daemon.kill()
        daemon.wait(10)
        kill_agents_of(state_dir)
        restarted_at = time.time()

        # Restarted, the turn runs again from its prompt and replays the send.
        scenario.write_text(KILLED_MID_TURN.replace("DELAY", ""))
        daemon = up("second.log")
        depth = partial(request, sock, "agent", agent="manager", retry_for=30)
        wait_for("the retried turn's ack", lambda: depth()["inbox_depth"] == 0)
        assert from_manager() == [sent]
    finally:
        daemon.terminate()
        daemon.wait(30)
        kill_agents_of(state_dir)
    with sqlite3.connect(state_dir / "hive.db") as db:
        replayed = [
            json.loads(data)["content"]
            for (data,) in db.execute(
                "SELECT data FROM events WHERE agent = 'manager' AND type = 'tool_result' AND id > ?",
                (int(restarted_at * 1_000_000),),
            )
        ]
    assert replayed == [f"sent message {sent['id']} to operator"]


# -- kill -9 amid clients sending over the host socket, retrying as the CLI does ----------------

# What `hyperhive send` retries for (docs/hostsock.md).
RETRY_FOR = 30.0


class Consumer:
    """Leases and acks the manager's messages in place of its turns, printing each lease and ack.

    The manager's own loop is parked in ``before_recv``: it gave back its leases on
    the way there, and takes none. The send whose body is ``hold`` is held after its
    commit, before the answer, so the daemon dies with it stored and unanswered.
    """

    def __init__(self, hold: str) -> None:
        self.hold = hold or None
        self.parked = trio.Event()

    @hookimpl
    async def before_recv(self, hive, agent):
        if agent == hive.agents.manager:
            self.parked.set()
            await trio.sleep_forever()

    @hookimpl
    async def on_message(self, hive, message):
        if message.body == self.hold:
            emit("C", message.id)
            await trio.sleep_forever()

    @hookimpl
    def hive_services(self, hive):
        async def consume(*, task_status=trio.TASK_STATUS_IGNORED):
            task_status.started()
            await self.parked.wait()
            while True:
                batch = await hive.broker.wait_for_messages(hive.agents.manager, limit=200)
                emit("L", *batch.ids)
                await hive.broker.ack(batch)
                emit("A", *batch.ids)

        return [consume]


@dataclass
class CrashRun:
    """What the clients got back, what the database holds, and what the consumer saw."""

    returned: dict[str, int] = field(default_factory=dict)
    """Each send's body, and the id its client got back."""
    stored: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Each stored message: id → (body, state)."""
    held: int = 0
    """The id of the send the first daemon stored and died before answering."""
    lines: list[list[str]] = field(default_factory=list)
    """The consumers' lease and ack lines, the first daemon's, then the second's."""
    seconds: float = 0.0
    """From the first send to the last answer, the restart included."""

    @property
    def lost(self) -> int:
        """Sends that returned an id which does not hold their message."""
        return sum(self.stored.get(id_, ("",))[0] != body for body, id_ in self.returned.items())

    @property
    def duplicates(self) -> int:
        """Messages stored more than once."""
        bodies = [body for body, _ in self.stored.values()]
        return len(bodies) - len(set(bodies))

    @property
    def redelivered_after_ack(self) -> int:
        """Messages leased again after their ack returned."""
        acked: set[int] = set()
        again = 0
        for tag, *ids in self.lines:
            if tag == "L":
                again += len(acked.intersection(map(int, ids)))
            else:
                acked.update(map(int, ids))
        return again


def crash_config(workdir: Path) -> Path:
    """A hive with no plugins, on the process backend, whose model is a quiet rehearsal.

    Retention keeps every message, so the run can be checked against the database.
    """
    (workdir / "scenario.toml").write_text('[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n')
    config = workdir / "hyperhive.toml"
    config.write_text(
        textwrap.dedent(f"""
        [hive]
        state_dir = "{workdir / "state"}"
        container_backend = "process"
        plugins = []
        [claude]
        rehearsal_scenario = "{workdir / "scenario.toml"}"
        [broker]
        retention_per_recipient = 1000000
        """)
    )
    return config


async def kill_9_amid_sends(workdir: Path, clients: int, sends: int, hold_at: int) -> CrashRun:
    """Run ``clients`` threads of ``sends`` sends each to a real daemon; kill -9 it mid-way; restart it.

    Each client is the CLI's own: ``request`` with a fresh idempotency key per
    message and ``retry_for``. The daemon dies holding client 0's send number
    ``hold_at`` stored and unanswered, while the others are in flight.
    """
    config = crash_config(workdir)
    sock = workdir / "state" / "host.sock"
    hold = f"c0:{hold_at}"
    run = CrashRun()
    log = (workdir / "daemon.log").open("ab")

    async def start(hold: str) -> trio.Process:
        argv = [sys.executable, __file__, "up", str(config), hold]
        return await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=log)

    def client(index: int) -> None:
        for n in range(sends):
            body = f"c{index}:{n}"
            key = str(uuid.uuid4())
            answer = request(sock, "send", retry_for=RETRY_FOR, to="manager", body=body, idempotency_key=key)
            run.returned[body] = answer["id"]

    async def consumer_lines(daemon: trio.Process, until: str | None = None) -> None:
        """Collect the daemon's lines until one starts with ``until`` (then return), or its end."""
        buffer = b""
        async for chunk in daemon.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                tag, *values = line.decode().split()
                if tag == until:
                    run.held = int(values[0])
                    return
                run.lines.append([tag, *values])

    async def drained() -> None:
        """Wait until the consumer has acked every message (the manager's inbox is empty)."""
        for _ in range(1200):
            answer = await trio.to_thread.run_sync(
                partial(request, sock, "agent", agent="manager", retry_for=RETRY_FOR)
            )
            if answer["inbox_depth"] == 0:
                return
            await trio.sleep(0.05)
        raise AssertionError("the consumer never caught up")

    async def send_all(done: trio.Event) -> None:
        async with trio.open_nursery() as sending:
            for index in range(clients):
                sending.start_soon(partial(trio.to_thread.run_sync, client, index, abandon_on_cancel=True))
        run.seconds = time.monotonic() - started
        done.set()

    daemon = await start(hold)
    started = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            sent = trio.Event()
            nursery.start_soon(send_all, sent)
            await consumer_lines(daemon, until="C")  # the held send is committed: kill now
            daemon.send_signal(signal.SIGKILL)
            await consumer_lines(daemon)  # what it printed before it died
            assert await daemon.wait() == -signal.SIGKILL
            daemon = await start("")  # the clients retry meanwhile; it holds nothing
            nursery.start_soon(consumer_lines, daemon)
            await sent.wait()
            await drained()
            daemon.terminate()  # the reader ends with its output
        assert await daemon.wait() == 0
    finally:
        daemon.kill()
        log.close()
    with contextlib.closing(sqlite3.connect(sock.parent / "hive.db")) as db:
        run.stored = {id_: (body, state) for id_, body, state in db.execute("SELECT id, body, state FROM messages")}
    return run


@pytest.mark.slow
async def test_kill_9_amid_retrying_host_socket_clients_loses_and_duplicates_nothing(tmp_path):
    clients, sends = 8, 1500
    with trio.fail_after(240):
        run = await kill_9_amid_sends(tmp_path, clients, sends, hold_at=sends // 3)
    assert len(run.returned) == clients * sends  # every send got its answer in the end
    assert (run.lost, run.duplicates, run.redelivered_after_ack) == (0, 0, 0)
    assert len(run.stored) == clients * sends
    assert {state for _, state in run.stored.values()} == {"acked"}
    # The send the daemon died holding was committed and unanswered; its retry got its id.
    assert run.returned[f"c0:{sends // 3}"] == run.held
    assert any(tag == "A" for tag, *_ in run.lines)


if __name__ == "__main__":
    if sys.argv[1] == "up":  # what `hyperhive -c CONFIG up` runs, plus the consumer
        booted = boot(sys.argv[2])
        booted.pm.register(Consumer(sys.argv[3]))
        sys.exit(run_daemon(booted.config, booted.pm))
    trio.run(run_hive, *make_hive_config(sys.argv[1], Workload()))
