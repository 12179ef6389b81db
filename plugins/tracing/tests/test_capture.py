"""Span capture without the model: the store's API, restarts mid-turn, other hosts' spans, and the plugin left out."""

from __future__ import annotations

import hyperhive_tracing
import pytest
import trio
from hyperhive_tracing.capture import CUT_SHORT, TRACEPARENT, parse_traceparent
from hyperhive_tracing.store import (
    SpanRecord,
    TraceSummary,
    new_span_id,
    new_trace_id,
    open_spans,
    prune,
    recent_traces,
    save_spans,
    trace_of_turn,
    trace_spans,
)

from hyperhive_core import hookimpl
from hyperhive_core.testing import call_tool, host_request, running_hive

QUIET = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
DAY = 86_400 * 10**9


class HoldTurns:
    """Holds every turn once the other plugins saw it start: the tests look at spans, not at Claude Code."""

    def __init__(self):
        self.started = trio.Event()

    @hookimpl(trylast=True)
    async def on_turn_start(self, hive, agent, turn):
        self.started.set()
        await trio.sleep_forever()


def span(trace_id, name, kind="turn", parent=None, start=0, end=None, **fields) -> SpanRecord:
    return SpanRecord(
        new_span_id(),
        trace_id,
        parent,
        name,
        kind,
        fields.pop("agent", "worker"),
        "",
        start,
        end,
        "open" if end is None else "ok",
        **fields,
    )


async def until(predicate):
    """Wait (bounded by the caller's fail_after) until ``await predicate()`` is truthy; return it."""
    while not (found := await predicate()):
        await trio.sleep(0.05)
    return found


# -- the store -----------------------------------------------------------------------------------


async def test_the_store_keeps_traces_and_summarises_them(make_pm, tmp_path):
    pm = make_pm(tracing=hyperhive_tracing)
    async with running_hive(tmp_path, pm, QUIET) as hive:
        one, two = new_trace_id(), new_trace_id()
        root = span(one, "message operator→manager", "message", start=100, end=110, agent="operator")
        turn = span(one, "turn manager", parent=root.span_id, start=120, agent="manager", attributes={"turn_key": "7"})
        model = span(one, "model haiku", "model", turn.span_id, 130, 300, agent="manager", cost_usd=0.25)
        ask = span(one, "question", "question", turn.span_id, 200, agent="manager", waits_on_person=True)
        other = span(two, "message hive→worker", "message", start=500, end=900, agent="hive", cost_usd=0.5)
        await save_spans(hive, [root, turn, model, ask, other])
        assert await trace_spans(hive, one) == [root, turn, model, ask]  # by start, every field as it went in
        assert await trace_spans(hive, new_trace_id()) == []
        assert await recent_traces(hive) == [
            TraceSummary(two, "message hive→worker", 500, 400, 1, ["hive"], 0.5, False),
            TraceSummary(one, "message operator→manager", 100, None, 4, ["manager", "operator"], 0.25, True),
        ]
        assert [t.trace_id for t in await recent_traces(hive, 1)] == [two]
        assert [t.trace_id for t in await recent_traces(hive, agent="manager")] == [one]
        assert await trace_of_turn(hive, "manager", 7) == one
        assert await trace_of_turn(hive, "manager", "8") is None
        # The end of a span replaces its open copy; a late open copy never replaces the end.
        ended = SpanRecord(**{**turn.__dict__, "end_ns": 400, "status": "ok"})
        await save_spans(hive, [ended])
        await save_spans(hive, [turn])
        assert (await trace_spans(hive, one))[1] == ended
        assert [s.span_id for s in await open_spans(hive)] == [ask.span_id]
        with pytest.raises(ValueError, match="limit must be at least 1, not 0"):
            await recent_traces(hive, 0)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"span_id": "XYZ"}, "span_id 'XYZ' is not 16 lowercase hex digits"),
        ({"trace_id": "ab"}, "trace_id 'ab' is not 32 lowercase hex digits"),
        ({"parent_id": "nope"}, "parent_id 'nope' is not 16 lowercase hex digits (or None for a root)"),
        ({"kind": "lunch"}, "kind 'lunch' is not one of message, turn, tool, send, question"),
        ({"status": "done"}, "status 'done' is not one of ok, error, open"),
        ({"end_ns": 5}, "status 'open' with end_ns 5: a span is open exactly when unended"),
        ({"end_ns": 0, "start_ns": 9, "status": "ok"}, "end_ns 0 is before start_ns 9"),
        ({"links": [{"trace_id": "x"}]}, "link {'trace_id': 'x'} needs a trace_id (32 hex) and a span_id (16 hex)"),
    ],
)
def test_a_malformed_span_is_refused_saying_why(fields, says):
    good = {
        "span_id": "0123456789abcdef",
        "trace_id": "0123456789abcdef0123456789abcdef",
        "parent_id": None,
        "name": "turn worker",
        "kind": "turn",
        "agent": "worker",
        "host": "",
        "start_ns": 1,
    }
    with pytest.raises(ValueError, match="^span 'turn worker': ") as refused:
        SpanRecord(**{**good, **fields})
    assert says in str(refused.value)


async def test_retention_drops_whole_traces_nothing_happened_in_for_its_days(make_pm, tmp_path):
    pm = make_pm(tracing=hyperhive_tracing)
    async with running_hive(tmp_path, pm, QUIET) as hive:
        now = 100 * DAY
        old, busy, stuck = new_trace_id(), new_trace_id(), new_trace_id()
        old_root = span(old, "old", "message", start=now - 9 * DAY, end=now - 9 * DAY)
        busy_root = span(busy, "busy", "message", start=now - 9 * DAY, end=now - 9 * DAY)
        busy_late = span(busy, "late", parent=busy_root.span_id, start=now - 9 * DAY, end=now - DAY)
        stuck_open = span(stuck, "cut short", start=now - 8 * DAY)  # left open, nothing since
        await save_spans(hive, [old_root, busy_root, busy_late, stuck_open])
        assert await prune(hive, 7, now_ns=now) == 2
        assert [t.trace_id for t in await recent_traces(hive)] == [busy]


# -- capture ---------------------------------------------------------------------------------------


async def test_a_turn_cut_short_by_a_restart_ends_as_an_error_and_its_rerun_continues_the_trace(make_pm, tmp_path):
    hold = HoldTurns()
    pm = make_pm(tracing=hyperhive_tracing, hold=hold)
    agents = {"worker": {}}
    async with running_hive(tmp_path, pm, QUIET, agents=agents) as hive:
        with trio.fail_after(30):
            sent = await hive.broker.send("operator", "worker", "do it")
            await hold.started.wait()
            trace_id, root_id = parse_traceparent(sent.headers[TRACEPARENT])
            [first] = await until(lambda: spans_of(hive, trace_id, "turn"))
            # What the turn did before the stop: a tool call that ended, and one that never did.
            done = span(trace_id, "tool Read", "tool", first.span_id, first.start_ns + 10, first.start_ns + 5000)
            cut_tool = span(trace_id, "tool Bash", "tool", first.span_id, first.start_ns + 6000)
            await save_spans(hive, [done, cut_tool])
    hold.started = trio.Event()
    async with running_hive(tmp_path, pm, QUIET, agents=agents) as hive:
        with trio.fail_after(30):
            await hold.started.wait()
            turns = await until(lambda: spans_of(hive, trace_id, "turn", count=2))
            [root] = await spans_of(hive, trace_id, "message")
            tools = sorted(await spans_of(hive, trace_id, "tool", count=2), key=lambda tool: tool.start_ns)
    [cut, rerun] = turns
    assert (root.span_id, root.parent_id, root.agent, root.status) == (root_id, None, "operator", "ok")
    assert cut.span_id == first.span_id
    assert (cut.parent_id, cut.status, cut.attributes["error"]) == (root_id, "error", CUT_SHORT)
    assert cut.end_ns == cut_tool.start_ns  # the last thing known to have happened in it
    assert [(tool.name, tool.status) for tool in tools] == [("tool Read", "ok"), ("tool Bash", "error")]
    assert tools[1].attributes["error"] == CUT_SHORT
    assert (rerun.parent_id, rerun.status, rerun.attributes["turn_key"]) == (root_id, "open", str(sent.id))


async def test_an_approval_is_a_persons_wait_and_its_answer_continues_the_trace(make_pm, tmp_path):
    hold = HoldTurns()
    pm = make_pm(tracing=hyperhive_tracing, hold=hold)
    async with running_hive(tmp_path, pm, QUIET) as hive:
        with trio.fail_after(30):
            sent = await hive.broker.send("operator", "manager", "we need a builder")
            await hold.started.wait()
            trace_id, _ = parse_traceparent(sent.headers[TRACEPARENT])
            [turn] = await until(lambda: spans_of(hive, trace_id, "turn"))
            text, is_error = await call_tool(hive, "manager", "request_spawn", name="builder", description="builds")
            assert not is_error, text
            [asked] = await until(lambda: spans_of(hive, trace_id, "approval"))
            approval_id = asked.attributes["approval_id"]
            await host_request(hive, "deny", approval_id=approval_id, note="not now")
            [answer] = [m for m in await hive.broker.recent_for("manager") if m.kind == "event"]
            [denied] = await until(lambda: ended(hive, trace_id, "approval"))
    assert (asked.parent_id, asked.agent, asked.name) == (turn.span_id, "manager", "approval spawn builder")
    assert asked.waits_on_person
    assert (denied.status, denied.attributes["outcome"]) == ("ok", "denied")
    assert denied.end_ns >= denied.start_ns
    # The approval_resolved event that wakes the manager carries the approval's context.
    assert parse_traceparent(answer.headers[TRACEPARENT]) == (trace_id, asked.span_id)


async def ended(hive, trace_id, kind) -> list[SpanRecord]:
    return [s for s in await spans_of(hive, trace_id, kind) if not s.open]


async def spans_of(hive, trace_id, kind, count=1) -> list[SpanRecord]:
    found = [s for s in await trace_spans(hive, trace_id) if s.kind == kind]
    return found if len(found) >= count else []


async def test_a_turn_links_the_other_messages_of_its_batch(make_pm, tmp_path):
    hold = HoldTurns()
    pm = make_pm(tracing=hyperhive_tracing, hold=hold)
    async with running_hive(tmp_path, pm, QUIET, agents={"worker": {}}) as hive:
        with trio.fail_after(30):
            await hive.pause("worker", "batching")
            first = await hive.broker.send("operator", "worker", "one")
            second = await hive.broker.send("hive", "worker", '{"event": "agent_failed"}', kind="event")
            await hive.resume("worker")
            await hold.started.wait()
            parent, other = (parse_traceparent(m.headers[TRACEPARENT]) for m in (first, second))
            [turn] = await until(lambda: spans_of(hive, parent[0], "turn"))
            [other_root] = await trace_spans(hive, other[0])
    assert parent[0] != other[0]  # two pieces of work
    assert turn.parent_id == parent[1]
    assert turn.links == [{"trace_id": other[0], "span_id": other[1]}]
    assert turn.attributes["message_ids"] == [first.id, second.id]
    assert (other_root.kind, other_root.agent, other_root.name) == ("message", "hive", "message hive→worker")


async def test_without_the_plugin_nothing_of_it_runs(make_pm, tmp_path):
    pm = make_pm()
    assert pm.hook.message_headers.get_hookimpls() == []
    async with running_hive(tmp_path, pm, QUIET, agents={"worker": {}}) as hive:
        sent = await hive.broker.send("operator", "worker", "untraced")
        tables = await hive.store.read(lambda db: db.table_names())
    assert sent.headers == {}
    assert not [name for name in tables if name.startswith("tracing")]
