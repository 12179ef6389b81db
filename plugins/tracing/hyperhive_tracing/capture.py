"""Span capture: hooks and live events made into spans, one trace per piece of work.

- A message sent from outside a turn (the operator's, a hive event nobody's work
  caused) is the root of a new trace: a ``message`` span. A message an agent sends
  in a turn is a ``send`` span, child of that turn. Either way the message carries
  the span's context as a W3C ``traceparent`` header (``message_headers``), so the
  recipient's turn continues the trace, after a restart too.
- A turn is a child of the first message of its batch that carries a context, and
  links to the others'. Its tool calls (``tool_use``/``tool_result`` events) are
  its children, and so is one ``model`` span with the turn's tokens and cost.
- A question to the operator and an approval are spans from asking to answering
  (``waits_on_person``); the hive event that brings the answer continues the trace
  from them. Naps (``nap.*`` events) and notes compactions (``compaction.*``) are
  children of the turn they followed.

Spans are written as they open (status ``open``) and again as they end, by one
writer task, so a daemon that stops mid-work finds its open spans at the next
start: a turn the stop cut short is closed as an error there, and the turn that
runs its messages again continues their traces; a question, an approval or a nap
still open is closed when its end arrives. On a hive across hosts each host
publishes its own spans as ``tracing.span`` events and stores the others', so every
host's view shows whole traces; each exports only its own.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core import SYSTEM, Event, StashKey, SubscriptionDropped
from hyperhive_tracing.config import TracingSection
from hyperhive_tracing.export import Export
from hyperhive_tracing.store import (
    SpanRecord,
    new_span_id,
    new_trace_id,
    open_spans,
    prune,
    save_spans,
    trace_spans,
)
from hyperhive_tracing.view import publish_turn_link

if TYPE_CHECKING:
    from hyperhive_core import Hive, Message, Turn

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
SPAN_EVENT = "tracing.span"
# Spans waiting for the writer, at most; past it a span is lost with a warning (the hive never waits on tracing).
WRITE_QUEUE = 10_000
# Turns remembered by key, to find the one an event (a tool call, a compaction) belongs to, however late.
KNOWN_TURNS = 4096
# A send refused before it was stored never ends its span; forget such spans past this many.
PENDING_LIMIT = 1_000
RETENTION_INTERVAL = 3600.0
CUT_SHORT = "the daemon stopped mid-turn; the turn ran again after the restart"


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` from a W3C ``traceparent``; ``None`` for none or a malformed one."""
    found = _TRACEPARENT.fullmatch(value or "")
    if found is None or found[1] == "0" * 32 or found[2] == "0" * 16:
        return None
    return found[1], found[2]


def _now() -> int:
    return time.time_ns()


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _finish(span: SpanRecord, end_ns: int | None = None, status: str = "ok", **attributes: Any) -> SpanRecord:
    end = max(span.start_ns, _now() if end_ns is None else end_ns)
    return replace(span, end_ns=end, status=status, attributes={**span.attributes, **attributes})


class Tracer:
    """The hive's span capture, in ``hive.stash[TRACER]``: what is open now, and the writer's queue."""

    def __init__(self, hive: Hive, settings: TracingSection) -> None:
        self.hive = hive
        self.settings = settings
        self.host = hive.cluster.host if hive.cluster is not None else ""
        self.export = Export(settings) if settings.otlp_endpoint else None
        self._running: dict[str, SpanRecord] = {}
        """Each agent's turn now running, by agent."""
        self._turns: OrderedDict[tuple[str, str], SpanRecord] = OrderedDict()
        """The last turns, by (agent, turn key), oldest first."""
        self._streamed: dict[str, str] = {}
        """The key of each agent's turn the live events are at now (its last ``turn_start``)."""
        self._pending: dict[str, SpanRecord] = {}
        """Send and message spans whose message is not stored yet, by span id."""
        self._tools: dict[str, SpanRecord] = {}
        """Tool calls waiting for their result, by tool_use id."""
        self._waits: dict[tuple[str, str], SpanRecord] = {}
        """Questions, approvals, naps and compactions still open, by (kind, key)."""
        self._unwritten: list[SpanRecord] = []
        self._to_write = trio.Event()
        self._lost = 0
        """Spans not kept since the last write: the writer was ``WRITE_QUEUE`` behind."""

    # -- what the hooks call ----------------------------------------------------------

    def headers_for(self, sender: str, recipient: str, kind: str, body: str) -> dict[str, str]:
        """A send's ``traceparent``: its own ``send`` span in a turn, else the context it continues, else a root."""
        turn = self._running.get(sender)
        if turn is not None:
            span = self._open(turn, f"send {sender}→{recipient}", "send", sender, attributes={"recipient": recipient})
        elif (continued := self._continued(kind, body)) is not None:
            return {TRACEPARENT: traceparent(continued.trace_id, continued.span_id)}
        else:
            name = f"message {sender}→{recipient}"
            span = SpanRecord(
                new_span_id(),
                new_trace_id(),
                None,
                name,
                "message",
                sender,
                self.host,
                _now(),
                attributes={"recipient": recipient},
            )
        if len(self._pending) >= PENDING_LIMIT:
            self._pending.pop(next(iter(self._pending)))
        self._pending[span.span_id] = span
        return {TRACEPARENT: traceparent(span.trace_id, span.span_id)}

    def _continued(self, kind: str, body: str) -> SpanRecord | None:
        """The question or approval a hive event answers, whose trace it continues."""
        if kind != "event":
            return None
        try:
            fields = json.loads(body)
            key = {"operator_answered": "question", "approval_resolved": "approval"}[fields["event"]]
            return self._waits.get((key, str(fields["id"])))
        except (ValueError, KeyError, TypeError):
            return None

    def message_stored(self, message: Message) -> None:
        """A send's message is stored: its span ends now."""
        context = parse_traceparent(message.headers.get(TRACEPARENT))
        span = self._pending.pop(context[1], None) if context else None
        if span is not None:
            self._save(_finish(span, message_id=message.id, kind=message.kind))

    def turn_started(self, agent: str, turn: Turn) -> SpanRecord:
        contexts: list[tuple[str, str]] = []
        for message in turn.messages:
            context = parse_traceparent(message.headers.get(TRACEPARENT))
            if context is not None and context not in contexts:
                contexts.append(context)
        if not contexts:  # sent before tracing was on: the oldest message starts a trace now
            first = turn.messages[0]
            at = _ns(first.created_at)
            root = SpanRecord(
                new_span_id(),
                new_trace_id(),
                None,
                f"message {first.sender}→{agent}",
                "message",
                first.sender,
                self.host,
                at,
                at,
                "ok",
                attributes={"message_id": first.id, "recipient": agent},
            )
            self._save(root)
            contexts.append((root.trace_id, root.span_id))
        (trace_id, parent_id), others = contexts[0], contexts[1:]
        span = SpanRecord(
            new_span_id(),
            trace_id,
            parent_id,
            f"turn {agent}",
            "turn",
            agent,
            self.host,
            _now(),
            attributes={"turn_key": str(turn.messages[0].id), "message_ids": [m.id for m in turn.messages]},
            links=[{"trace_id": trace, "span_id": span_id} for trace, span_id in others],
        )
        crashed = self._running.get(agent)
        if crashed is not None:  # on_turn_end never came: the turn crashed the agent's loop
            self._save(_finish(crashed, span.start_ns, "error", error="the turn crashed the agent's turn loop"))
        self._running[agent] = span
        self._know(agent, span)
        self._save(span)
        publish_turn_link(self.hive, agent, trace_id, span.span_id)
        return span

    def turn_ended(self, agent: str, turn: Turn) -> None:
        span = self._running.pop(agent, None)
        if span is None:
            return
        end = _now()
        ok = turn.exit in ("ok", "compact-retry")
        result = turn.result
        usage = result.usage if result is not None else {}
        model = f"model {self.hive.agents.get(agent).status.model}"
        self._save(
            self._open(
                span,
                model,
                "model",
                agent,
                span.start_ns,
                end_ns=end,
                status="ok" if ok else "error",
                cost_usd=turn.cost_usd,
                input_tokens=usage.get("input_tokens"),
                output_tokens=usage.get("output_tokens"),
                attributes={"usage": usage, "tool_calls": result.tool_calls if result is not None else 0},
            )
        )
        finished = _finish(span, end, "ok" if ok else "error", exit=turn.exit, duration_ms=turn.duration_ms)
        self._know(agent, finished)
        self._save(finished)

    def _know(self, agent: str, span: SpanRecord) -> None:
        self._turns[(agent, span.attributes["turn_key"])] = span
        if len(self._turns) > KNOWN_TURNS:
            self._turns.popitem(last=False)

    def _turn_of(self, agent: str) -> SpanRecord | None:
        """The turn ``agent``'s live events are at (however far behind they are), else the one running now."""
        streamed = self._turns.get((agent, self._streamed.get(agent, "")))
        return streamed or self._running.get(agent)

    def _open(
        self, parent: SpanRecord, name: str, kind: str, agent: str, start_ns: int | None = None, **fields: Any
    ) -> SpanRecord:
        """A new child of ``parent``, open from ``start_ns`` (now), with ``fields`` (its attributes, ...)."""
        start = _now() if start_ns is None else start_ns
        return SpanRecord(new_span_id(), parent.trace_id, parent.span_id, name, kind, agent, self.host, start, **fields)

    # -- live events ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """One live event of this host's (a tool call, a question, an approval, a nap, a compaction)."""
        data, at = event.data, _ns(event.at)
        kind: str = event.type  # plugins' own types too, beyond core's
        if kind == "turn_start" and data.get("message_ids"):
            self._streamed[event.agent] = str(data["message_ids"][0])
        elif kind == "turn_end":  # a tool call the turn left without a result ends with it
            turn = self._turn_of(event.agent)
            for tool_id, tool in list(self._tools.items()):
                if turn is not None and tool.parent_id == turn.span_id:
                    del self._tools[tool_id]
                    self._save(_finish(tool, at, "error", error="the turn ended before the tool's result"))
        elif kind == "tool_use":
            turn = self._turn_of(event.agent)
            if turn is not None and data.get("id"):
                name = str(data.get("name", ""))
                tool = self._open(turn, f"tool {name}", "tool", event.agent, at, attributes={"tool": name})
                self._tools[str(data["id"])] = tool
                self._save(tool)
        elif kind == "tool_result":
            called = self._tools.pop(str(data.get("tool_use_id")), None)
            if called is not None:
                self._save(_finish(called, at, "error" if data.get("is_error") else "ok"))
        elif kind == "questions.asked":
            self._wait_started(("question", str(data["id"])), event.agent, at, "question", question_id=data["id"])
        elif kind == "questions.resolved":
            status = "error" if data.get("status") == "expired" else "ok"
            self._wait_ended(("question", str(data["id"])), at, status, outcome=data.get("status"))
        elif kind == "approval_requested":
            asker = str(data.get("requested_by") or self.hive.agents.manager)
            name = f"approval {data.get('kind', '')} {event.agent}"
            self._wait_started(("approval", str(data["id"])), asker, at, name, approval_id=data["id"])
        elif kind == "approval_resolved":
            status = "ok" if data.get("status") in ("approved", "denied") else "error"  # failed, cancelled
            self._wait_ended(("approval", str(data["id"])), at, status, outcome=data.get("status"))
        elif kind == "nap.started":
            self._wait_started(("nap", event.agent), event.agent, at, "nap", seconds=data.get("seconds"))
        elif kind == "nap.ended":
            self._wait_ended(("nap", event.agent), at, "ok", how=data.get("how"))
        elif kind == "compaction.started":
            self._wait_started(("compaction", str(data["id"])), event.agent, at, "compaction notes.md")
        elif kind == "compaction.finished":
            status = "ok" if data.get("status") in (None, "done", "ok") else "error"
            self._wait_ended(("compaction", str(data["id"])), at, status, outcome=data.get("status"))

    def _wait_started(self, key: tuple[str, str], agent: str, at: int, name: str, **attributes: Any) -> None:
        turn = self._turn_of(agent)
        if turn is None:  # nothing traced leads to it (tracing came on since)
            return
        kind, wait_key = key
        span = self._open(
            turn,
            name,
            kind,
            agent,
            at,
            waits_on_person=kind in ("question", "approval"),
            attributes={"wait_key": wait_key, **attributes},
        )
        self._waits[key] = span
        self._save(span)

    def _wait_ended(self, key: tuple[str, str], at: int, status: str, **attributes: Any) -> None:
        span = self._waits.pop(key, None)
        if span is not None:
            self._save(_finish(span, at, status, **attributes))

    def merge(self, event: Event) -> None:
        """Another host's span (a ``tracing.span`` event it published): stored here, never exported here."""
        try:
            span = SpanRecord.from_event(event.data)
        except (TypeError, ValueError) as exc:
            log.warning("a span from host %s was not stored: %s", event.data.get("host"), exc)
            return
        self._save(span)

    # -- restarts ---------------------------------------------------------------------------

    async def resume(self) -> None:
        """Close what a stop cut short; keep waiting on what still may end (questions, approvals, naps)."""
        for span in await open_spans(self.hive):
            if span.host != self.host:
                continue  # another host's: it ends it
            if "wait_key" in span.attributes:
                self._waits[(span.kind, str(span.attributes["wait_key"]))] = span
                continue
            # It ended, at the latest, with the last thing under it that is known to have happened.
            under = [s for s in await trace_spans(self.hive, span.trace_id) if s.parent_id == span.span_id]
            last = max([span.start_ns, *(s.end_ns or s.start_ns for s in under)])
            self._save(_finish(span, last, "error", error=CUT_SHORT))

    # -- the writer -----------------------------------------------------------------------

    def _save(self, span: SpanRecord) -> None:
        if len(self._unwritten) == WRITE_QUEUE:
            self._lost += 1
            return
        self._unwritten.append(span)
        self._to_write.set()

    async def write(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store spans as they come, all that wait at once; hand this host's finished ones to the export."""
        task_status.started()
        try:
            while True:
                await self._to_write.wait()
                self._to_write = trio.Event()
                await self._write()
        finally:
            with trio.CancelScope(shield=True):
                await self._write()

    async def _write(self) -> None:
        spans, self._unwritten = self._unwritten, []
        if self._lost:
            log.warning("tracing: %d span(s) were lost: %d were already waiting to be written", self._lost, WRITE_QUEUE)
            self._lost = 0
        if not spans:
            return
        try:
            await save_spans(self.hive, spans)
        except Exception:
            log.exception("tracing: could not store %d span(s)", len(spans))
        own = [span for span in spans if span.host == self.host]
        if self.hive.cluster is not None:
            for span in own:  # as the hive's own events, so no agent's tail shows them
                self.hive.events.publish(SYSTEM, SPAN_EVENT, **span.to_event())
        if self.export is not None:
            self.export.offer([span for span in own if not span.open])

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the live events; resubscribe from the last one seen after falling behind."""
        last_id: int | None = None
        task_status.started()
        while True:
            try:
                async with self.hive.events.subscribe(after_id=last_id) as events:
                    async for event in events:
                        last_id = event.id
                        self._handle(event)
            except SubscriptionDropped:
                log.warning("tracing fell behind the live events; catching up from event %s", last_id)

    def _handle(self, event: Event) -> None:
        # Another host's events come tagged with it: it captures its own, and sends its spans.
        foreign = event.data.get("host") not in (None, "", self.host)
        try:
            if event.type == SPAN_EVENT:
                if foreign:
                    self.merge(event)
            elif not foreign:
                self.on_event(event)
        except Exception:  # one odd event never stops the capture
            log.exception("tracing: event %d (%s) was not traced", event.id, event.type)

    async def run_retention(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            deleted = await prune(self.hive, self.settings.retention_days)
            if deleted:
                log.info("tracing retention deleted %d span(s)", deleted)
            await trio.sleep(RETENTION_INTERVAL)


TRACER = StashKey[Tracer]("tracing")
"""The hive's span capture in ``hive.stash``, made at startup."""
