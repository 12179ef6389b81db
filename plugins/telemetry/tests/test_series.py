"""The maths and formats of telemetry, on known data: percentiles, since, summaries, Prometheus text."""

from __future__ import annotations

import datetime

import pytest
from hyperhive_telemetry.prometheus import render
from hyperhive_telemetry.series import BadQuery, parse_query, parse_since, percentile, series, summarise
from hyperhive_telemetry.store import Sample
from prometheus_client.parser import text_string_to_metric_families

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        # The nearest-rank examples from the usual references.
        ([15, 20, 35, 40, 50], 5, 15),
        ([15, 20, 35, 40, 50], 30, 20),
        ([15, 20, 35, 40, 50], 40, 20),
        ([15, 20, 35, 40, 50], 50, 35),
        ([15, 20, 35, 40, 50], 100, 50),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 25, 7),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 50, 8),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 75, 15),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 100, 20),
        (list(range(1, 101)), 95, 95),
        (list(range(1, 101)), 50, 50),
        (list(range(100, 0, -1)), 95, 95),  # order does not matter
        ([1, 2, 3, 4], 50, 2),
        ([7], 95, 7),
        ([4, 1], 0, 1),
    ],
)
def test_percentile_is_nearest_rank(values, p, expected):
    assert percentile(values, p) == expected


def test_percentile_edges():
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="outside 0..100"):
        percentile([1], 101)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, NOW - 3600),
        ("", NOW - 3600),
        ("90s", NOW - 90),
        ("15m", NOW - 900),
        ("2h", NOW - 7200),
        ("1.5d", NOW - 1.5 * 86400),
        ("1799990000", 1_799_990_000.0),
        ("1799990000.5", 1_799_990_000.5),
        ("2027-01-15T08:00:00Z", datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.UTC).timestamp()),
        ("2027-01-15T08:00:00", datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.UTC).timestamp()),
        ("2027-01-15T10:00:00+02:00", datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.UTC).timestamp()),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text, NOW, 3600) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "15 minutes", "-5", "nan", "15x", "2027-13-01"])
def test_bad_since_says_what_would_do(text):
    with pytest.raises(BadQuery) as caught:
        parse_since(text, NOW, 3600)
    assert str(caught.value) == (
        f"since={text!r} is not a time: give seconds since the epoch (1732270000), "
        "an ISO 8601 time (2026-11-22T10:00:00Z) or a duration back from now (15m, 2h, 7d)"
    )


def test_parse_query_filters():
    query = parse_query(
        {"since": ["10m"], "agent": ["worker,manager", "other"], "key": ["tool:*", "cost_usd"]}, NOW, 60
    )
    assert query.since == NOW - 600
    assert query.until == NOW
    assert query.agents == ("worker", "manager", "other")
    assert query.keys == ("tool:*", "cost_usd")
    assert parse_query({"key": ["*"]}, NOW, 60).keys == ()
    with pytest.raises(BadQuery, match="key='a b' is not a series key"):
        parse_query({"key": ["a b"]}, NOW, 60)
    with pytest.raises(BadQuery, match="unknown parameter 'agnet'; /api/stats takes since, agent, key and series"):
        parse_query({"agnet": ["x"]}, NOW, 60)
    assert parse_query({"series": ["0"]}, NOW, 60).with_series is False
    assert query.with_series is True
    with pytest.raises(BadQuery, match="series='no': give 1 for the points"):
        parse_query({"series": ["no"]}, NOW, 60)


def turn(agent, at, duration_ms, exit="ok", tools=(), sent=None, received=None, cost=0.01):
    samples = [
        Sample(agent, at, "turn_duration_ms", duration_ms),
        Sample(agent, at, "tool_calls", len(tools)),
        Sample(agent, at, "cost_usd", cost),
        Sample(agent, at, "permission_denials", 0),
        Sample(agent, at, f"exit:{exit}", 1),
    ]
    samples += [Sample(agent, at, f"tool:{tool}", tools.count(tool)) for tool in sorted(set(tools))]
    samples += [Sample(agent, at, f"sent:{kind}", count) for kind, count in (sent or {}).items()]
    samples += [Sample(agent, at, f"received:{kind}", count) for kind, count in (received or {}).items()]
    return samples


def test_summary_of_known_turns():
    start = NOW - 600
    samples = []
    for i, duration in enumerate([100, 200, 300, 400, 5000]):
        samples += turn(
            "worker",
            start + 60 * i,
            duration,
            exit="failure" if i == 4 else "ok",
            tools=["Read", "send"] if i % 2 else ["send"],
            sent={"operator": 1},
            received={"manager": 2},
        )
    samples += [Sample("worker", start + 10 * i, "inbox_depth", depth) for i, depth in enumerate([0, 3, 1, 0])]
    samples += [Sample("worker", start + 20, "notes_bytes", 900), Sample("worker", start + 80, "notes_bytes", 1200)]
    samples += [Sample("hive", start, "approval_queue", 2), Sample("hive", start + 30, "approval_queue", 0)]
    summary = summarise(sorted(samples, key=lambda s: s.ts), start, NOW)
    worker = summary["worker"]
    assert worker["turns"] == 5
    assert worker["turns_per_min"] == pytest.approx(0.5)  # five turns in ten minutes
    assert worker["turn_duration_ms"] == {"p50": 300, "p95": 5000}
    assert worker["tool_calls_per_turn"] == pytest.approx(7 / 5)
    assert worker["exits"] == {"failure": 1, "ok": 4}
    assert worker["tools"] == {"Read": 2, "send": 5}
    assert worker["messages_per_turn"]["sent"] == {"peer": 0.0, "operator": 1.0, "manager": 0.0, "system": 0.0}
    assert worker["messages_per_turn"]["received"]["manager"] == 2.0
    assert worker["inbox_depth"] == {"current": 0, "max": 3}
    assert worker["notes_bytes"] == 1200
    assert worker["cost_usd"] == pytest.approx(0.05)
    assert summary["hive"] == {"approval_queue": {"current": 0, "max": 2}}


def test_series_group_by_agent_and_key():
    samples = [Sample("b", 1, "k", 1), Sample("a", 2, "k", 2), Sample("b", 3, "k", 3)]
    assert series(samples) == [
        {"agent": "a", "key": "k", "points": [[2, 2]]},
        {"agent": "b", "key": "k", "points": [[1, 1], [3, 3]]},
    ]


def parse(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_parse_with_the_prometheus_parser():
    totals = [
        ("worker", "exit:ok", 4),
        ("worker", "exit:failure", 1),
        ("worker", "turn_duration_ms", 6000),
        ("worker", "tool:send", 5),
        ("worker", 'tool:odd"na\\me', 1),
        ("worker", "sent:operator", 5),
        ("worker", "received:manager", 10),
        ("worker", "cost_usd", 0.05),
        ("worker", "tool_calls", 7),
        ("worker", "permission_denials", 2),
    ]
    window = [Sample("worker", NOW - 60 * i, "turn_duration_ms", d) for i, d in enumerate([100, 200, 300, 400, 5000])]
    window += [Sample("worker", NOW - 30, "inbox_depth", 7)]
    live = [
        Sample("worker", NOW, "inbox_depth", 2),
        Sample("worker", NOW, "notes_bytes", 1200),
        Sample("worker", NOW, "seconds_since_last_turn", 12.5),
        Sample("hive", NOW, "approval_queue", 3),
    ]
    families = parse(render(totals, window, live, window_seconds=600))

    def value(family, **labels):
        [match] = [s.value for s in families[family].samples if all(s.labels.get(k) == v for k, v in labels.items())]
        return match

    assert families["hyperhive_turns"].type == "counter"
    assert value("hyperhive_turns", agent="worker", exit="ok") == 4
    assert value("hyperhive_tool_uses", agent="worker", tool='odd"na\\me') == 1
    assert value("hyperhive_messages_sent", agent="worker", **{"class": "operator"}) == 5
    assert value("hyperhive_cost_usd", agent="worker") == 0.05
    assert value("hyperhive_permission_denials", agent="worker") == 2
    duration = families["hyperhive_turn_duration_seconds"]
    assert duration.type == "summary"
    assert value("hyperhive_turn_duration_seconds", agent="worker", quantile="0.5") == 0.3
    assert value("hyperhive_turn_duration_seconds", agent="worker", quantile="0.95") == 5.0
    samples = {s.name: s.value for s in duration.samples if "quantile" not in s.labels}
    assert samples == {"hyperhive_turn_duration_seconds_sum": 6.0, "hyperhive_turn_duration_seconds_count": 5}
    assert value("hyperhive_turns_per_minute", agent="worker") == 0.5
    assert value("hyperhive_inbox_depth", agent="worker") == 2
    assert value("hyperhive_inbox_depth_max", agent="worker") == 7
    assert value("hyperhive_notes_bytes", agent="worker") == 1200
    assert value("hyperhive_seconds_since_last_turn", agent="worker") == 12.5
    assert families["hyperhive_approval_queue_length"].samples[0].value == 3


def test_metrics_of_an_empty_hive_still_parse():
    families = parse(render([], [], [Sample("hive", NOW, "approval_queue", 0)], window_seconds=600))
    assert list(families) == ["hyperhive_approval_queue_length"]
