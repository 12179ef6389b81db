"""Dead letters: the broker's operations, the reports when a message dies, the host socket and ``hyperhive dead``."""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess

import pytest
import trio
import trio.testing

from hyperhive_core import hookimpl
from hyperhive_core.broker import Broker, BrokerError, BrokerSection, NotDeadLetter, RecipientDirectory
from hyperhive_core.builtin import CORE_MIGRATIONS
from hyperhive_core.dead_letters import MESSAGE_DEAD, REQUEUE_WARNING, dead_letter, dead_letters
from hyperhive_core.hostsock import HostCommandError, request
from hyperhive_core.store import Store
from hyperhive_core.testing import needs_claude, next_event, running_hive


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    yield store
    store.close()


def states(store):
    with sqlite3.connect(store.path) as conn:
        return dict(conn.execute("SELECT id, state FROM messages"))


async def fail_twice(broker, recipient, error="turn failed"):
    """Lease and release ``recipient``'s mail until max_attempts (2) moves it to dead-letter."""
    for _ in range(2):
        batch = await broker.lease(recipient)
        dead = await broker.release(batch, error=error)
    return dead


async def test_requeue_show_and_drop_are_all_or_nothing(store, nursery):
    died = []

    async def on_dead(messages):
        died.append(messages)

    policy = RecipientDirectory()
    policy.add("bob")
    broker = Broker(store, BrokerSection(max_attempts=2), policy=policy, on_dead=on_dead)
    await nursery.start(broker.serve)
    delivered = await broker.send("operator", "bob", "fine")
    await broker.ack(await broker.lease("bob"))
    doomed = [(await broker.send("operator", "bob", f"doomed {n}")).id for n in range(2)]
    assert await fail_twice(broker, "bob", error="turn failure: boom") == doomed
    queued = await broker.send("operator", "bob", "still waiting")

    # The callback got the dead messages as stored, once.
    assert [[(m.id, m.state, m.attempts, m.last_error) for m in batch] for batch in died] == [
        [(doomed[0], "dead", 2, "turn failure: boom"), (doomed[1], "dead", 2, "turn failure: boom")]
    ]
    assert await broker.dead_count() == 2
    assert await broker.dead_count("bob") == 2
    assert await broker.dead_count("alice") == 0
    assert (await broker.dead_letter(doomed[0])).body == "doomed 0"

    # Not dead: a clear error naming each id and why, and nothing moves.
    with pytest.raises(NotDeadLetter) as refused:
        await broker.requeue_dead([doomed[0], delivered.id, queued.id, 9999])
    assert str(refused.value) == (
        f"not a dead letter, so nothing was requeued: message {delivered.id} was delivered (acked); "
        f"message {queued.id} is queued, waiting for delivery; message 9999 does not exist (never sent, "
        "or deleted by retention or a drop). `hyperhive dead list` shows the dead letters"
    )
    with pytest.raises(NotDeadLetter, match=f"nothing was dropped: message {queued.id} is queued"):
        await broker.drop_dead([doomed[1], queued.id])
    with pytest.raises(NotDeadLetter, match="nothing was shown: message 9999 does not exist"):
        await broker.dead_letter(9999)
    assert states(store) == {delivered.id: "acked", doomed[0]: "dead", doomed[1]: "dead", queued.id: "queued"}

    for bad, said in (
        ([], "give at least one message id"),
        (["7"], "not '7'"),
        ([True], "not True"),
        ([0], "from 1 up, not 0"),
        ("12", "as a list of whole numbers"),
    ):
        with pytest.raises(BrokerError, match=said):
            await broker.requeue_dead(bad)

    # Requeue: back in the queue with fresh attempts, and a waiting recipient wakes.
    await broker.ack(await broker.lease("bob"))  # the queued one is delivered meanwhile
    async with trio.open_nursery() as waiting:
        woken = []

        async def recipient():
            woken.append(await broker.wait_for_messages("bob"))

        waiting.start_soon(recipient)
        await trio.testing.wait_all_tasks_blocked()
        [requeued] = await broker.requeue_dead([doomed[0], doomed[0]])  # a repeated id counts once
    assert (requeued.id, requeued.state, requeued.attempts) == (doomed[0], "queued", 0)
    assert woken[0].ids == [doomed[0]]
    assert woken[0].messages[0].attempts == 1

    # Drop: gone for good, and its id is never reused.
    [dropped] = await broker.drop_dead([doomed[1]])
    assert (dropped.id, dropped.body) == (doomed[1], "doomed 1")
    assert doomed[1] not in states(store)
    assert await broker.dead_count() == 0
    assert (await broker.send("operator", "bob", "after")).id > doomed[1]


async def test_leases_a_restart_gives_back_can_go_dead(store):
    policy = RecipientDirectory()
    policy.add("bob")
    died = []

    async def on_dead(messages):
        died.extend(message.id for message in messages)

    broker = Broker(store, BrokerSection(max_attempts=1), policy=policy, on_dead=on_dead)
    sent = await broker.send("operator", "bob", "in flight")
    await broker.lease("bob")
    restarted = Broker(store, BrokerSection(max_attempts=1), policy=policy, on_dead=on_dead)
    assert await restarted.requeue_leased() == [sent.id]
    assert died == [sent.id]
    assert (await restarted.dead_letter(sent.id)).last_error == "lease abandoned: restarted mid-turn"


# -- a real hive: the real CLI on the rehearsal model ----------------------------------------------------------

# The worker sends the operator a note, then the model fails (twice): the message goes
# dead after two attempts, each of which sent the note. A third attempt succeeds.
DOOMED = """
[[agents.worker.rules]]
name = "doomed"
when = "doomed"
steps = [
  { tool = "send", input = { to = "operator", body = "working on it" } },
  { text = "done", status = 500, times = 2 },
]

[[agents.manager.rules]]
steps = [{ text = "noted" }]
"""

FAIL_FAST = {"turn_attempts": 1, "api_retries": 0}


async def dead_event(hive, message_id, after=0):
    return await next_event(hive, None, MESSAGE_DEAD, lambda event: event.data["id"] == message_id, after=after)


async def turn_end_after(hive, agent, event):
    """The turn that ended after ``event``: by then everything its give-back did is done."""
    return await next_event(hive, agent, "turn_end", after=event.id)


@needs_claude
@pytest.mark.slow
async def test_a_dead_letter_is_reported_shown_and_requeued(make_pm, tmp_path):
    async with running_hive(
        tmp_path, make_pm(), DOOMED, agents={"worker": {}}, claude=FAIL_FAST, broker={"max_attempts": 2}
    ) as hive:
        sent = await hive.broker.send("operator", "worker", "doomed: tidy the notes")
        with trio.fail_after(60):
            died = await dead_event(hive, sent.id)
            await turn_end_after(hive, "worker", died)
        assert died.agent == "worker"
        assert died.data == {
            "id": sent.id,
            "sender": "operator",
            "recipient": "worker",
            "kind": "text",
            "attempts": 2,
            "last_error": (await hive.broker.dead_letter(sent.id)).last_error,
            "preview": "doomed: tidy the notes",
        }
        assert died.data["last_error"].startswith("turn failure")  # how the harness words a failed turn

        # The manager has a hive event saying so.
        [notice] = [m for m in await hive.broker.recent_for("manager", 10) if m.kind == "event"]
        assert notice.sender == "hive"
        assert json.loads(notice.body) == {"event": MESSAGE_DEAD, **died.data}

        # What the attempts did: each sent the operator a note before the model failed.
        shown = await dead_letter(hive, sent.id)
        assert shown["body"] == "doomed: tidy the notes"
        assert shown["warning"] == REQUEUE_WARNING
        assert [attempt["exit"] for attempt in shown["history"]] == ["failure", "failure"]
        assert [attempt["batch"] for attempt in shown["history"]] == [[sent.id], [sent.id]]
        first, second = shown["history"]
        assert first["started_at"] < second["started_at"]
        assert first["tools"] == ["mcp__hyperhive__send"]
        kinds = [item["type"] for item in first["activity"]]
        assert kinds[:3] == ["tool_use", "message_sent", "tool_result"]
        assert (first["activity"][1]["to"], first["activity"][1]["preview"]) == ("operator", "working on it")
        # The CLI's resumed session goes on after the tool call: the second attempt only met the fault.
        assert second["tools"] == []
        assert second["activity"][0]["type"] == "assistant_text"
        assert "500" in second["activity"][0]["text"]
        listed = await dead_letters(hive)
        assert listed["total"] == 1
        [summary] = listed["dead_letters"]
        assert "activity" not in summary["history"][0]
        assert [a["exit"] for a in summary["history"]] == ["failure", "failure"]

        # Over the host socket: bad ids are refused whole, then the requeue runs it again.
        path = hive.paths.host_socket
        note_id = first["activity"][1]["id"]  # the note to the operator: queued, never leased
        with pytest.raises(HostCommandError, match=f"nothing was requeued: message {note_id} is queued"):
            await trio.to_thread.run_sync(lambda: request(path, "requeue_dead", ids=[sent.id, note_id]))
        assert (await hive.broker.dead_letter(sent.id)).state == "dead"
        result = await trio.to_thread.run_sync(lambda: request(path, "requeue_dead", ids=[sent.id]))
        assert result == {"requeued": [sent.id], "warning": REQUEUE_WARNING}
        with trio.fail_after(60):
            requeued = await next_event(hive, "worker", "message_requeued")
            end = await next_event(hive, "worker", "turn_end", after=requeued.id)
        assert requeued.data == {"ids": [sent.id]}
        assert end.data["exit"] == "ok"
        assert await hive.broker.dead_count() == 0
        notes = [m.body for m in await hive.broker.recent_for("operator", 10) if m.sender == "worker"]
        assert notes == ["working on it"]  # sent once, by the first attempt, as `show` said


@needs_claude
@pytest.mark.slow
async def test_the_managers_own_dead_letter_is_reported_once_never_in_a_loop(make_pm, tmp_path):
    broken = '[[agents.manager.rules]]\nsteps = [{ text = "never", status = 500, times = 1000 }]\n'
    async with running_hive(tmp_path, make_pm(), broken, claude=FAIL_FAST, broker={"max_attempts": 1}) as hive:
        sent = await hive.broker.send("operator", "manager", "are you there?")
        with trio.fail_after(60):
            first = await dead_event(hive, sent.id)
            notice = await next_event(hive, None, MESSAGE_DEAD, lambda event: event.data["kind"] == "event")
            await turn_end_after(hive, "manager", notice)
        # The manager was told once; that notice died too, and nobody was told of it.
        assert json.loads(notice.data["preview"])["id"] == sent.id
        assert first.data["recipient"] == "manager"
        inbox = await hive.broker.recent_for("manager", 10)
        assert [(m.id, m.state) for m in inbox] == [(notice.data["id"], "dead"), (sent.id, "dead")]
        assert await hive.broker.inbox_depth("manager") == 0


@needs_claude
async def test_hook_on_dead_letter(make_pm, tmp_path):
    """Each hook hears of each dead message; a failing one is reported, and the manager is told anyway."""
    heard = []

    class Listener:
        @hookimpl
        async def on_dead_letter(self, hive, message):
            heard.append((message.id, message.state, message.attempts, message.last_error))

    class Broken:
        @hookimpl
        def on_dead_letter(self, hive, message):
            raise RuntimeError("the pager is down")

    failing = '[[agents.worker.rules]]\nsteps = [{ text = "never", status = 500, times = 1000 }]\n'
    pm = make_pm(listener=Listener(), broken=Broken())
    async with running_hive(
        tmp_path, pm, failing, agents={"worker": {}}, claude=FAIL_FAST, broker={"max_attempts": 1}
    ) as hive:
        sent = await hive.broker.send("operator", "worker", "hello")
        with trio.fail_after(60):
            died = await dead_event(hive, sent.id)
            error = await next_event(hive, "hive", "error", lambda event: event.data["where"] == "on_dead_letter")
            await turn_end_after(hive, "worker", died)
        [(message_id, state, attempts, last_error)] = heard
        assert (message_id, state, attempts) == (sent.id, "dead", 1)
        assert last_error == (await hive.broker.dead_letter(sent.id)).last_error
        assert last_error.startswith("turn failure")
        assert error.data["message_id"] == sent.id
        assert "the pager is down" in error.data["error"]
        notices = [json.loads(m.body) for m in await hive.broker.recent_for("manager", 10)]
        assert [(n["event"], n["id"]) for n in notices] == [(MESSAGE_DEAD, sent.id)]


@needs_claude
async def test_leases_given_back_at_start_are_reported_once_the_hive_is_up(make_pm, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    store = Store(state / "hive.db")
    store.migrate({"core": CORE_MIGRATIONS})
    policy = RecipientDirectory()
    policy.add("worker")
    broker = Broker(store, BrokerSection(max_attempts=1), policy=policy)
    sent = await broker.send("operator", "worker", "cut short by a crash")
    await broker.lease("worker")  # the daemon died mid-turn
    store.close()
    quiet = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
    async with running_hive(tmp_path, make_pm(), quiet, agents={"worker": {}}, broker={"max_attempts": 1}) as hive:
        with trio.fail_after(30):
            died = await dead_event(hive, sent.id)
        assert died.data["last_error"] == "lease abandoned: restarted mid-turn"
        notices = [json.loads(m.body) for m in await hive.broker.recent_for("manager", 10) if m.kind == "event"]
        assert [(n["event"], n["id"]) for n in notices] == [(MESSAGE_DEAD, sent.id)]


# -- hyperhive dead, against a real daemon ------------------------------------------------------------------------


@needs_claude
@pytest.mark.slow
async def test_the_dead_commands(make_pm, tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    three_failures = DOOMED.replace("times = 2", "times = 3")  # one per message below; the requeue succeeds
    async with running_hive(
        tmp_path,
        make_pm(),
        three_failures,
        agents={"worker": {}},
        claude=FAIL_FAST,
        broker={"max_attempts": 1},
    ) as hive:
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')

        def cli(*args, stdin=subprocess.DEVNULL):
            return subprocess.run(
                [hyperhive, "-c", str(config), "dead", *args],
                capture_output=True,
                text=True,
                env=clean_env,
                stdin=stdin,
                timeout=30,
            )

        async def run(*args):
            return await trio.to_thread.run_sync(lambda: cli(*args))

        def cli_on_a_terminal(answer, *args):
            terminal, stdin = pty.openpty()
            try:
                os.write(terminal, answer.encode())
                return cli(*args, stdin=stdin)
            finally:
                os.close(stdin)
                os.close(terminal)

        async def run_on_a_terminal(answer, *args):
            return await trio.to_thread.run_sync(lambda: cli_on_a_terminal(answer, *args))

        empty = await run("list")
        assert (empty.returncode, empty.stdout) == (0, "no dead letters\n")
        doomed = []
        with trio.fail_after(60):
            for n in range(3):  # one at a time: a turn each
                doomed.append((await hive.broker.send("operator", "worker", f"doomed {n}")).id)
                await turn_end_after(hive, "worker", await dead_event(hive, doomed[-1]))

        listed = await run("list")
        assert listed.returncode == 0, listed.stderr
        header, *lines = listed.stdout.splitlines()
        assert header.split() == ["ID", "TO", "FROM", "TRIES", "AGE", "LAST", "ERROR"]
        # Newest first.
        assert [line.split()[:4] for line in lines] == [[f"#{i}", "worker", "operator", "1"] for i in doomed[::-1]]
        last_error = (await hive.broker.dead_letter(doomed[0])).last_error
        assert last_error.startswith("turn failure")
        assert all(line.endswith(f"  {last_error}") for line in lines)
        as_json = json.loads((await run("list", "--json")).stdout)
        assert as_json["total"] == 3
        assert [letter["id"] for letter in as_json["dead_letters"]] == doomed[::-1]

        shown = await run("show", str(doomed[0]))
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"dead letter #{doomed[0]}: operator → worker (text), sent ")
        assert f"last error: {last_error}\n" in shown.stdout
        assert "  doomed 0\n" in shown.stdout
        assert "turns that handled it: 1\n  1. " in shown.stdout
        assert '⚙ mcp__hyperhive__send {"to": "operator", "body": "working on it"}' in shown.stdout
        assert "→ sent #" in shown.stdout
        assert f"note: {REQUEUE_WARNING}" in shown.stdout
        assert json.loads((await run("show", str(doomed[0]), "--json")).stdout)["body"] == "doomed 0"

        # Bad ids: one clear line, and nothing done.
        unknown = await run("requeue", str(doomed[0]), "99999")
        assert unknown.returncode == 1
        assert unknown.stderr == (
            "Error: not a dead letter, so nothing was requeued: message 99999 does not exist (never sent, "
            "or deleted by retention or a drop). `hyperhive dead list` shows the dead letters\n"
        )
        missing = await run("show", "99999")
        assert missing.returncode == 1
        assert "message 99999 does not exist" in missing.stderr
        not_a_number = await run("drop", "twelve")
        assert not_a_number.returncode == 2
        assert "'twelve' is not a valid integer" in not_a_number.stderr
        assert await hive.broker.dead_count() == 3

        # Drop asks first: without a terminal it refuses unless --yes; on one, "n" keeps it and "y" drops it.
        refused = await run("drop", str(doomed[1]))
        assert refused.returncode == 1
        assert (
            refused.stderr
            == f"Error: refusing to drop dead letter #{doomed[1]} for good without confirmation; pass --yes\n"
        )
        assert await hive.broker.dead_count() == 3
        kept = await run_on_a_terminal("n\n", "drop", str(doomed[1]))
        assert kept.returncode == 1
        assert kept.stdout == f"drop dead letter #{doomed[1]} for good? [y/N]: "
        assert kept.stderr == "Aborted!\n"
        assert await hive.broker.dead_count() == 3
        confirmed = await run_on_a_terminal("y\n", "drop", str(doomed[1]))
        assert confirmed.returncode == 0, confirmed.stderr
        assert confirmed.stdout.endswith(f"? [y/N]: dropped #{doomed[1]}\n")
        dropped = await run("drop", str(doomed[2]), "--yes", "--json")
        assert json.loads(dropped.stdout) == {"dropped": [doomed[2]]}
        for gone in doomed[1:]:
            with pytest.raises(NotDeadLetter):
                await hive.broker.dead_letter(gone)

        requeued = await run("requeue", str(doomed[0]))
        assert requeued.returncode == 0, requeued.stderr
        assert requeued.stdout == f"requeued #{doomed[0]} with fresh attempts\n"
        assert requeued.stderr == f"note: {REQUEUE_WARNING}\n"
        with trio.fail_after(60):
            back = await next_event(hive, "worker", "message_requeued")
            start = await next_event(hive, "worker", "turn_start", after=back.id)
            end = await next_event(hive, "worker", "turn_end", after=start.id)
        assert (back.data, start.data["message_ids"], end.data["exit"]) == ({"ids": [doomed[0]]}, [doomed[0]], "ok")
        assert (await run("list")).stdout == "no dead letters\n"
