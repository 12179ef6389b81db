"""Dead letters belong to the operator: ``hyperhive dead …``, its host-socket commands, the reports.

A message leased ``[broker] max_attempts`` times without an ack moves to dead-letter
(docs/broker.md). ``report_dead`` then publishes a ``message_dead`` live event (the
dashboard's list updates), runs the ``on_dead_letter`` hooks (telemetry counts it)
and sends the manager a ``message_dead`` hive event. The host-socket commands list,
show, requeue and drop dead letters; the dashboard calls the same functions.

``show`` pieces together what each delivery attempt did, so the operator can judge
whether a requeue would repeat work: the ``turns`` table records every finished
turn with the ids it handled; the agent's event history (a ring of its newest
events) has what the turn did, from ``turn_start`` (which names the ids) to
``turn_end``. A turn that crashed or was cut short by a restart has no ``turns``
row but may have events; an old turn may have a row and no events left.

The CLI imports this module for ``hyperhive dead``: keep module-level imports light.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from hyperhive_core.cliopts import echo_json, json_option, pass_state
from hyperhive_core.names import SYSTEM

if TYPE_CHECKING:
    import sqlite_utils

    from hyperhive_core.broker import Message
    from hyperhive_core.events import Event
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

MESSAGE_DEAD = "message_dead"
REQUEUE_WARNING = (
    "a requeue delivers the message again: the agent may repeat work its earlier attempts already did "
    "(tool calls, messages sent); check what they did first"
)
LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# What a turn did, as ``show`` reports it; state changes are left out.
ACTIVITY = frozenset(
    {"assistant_text", "tool_use", "tool_result", "permission_denied", "message_sent", "note", "error", "turn_end"}
)
ACTIVITY_CHARS = 2000
# A ``turns`` row and its ``turn_start`` event are written microseconds apart.
SAME_TURN_SECONDS = 1.0

EventTurn = tuple["Event", list["Event"]]
"""A ``turn_start`` event and the activity that followed it."""


# -- when a message dies ---------------------------------------------------------------


def dead_fields(message: Message) -> dict[str, Any]:
    """What the live event and the manager's hive event say about a dead letter."""
    from hyperhive_core.builtin import PREVIEW_CHARS

    return {
        "id": message.id,
        "sender": message.sender,
        "recipient": message.recipient,
        "kind": message.kind,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "preview": message.body[:PREVIEW_CHARS],
    }


def is_dead_notice(message: Message) -> bool:
    """Whether ``message`` is the hive's own ``message_dead`` event."""
    if message.kind != "event" or message.sender != SYSTEM:
        return False
    try:
        return json.loads(message.body).get("event") == MESSAGE_DEAD
    except (ValueError, AttributeError):
        return False


async def report_dead(hive: Hive, messages: Iterable[Message]) -> None:
    """Tell the dashboard, the ``on_dead_letter`` hooks and the manager about each message; never raises.

    The manager hears of every dead letter, its own included: a message to it may
    have died of restarts rather than of a broken manager, and then it can ask the
    sender again. The one exception is a dead ``message_dead`` notice itself, or a
    manager whose turns keep failing would be told of the notice's death, and of
    that notice's, for ever. The operator sees every dead letter on the dashboard.
    """
    from hyperhive_core.plugins import await_all, callers_by_plugin

    for message in messages:
        fields = dead_fields(message)
        hive.events.publish(message.recipient, MESSAGE_DEAD, **fields)
        # One plugin at a time: a failing hook costs no other plugin its report.
        for plugin, caller in callers_by_plugin(hive.pm, "on_dead_letter"):
            try:
                await await_all(caller(hive=hive, message=message))
            except Exception as exc:
                log.exception("plugin %s: on_dead_letter failed for message %d", plugin, message.id)
                hive.events.publish(
                    SYSTEM, "error", where="on_dead_letter", plugin=plugin, message_id=message.id, error=repr(exc)
                )
        if is_dead_notice(message):
            log.warning("message %d, a message_dead notice to %s, is dead too", message.id, message.recipient)
            continue
        try:
            await hive.notify(hive.agents.manager, MESSAGE_DEAD, **fields)
        except Exception as exc:
            log.exception("could not tell the manager that message %d is dead", message.id)
            hive.events.publish(SYSTEM, "error", where=MESSAGE_DEAD, message_id=message.id, error=repr(exc))


# -- what the attempts did ---------------------------------------------------------------------

_TURNS = """
SELECT t.started_at, t.exit, t.duration_ms, t.cost_usd, t.tool_calls, t.message_ids, j.value
FROM turns AS t, json_each(t.message_ids) AS j
WHERE t.agent = ? AND t.started_at >= ? AND j.value IN (SELECT value FROM json_each(?))
ORDER BY t.started_at
"""


def _turn_rows(recipient: str, since: float, ids: list[int], db: sqlite_utils.Database) -> list[tuple[Any, ...]]:
    return db.execute(_TURNS, (recipient, since, json.dumps(ids))).fetchall()


def _clip(value: Any) -> Any:
    """Long text cut to ``ACTIVITY_CHARS``; a large structure becomes its clipped JSON."""
    if isinstance(value, str):
        return value if len(value) <= ACTIVITY_CHARS else value[:ACTIVITY_CHARS] + f"… ({len(value)} characters)"
    if isinstance(value, dict | list):
        text = json.dumps(value)
        return value if len(text) <= ACTIVITY_CHARS else _clip(text)
    return value


def _event_turns(events: list[Event]) -> list[EventTurn]:
    """Each ``turn_start`` with what followed it up to its ``turn_end`` (or the next start)."""
    turns: list[EventTurn] = []
    current: list[Event] | None = None
    for event in events:
        if event.type == "turn_start":
            current = []
            turns.append((event, current))
        elif current is not None:
            if event.type in ACTIVITY:
                current.append(event)
            if event.type == "turn_end":
                current = None
    return turns


def _attempt(row: tuple[Any, ...] | None, turn: EventTurn | None, detail: bool) -> dict[str, Any]:
    """One attempt from its ``turns`` row, its events, or both."""
    activity = turn[1] if turn is not None else None
    end = next((event.data for event in activity or () if event.type == "turn_end"), None)
    if row is not None:
        started_at, exit_, duration_ms, cost_usd, tool_calls, batch = row[:6]
        batch = json.loads(batch)
    else:
        assert turn is not None
        started_at, batch = turn[0].at, list(turn[0].data.get("message_ids", []))
        # No row: the turn never finished (its loop crashed, or the daemon stopped).
        exit_ = end.get("exit") if end else None
        duration_ms = end.get("duration_ms") if end else None
        cost_usd = end.get("cost_usd") if end else None
        tool_calls = end.get("tool_calls") if end else None
    attempt = {
        "started_at": started_at,
        "exit": exit_,
        "duration_ms": duration_ms,
        "cost_usd": cost_usd,
        "tool_calls": tool_calls,
        "tools": [event.data.get("name") for event in activity or () if event.type == "tool_use"],
        "batch": batch,
        "in_history": activity is not None,
    }
    if detail:
        attempt["activity"] = (
            None
            if activity is None
            else [
                {"type": event.type, "at": event.at, **{key: _clip(value) for key, value in event.data.items()}}
                for event in activity
                if event.type != "turn_end"
            ]
        )
    return attempt


def _nearest(turns: list[EventTurn], at: float) -> EventTurn | None:
    """The turn that started nearest ``at``, if that is within ``SAME_TURN_SECONDS``."""
    match = min(turns, key=lambda turn: abs(turn[0].at - at), default=None)
    return match if match is not None and abs(match[0].at - at) <= SAME_TURN_SECONDS else None


async def attempt_history(hive: Hive, messages: list[Message], *, detail: bool) -> dict[int, list[dict[str, Any]]]:
    """Every turn that handled each message, oldest first: when, how it ended, the tools it used.

    :param detail: also each turn's ``activity``: its text, tool calls and results,
        messages sent (``None`` once the event history no longer has the turn).
    """
    history: dict[int, list[dict[str, Any]]] = {message.id: [] for message in messages}
    by_recipient: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        by_recipient[message.recipient].append(message)
    for recipient, group in by_recipient.items():
        since = min(message.created_at for message in group) - SAME_TURN_SECONDS
        rows = await hive.store.read(partial(_turn_rows, recipient, since, [message.id for message in group]))
        # Event ids are microsecond timestamps: nothing of these turns is older than ``since``.
        event_turns = _event_turns(await hive.events.history(recipient, after_id=int(since * 1_000_000)))
        for message in group:
            unmatched = [turn for turn in event_turns if message.id in turn[0].data.get("message_ids", [])]
            attempts = []
            for row in (row for row in rows if row[6] == message.id):
                match = _nearest(unmatched, row[0])
                if match is not None:
                    unmatched.remove(match)
                attempts.append(_attempt(row, match, detail))
            attempts += [_attempt(None, turn, detail) for turn in unmatched]
            history[message.id] = sorted(attempts, key=lambda attempt: attempt["started_at"])
    return history


def letter_json(message: Message, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """A dead letter as the host socket and the dashboard's API answer: the message, its attempts."""
    return {**dead_fields(message), "created_at": message.created_at, "history": attempts}


# -- host-socket commands --------------------------------------------------------------------


async def dead_letters(hive: Hive, recipient: str | None = None, limit: int = LIST_LIMIT) -> dict[str, Any]:
    """Dead letters, newest first (only those to ``recipient`` if given), each with its attempts."""
    from hyperhive_core.broker import BrokerError, check_address

    if recipient is not None:
        recipient = check_address(recipient, "recipient")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise BrokerError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, not {limit!r}")
    messages = await hive.broker.dead_letters(recipient, limit=limit)
    history = await attempt_history(hive, messages, detail=False)
    return {
        "total": await hive.broker.dead_count(recipient),
        "dead_letters": [letter_json(message, history[message.id]) for message in messages],
    }


async def dead_letter(hive: Hive, message_id: int) -> dict[str, Any]:
    """One dead letter: the whole message, and what each attempt at it did."""
    message = await hive.broker.dead_letter(message_id)
    history = await attempt_history(hive, [message], detail=True)
    return {**letter_json(message, history[message.id]), "body": message.body, "warning": REQUEUE_WARNING}


def _publish(hive: Hive, messages: list[Message], type_: str) -> None:
    """One live event per recipient, naming its messages: the dashboard's list follows it."""
    ids: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        ids[message.recipient].append(message.id)
    for recipient, message_ids in ids.items():
        hive.events.publish(recipient, type_, ids=message_ids)


async def requeue_dead(hive: Hive, ids: list[int]) -> dict[str, Any]:
    """Put dead letters back in their recipients' queues with fresh attempts; all or nothing."""
    messages = await hive.broker.requeue_dead(ids)
    _publish(hive, messages, "message_requeued")
    return {"requeued": [message.id for message in messages], "warning": REQUEUE_WARNING}


async def drop_dead(hive: Hive, ids: list[int]) -> dict[str, Any]:
    """Delete dead letters for good; all or nothing."""
    messages = await hive.broker.drop_dead(ids)
    _publish(hive, messages, "message_dropped")
    return {"dropped": [message.id for message in messages]}


COMMANDS = {
    "dead_letters": dead_letters,
    "dead_letter": dead_letter,
    "requeue_dead": requeue_dead,
    "drop_dead": drop_dead,
}


# -- hyperhive dead ------------------------------------------------------------------------------


def ago(then: float, now: float | None = None) -> str:
    """How long ago, in a few characters, as the dashboard says it: ``42s ago``, ``3m ago``."""
    seconds = max(0.0, (time.time() if now is None else now) - then)
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(f"#{message_id}" for message_id in ids)


def _ask(obj: Any, cmd: str, **arguments: Any) -> Any:
    from hyperhive_core.cli import ask_daemon

    return ask_daemon(obj, cmd, **arguments)


def list_line(letter: Mapping[str, Any], now: float) -> str:
    error = (letter["last_error"] or "").replace("\n", " ")
    return (
        f"{'#' + str(letter['id']):<7} {letter['recipient']:<16} {letter['sender']:<16} "
        f"{letter['attempts']:>5}  {ago(letter['created_at'], now):<9} {error}"
    )


def attempt_lines(number: int, attempt: Mapping[str, Any]) -> list[str]:
    """One attempt for ``dead show``: a header line, then what it did."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(attempt["started_at"]))
    parts = [attempt["exit"] or "did not finish"]
    if attempt["duration_ms"] is not None:
        parts.append(f"{attempt['duration_ms'] / 1000:.1f}s")
    if attempt["tool_calls"]:
        parts.append(f"{attempt['tool_calls']} tool call{'s' if attempt['tool_calls'] != 1 else ''}")
    if attempt["cost_usd"]:
        parts.append(f"${attempt['cost_usd']:.4f}")
    if len(attempt["batch"]) > 1:
        parts.append(f"with {_ids(attempt['batch'])}")
    lines = [f"  {number}. {when}  {' · '.join(parts)}"]
    if attempt.get("activity") is None:
        lines.append("       (no longer in the agent's event history)")
        return lines
    for item in attempt["activity"]:
        lines.append(f"       {_activity_line(item)}")
    return lines


def _activity_line(item: Mapping[str, Any]) -> str:
    kind = item["type"]
    if kind == "assistant_text":
        text = f"◆ {item.get('text', '')}"
    elif kind == "tool_use":
        text = f"⚙ {item.get('name')} {json.dumps(item.get('input', {}))}"
    elif kind == "tool_result":
        text = f"↳ {'error: ' if item.get('is_error') else ''}{item.get('content', '')}"
    elif kind == "message_sent":
        text = f"→ sent #{item.get('id')} to {item.get('to')}: {item.get('preview', '')}"
    elif kind == "permission_denied":
        text = f"⛔ denied {item.get('tool')}: {item.get('reason') or ''}"
    else:
        text = f"· {kind}: {item.get('text') or item.get('error') or ''}"
    return text.replace("\n", "\n         ")


@click.group(name="dead")
def dead_command() -> None:
    """Dead letters: messages whose every delivery attempt failed. List, show, requeue or drop them."""


@dead_command.command(name="list")
@click.option("--agent", "recipient", metavar="NAME", help="Only those addressed to agent NAME.")
@click.option("--limit", default=LIST_LIMIT, show_default=True, type=click.IntRange(1, MAX_LIST_LIMIT))
@json_option(help="Machine-readable output, attempts included.")
@pass_state
def list_command(obj: Any, recipient: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, newest first: id, recipient, sender, attempts, age and last error."""
    result = _ask(obj, "dead_letters", recipient=recipient, limit=limit)
    if as_json:
        echo_json(result)
        return
    letters = result["dead_letters"]
    if not letters:
        click.echo("no dead letters")
        return
    now = time.time()
    click.echo(f"{'ID':<7} {'TO':<16} {'FROM':<16} {'TRIES':>5}  {'AGE':<9} LAST ERROR")
    for letter in letters:
        click.echo(list_line(letter, now))
    if result["total"] > len(letters):
        click.echo(f"… and {result['total'] - len(letters)} older; --limit shows more")


@dead_command.command(name="show")
@click.argument("message_id", metavar="ID", type=int)
@json_option()
@pass_state
def show_command(obj: Any, message_id: int, as_json: bool) -> None:
    """Dead letter ID in full, and what each attempt at it did."""
    letter = _ask(obj, "dead_letter", message_id=message_id)
    if as_json:
        echo_json(letter)
        return
    click.echo(
        f"dead letter #{letter['id']}: {letter['sender']} → {letter['recipient']} ({letter['kind']}), "
        f"sent {ago(letter['created_at'])}, dead after {letter['attempts']} attempts"
    )
    click.echo(f"last error: {letter['last_error'] or '(none recorded)'}")
    click.echo("")
    for line in letter["body"].splitlines() or [""]:
        click.echo(f"  {line}")
    click.echo("")
    history = letter["history"]
    click.echo(f"turns that handled it: {len(history) or 'none recorded'}")
    for number, attempt in enumerate(history, 1):
        for line in attempt_lines(number, attempt):
            click.echo(line)
    click.echo("")
    click.echo(f"note: {letter['warning']}")


@dead_command.command(name="requeue")
@click.argument("ids", metavar="ID...", type=int, nargs=-1, required=True)
@json_option()
@pass_state
def requeue_command(obj: Any, ids: tuple[int, ...], as_json: bool) -> None:
    """Put dead letters back in their agents' queues with fresh attempts (all or none)."""
    result = _ask(obj, "requeue_dead", ids=list(ids))
    if as_json:
        echo_json(result)
        return
    click.echo(f"requeued {_ids(result['requeued'])} with fresh attempts")
    click.echo(f"note: {result['warning']}", err=True)


@dead_command.command(name="drop")
@click.argument("ids", metavar="ID...", type=int, nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option()
@pass_state
def drop_command(obj: Any, ids: tuple[int, ...], yes: bool, as_json: bool) -> None:
    """Delete dead letters for good (all or none); asks first unless --yes."""
    what = f"drop dead letter{'s' if len(ids) > 1 else ''} {_ids(ids)} for good"
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(f"refusing to {what} without confirmation; pass --yes")
        click.confirm(f"{what}?", abort=True)
    result = _ask(obj, "drop_dead", ids=list(ids))
    if as_json:
        echo_json(result)
        return
    click.echo(f"dropped {_ids(result['dropped'])}")
