"""A Claude Code CLI that misbehaves: it exits at once, or prints garbage and exits.

The turn loop must keep the message that woke it (retried, then dead-lettered with
the CLI's own reason), and must back off between restarts rather than spin.
"""

from __future__ import annotations

import stat
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive_core import Message
from hyperhive_core.testing import Script, next_event, running_hive

pytestmark = pytest.mark.needs_claude

BROKEN = {
    "exits at once": 'echo "claude: cannot read /state/.claude/settings.json" >&2\nexit 3\n',
    "prints half a JSON line": 'echo "not json"\nprintf \'{"type": "syst\'\nexit 3\n',
}


def broken_cli(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """An executable standing in for claude that logs each start to a file, then runs ``body``."""
    starts = tmp_path / "starts"
    cli = tmp_path / "claude"
    cli.write_text(f"#!/bin/sh\ndate +%s.%N >> {starts}\n{body}")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return cli, starts


def worker_on(
    tmp_path: Path, make_pm: Any, cli: Path, claude: dict[str, Any], *, max_attempts: int
) -> AbstractAsyncContextManager[Any]:
    """A hive whose agent ``worker`` runs ``cli`` as its Claude Code, with ``claude`` settings."""
    script = Script()
    script.otherwise("unused")
    return running_hive(
        tmp_path,
        make_pm(),
        script,
        agents={"worker": {}},
        claude={"cli": str(cli), **claude},
        broker={"max_attempts": max_attempts},
    )


async def dead_letter(hive: Any, sent: Message) -> Message:
    """``sent``, once the worker's attempts at it are used up and it is a dead letter."""
    while not await hive.broker.dead_count("worker"):
        await trio.sleep(0.5)
    return await hive.broker.dead_letter(sent.id)


@pytest.mark.parametrize("fault", sorted(BROKEN))
async def test_a_cli_that_dies_keeps_the_message_and_says_why(make_pm, tmp_path, fault):
    cli, starts = broken_cli(tmp_path, BROKEN[fault])
    settings = {"turn_attempts": 3, "api_error_backoff_seconds": 0.5}
    async with worker_on(tmp_path, make_pm, cli, settings, max_attempts=2) as hive:
        sent = await hive.broker.send("operator", "worker", "precious")
        with trio.fail_after(120):
            waits = [
                await next_event(hive, "worker", "error", lambda e: "retrying the turn in" in e.data["text"])
                for _ in range(2)
            ]
            dead = await dead_letter(hive, sent)
    # Kept, with the CLI's own reason rather than "no result".
    assert dead.body == "precious"
    assert dead.last_error.startswith("turn failure: Claude Code exited (status 3) "), dead
    if fault == "exits at once":
        assert "cannot read /state/.claude/settings.json" in dead.last_error
    # Each restart within a turn waited its backoff, not a tight loop.
    assert all("Claude Code exited (status 3)" in wait.data["text"] for wait in waits)
    assert all("restarting it with --resume; retrying the turn in" in wait.data["text"] for wait in waits)
    # 2 leases of 3 attempts each, for the worker; the manager's message_dead notice adds its own.
    assert len(starts.read_text().split()) <= 2 * 3 + 2 * 3 + 2


async def test_a_cli_that_hangs_without_a_word_is_a_stall_and_keeps_the_message(make_pm, tmp_path, monkeypatch):
    from hyperhive_core import claude

    monkeypatch.setattr(claude, "READY_TIMEOUT_SECONDS", 1.0)  # it never answers initialize either
    cli, starts = broken_cli(tmp_path, "exec sleep 600\n")
    async with worker_on(tmp_path, make_pm, cli, {"turn_attempts": 2, "stall_seconds": 2}, max_attempts=1) as hive:
        sent = await hive.broker.send("operator", "worker", "precious")
        with trio.fail_after(120):
            stall = await next_event(hive, "worker", "error", lambda e: "(stall)" in e.data["text"])
            dead = await dead_letter(hive, sent)
    assert stall.data["text"].startswith("no progress from the model API for ")
    assert (dead.body, dead.last_error) == ("precious", "turn failure: stalled")
    assert len(starts.read_text().split()) >= 2  # killed and started again for the second attempt


async def test_a_damaged_transcript_starts_a_fresh_session_instead_of_failing_every_turn(make_pm, tmp_path):
    script = Script()
    script.on("worker", "second").call("send", {"to": "operator", "body": "fresh and well"}).reply("done")
    script.otherwise("noted")
    async with running_hive(tmp_path, make_pm(), script, agents={"worker": {}}) as hive:
        await hive.broker.send("operator", "worker", "first")
        with trio.fail_after(60):
            await next_event(hive, "worker", "turn_end")
        session = hive.harnesses["worker"].session
        assert session is not None
        assert session.session_id is not None
        old_id = session.session_id
        [transcript] = (tmp_path / "state" / "agents" / "worker" / "state").glob(f".claude/projects/*/{old_id}.jsonl")
        # Cut off mid-line and followed by junk, as a full disk or a crash mid-write leaves it.
        transcript.write_bytes(transcript.read_bytes()[:200] + bytes(range(256)) * 8)
        await session.stop()

        await hive.broker.send("operator", "worker", "second")
        with trio.fail_after(90):
            warned = await next_event(hive, "worker", "error", lambda e: "cannot resume session" in e.data["text"])
            end = await next_event(hive, "worker", "turn_end", after=warned.id)
            while not (replies := await hive.broker.recent_from("worker", 5)):
                await trio.sleep(0.2)
        assert end.data["exit"] == "ok"
        assert [m.body for m in replies] == ["fresh and well"]
        assert hive.harnesses["worker"].session.session_id != old_id
    [kept] = transcript.parent.glob(f"{old_id}.jsonl.unreadable-*")
    assert warned.data["text"] == (
        f"Claude Code cannot resume session {old_id} (its transcript is damaged); the transcript is kept as "
        f"{kept.name} and a fresh session starts: the conversation so far is lost, the agent's /state is not"
    )
