"""The trace's arithmetic on hand-built spans: tree, orphans, critical path, person wait, cost."""

from __future__ import annotations

from typing import Any

from hyperhive_tracing.analysis import analyse, build_tree, critical_path, person_wait, walk
from hyperhive_tracing.store import SpanRecord

TRACE = "0123456789abcdef0123456789abcdef"
MS = 1_000_000


NAMES: dict[str, str] = {}  # span id → the short name a test gave it


def hex_id(name: str) -> str:
    """A span id made of a short name (remembered, for ``ids``)."""
    span_id = name.encode().hex().ljust(16, "0")
    NAMES[span_id] = name
    return span_id


def span(key: str, parent: str | None, kind: str, agent: str, start: int, end: int | None, **more: Any) -> SpanRecord:
    """A span of TRACE whose id is made of ``key``; times are in ms."""
    fields: dict[str, Any] = {
        "span_id": hex_id(key),
        "trace_id": TRACE,
        "parent_id": hex_id(parent) if parent else None,
        "name": more.pop("name", f"{kind} {agent}"),
        "kind": kind,
        "agent": agent,
        "host": "",
        "start_ns": start * MS,
        "end_ns": None if end is None else end * MS,
        "status": "open" if end is None else "ok",
        "waits_on_person": kind in ("question", "approval"),
        "cost_usd": None,
        "input_tokens": None,
        "output_tokens": None,
        "attributes": {},
        "links": [],
    }
    fields.update(more)
    return SpanRecord(**fields)


def ids(nodes: Any) -> list[str]:
    return [NAMES[node.span.span_id] for node in nodes]


# The operator asks the manager; the manager sends to a worker and asks the operator a
# question; the worker's turn ends last.
SWARM = [
    span("a1", None, "message", "operator", 0, 0, name="message operator→manager"),
    span("b1", "a1", "turn", "manager", 10, 400, cost_usd=0.02, input_tokens=100, output_tokens=10),
    span("b2", "b1", "model", "manager", 12, 50, cost_usd=0.01, input_tokens=60, output_tokens=5),
    span("b3", "b1", "model", "manager", 300, 390, cost_usd=0.01, input_tokens=40, output_tokens=5),
    span("c1", "b1", "send", "manager", 60, 61, name="send manager→worker"),
    span("d1", "c1", "turn", "worker", 70, 900, cost_usd=0.05),
    span("d2", "d1", "tool", "worker", 80, 200, name="tool Bash"),
    span("d3", "d1", "tool", "worker", 250, 880, name="tool Read"),
    span("e1", "b1", "question", "manager", 100, 300),
]


def test_the_tree_nests_children_by_start_and_depth_first():
    rows = list(walk(build_tree(list(reversed(SWARM)), now_ns=1000 * MS)))
    assert ids(rows) == ["a1", "b1", "b2", "c1", "d1", "d2", "d3", "e1", "b3"]
    assert [row.depth for row in rows] == [0, 1, 2, 2, 3, 4, 4, 2, 2]
    assert not any(row.orphan for row in rows)


def test_finish_waits_on_children_and_the_critical_path_follows_the_latest():
    analysis = analyse(SWARM, now_ns=1000 * MS)
    by_id = {row.span.span_id: row for row in analysis.rows}
    assert by_id[hex_id("c1")].finish_ns == 900 * MS  # the send waits on the turn it woke
    assert by_id[hex_id("b1")].finish_ns == 900 * MS
    assert ids(analysis.critical_path) == ["a1", "b1", "c1", "d1", "d3"]
    assert (analysis.start_ns, analysis.finish_ns, analysis.duration_ns) == (0, 900 * MS, 900 * MS)
    assert not analysis.open


def test_the_critical_path_takes_the_later_start_on_a_tie():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("b", "a", "turn", "m", 1, 10),
        span("c", "a", "turn", "w", 5, 10),
    ]
    assert ids(critical_path(build_tree(spans, now_ns=0))) == ["a", "c"]


def test_cost_per_branch_and_agent_counts_a_model_request_once():
    analysis = analyse(SWARM, now_ns=1000 * MS)
    # The manager's turn carries its model requests' cost (0.02); the worker's turn 0.05.
    assert [(b.name, b.agents, round(b.cost_usd, 6)) for b in analysis.branches] == [
        ("turn manager", ("manager", "worker"), 0.07)
    ]
    assert (analysis.branches[0].input_tokens, analysis.branches[0].output_tokens) == (100, 10)
    assert {agent: round(cost, 6) for agent, cost in analysis.cost_by_agent.items()} == {
        "manager": 0.02,
        "worker": 0.05,
    }
    assert round(analysis.total_cost_usd, 6) == 0.07


def test_model_requests_add_up_when_their_turn_has_no_cost_of_its_own():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("b", "a", "turn", "m", 1, 10),
        span("c", "b", "model", "m", 2, 4, cost_usd=0.25, input_tokens=7),
        span("d", "b", "model", "m", 5, 9, cost_usd=0.5, input_tokens=3),
        span("e", "a", "turn", "w", 1, 10, cost_usd=1.0),
    ]
    analysis = analyse(spans, now_ns=0)
    assert [(b.name, b.cost_usd, b.input_tokens) for b in analysis.branches] == [
        ("turn m", 0.75, 10),
        ("turn w", 1.0, 0),
    ]
    assert analysis.cost_by_agent == {"m": 0.75, "w": 1.0}
    assert analysis.total_cost_usd == 1.75


def test_overlapping_person_waits_count_once():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("q1", "a", "question", "m", 100, 300),
        span("q2", "a", "question", "m", 200, 400),  # overlaps q1
        span("p1", "a", "approval", "m", 400, 450),  # touches q2's end
        span("q3", "a", "question", "m", 600, 650),
        span("q4", "q3", "question", "m", 610, 620),  # inside q3
        span("t", "a", "turn", "m", 0, 700),  # not a person's time
    ]
    intervals, total = person_wait(spans, now_ns=0)
    assert intervals == [(100 * MS, 450 * MS), (600 * MS, 650 * MS)]
    assert total == 400 * MS
    assert analyse(spans, now_ns=0).person_wait_ns == 400 * MS


def test_open_spans_are_drawn_to_now():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("b", "a", "turn", "m", 10, None),
        span("q", "b", "question", "m", 20, None),
    ]
    analysis = analyse(spans, now_ns=500 * MS)
    assert analysis.open
    assert [(row.end_ns, row.open) for row in analysis.rows] == [(0, False), (500 * MS, True), (500 * MS, True)]
    assert analysis.finish_ns == 500 * MS
    assert analysis.person_wait_ns == 480 * MS
    # A clock behind the span's start never makes it negative.
    assert analyse(spans, now_ns=0).rows[1].end_ns == 10 * MS


def test_orphans_hang_under_the_root_marked():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("b", "a", "turn", "m", 10, 20),
        span("x", "f", "turn", "w", 5, 30),  # its parent (f) was never saved
        span("y", "x", "tool", "w", 6, 7),
    ]
    analysis = analyse(spans, now_ns=0)
    assert ids(analysis.rows) == ["a", "x", "y", "b"]
    assert [(row.depth, row.orphan) for row in analysis.rows] == [(0, False), (1, True), (2, False), (1, False)]
    assert ids(analysis.critical_path) == ["a", "x", "y"]


def test_without_a_root_orphans_are_the_top():
    spans = [span("x", "f", "turn", "w", 5, 30), span("z", "e", "turn", "m", 1, 3)]
    tops = build_tree(spans, now_ns=0)
    assert ids(tops) == ["z", "x"]
    assert all(top.orphan and top.depth == 0 for top in tops)


def test_a_cycle_is_broken_not_lost():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("p", "q", "turn", "m", 1, 5),
        span("q", "p", "tool", "m", 2, 3),
    ]
    rows = analyse(spans, now_ns=0).rows
    assert ids(rows) == ["a", "p", "q"]
    assert [(row.depth, row.orphan) for row in rows] == [(0, False), (1, True), (2, False)]


def test_links_are_kept_as_the_span_has_them():
    link = {"trace_id": "f" * 32, "span_id": "e" * 16}
    spans = [span("a", None, "message", "operator", 0, 0), span("b", "a", "turn", "m", 1, 5, links=[link])]
    assert analyse(spans, now_ns=0).rows[1].span.links == [link]


def test_an_empty_trace():
    analysis = analyse([], now_ns=7)
    assert (analysis.rows, analysis.critical_path, analysis.branches, analysis.duration_ns) == ([], [], [], 0)
    assert (analysis.person_wait_ns, analysis.total_cost_usd, analysis.open) == (0, 0, False)


def test_an_agent_whose_spans_cost_nothing_is_listed_at_zero():
    spans = [
        span("a", None, "message", "operator", 0, 0),
        span("b", "a", "turn", "m", 1, 10),
        span("c", "b", "model", "m", 1, 10, cost_usd=0.0),  # the rehearsal model
        span("d", "a", "turn", "w", 1, 10),  # no cost at all
    ]
    assert analyse(spans, now_ns=0).cost_by_agent == {"m": 0.0}
