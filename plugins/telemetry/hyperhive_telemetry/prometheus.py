"""``GET /metrics``: the same figures in the Prometheus text exposition format (0.0.4).

Counters come from the all-time totals, so they only grow; the turn-duration
quantiles, turns per minute and the inbox maximum are over the configured window;
the other gauges are read live at scrape time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hyperhive_telemetry.series import percentile
from hyperhive_telemetry.store import HIVE, Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Per-turn keys → (family, help, label for what follows the ':' or None).
COUNTERS = {
    "exit:": ("hyperhive_turns_total", "Turns an agent finished, by how they ended.", "exit"),
    "tool:": ("hyperhive_tool_uses_total", "Tool calls, by tool.", "tool"),
    "sent:": ("hyperhive_messages_sent_total", "Messages an agent sent, by recipient class.", "class"),
    "received:": ("hyperhive_messages_received_total", "Messages an agent's turns handled, by sender class.", "class"),
    "tool_calls": ("hyperhive_tool_calls_total", "Tool calls, all tools.", None),
    "cost_usd": ("hyperhive_cost_usd_total", "Model spend in US dollars.", None),
    "permission_denials": ("hyperhive_permission_denials_total", "Tool calls refused by permission rules.", None),
    "dead_lettered": (
        "hyperhive_messages_dead_lettered_total",
        "Messages to an agent moved to dead-letter after [broker] max_attempts deliveries without an ack.",
        None,
    ),
}
GAUGES = {
    "inbox_depth": ("hyperhive_inbox_depth", "Messages waiting for an agent (queued or leased)."),
    "seconds_since_last_turn": ("hyperhive_seconds_since_last_turn", "Seconds since the agent's last turn ended."),
    "notes_bytes": ("hyperhive_notes_bytes", "Size of the agent's /state/notes.md."),
    "memory_bytes": (
        "hyperhive_memory_bytes",
        "Memory an agent holds: its cgroup's usage, else its processes' PSS; 0 while asleep.",
    ),
}


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((self.name + suffix, labels, value))


def render(
    totals: Iterable[tuple[str, str, float]], window: Sequence[Sample], live: Sequence[Sample], window_seconds: float
) -> str:
    """The exposition text.

    :param totals: ``(agent, key, all-time sum)`` of the per-turn figures.
    :param window: samples of ``turn_duration_ms`` and ``inbox_depth`` within the window.
    :param live: the gauges now (``collect.current_samples``).
    """
    families: dict[str, Family] = {}

    def family(name: str, kind: str, help_text: str) -> Family:
        return families.setdefault(name, Family(name, kind, help_text))

    durations_ms: dict[str, float] = defaultdict(float)
    turns: dict[str, float] = defaultdict(float)
    for agent, key, value in totals:
        if key == "turn_duration_ms":
            durations_ms[agent] += value
            continue
        for prefix, (name, help_text, label) in COUNTERS.items():
            if label and key.startswith(prefix):
                family(name, "counter", help_text).add(value, agent=agent, **{label: key.removeprefix(prefix)})
            elif not label and key == prefix:
                family(name, "counter", help_text).add(value, agent=agent)
        if key.startswith("exit:"):
            turns[agent] += value

    window_durations: dict[str, list[float]] = defaultdict(list)
    window_inbox: dict[str, list[float]] = defaultdict(list)
    for sample in window:
        if sample.key == "turn_duration_ms":
            window_durations[sample.agent].append(sample.value)
        elif sample.key == "inbox_depth":
            window_inbox[sample.agent].append(sample.value)

    duration = family(
        "hyperhive_turn_duration_seconds",
        "summary",
        f"Turn duration; quantiles over the last {window_seconds:g}s (nearest rank), sum and count all-time.",
    )
    rate = family("hyperhive_turns_per_minute", "gauge", f"Turns per minute over the last {window_seconds:g}s.")
    for agent in sorted(set(turns) | set(window_durations)):
        for quantile in (0.5, 0.95):
            ms = percentile(window_durations[agent], quantile * 100)
            if ms is not None:
                duration.add(ms / 1000, agent=agent, quantile=str(quantile))
        duration.add(durations_ms[agent] / 1000, "_sum", agent=agent)
        duration.add(turns[agent], "_count", agent=agent)
        rate.add(len(window_durations[agent]) / (window_seconds / 60), agent=agent)

    inbox_max = family(
        "hyperhive_inbox_depth_max", "gauge", f"Most messages waiting for an agent over the last {window_seconds:g}s."
    )
    for sample in live:
        if sample.agent == HIVE and sample.key == "approval_queue":
            family("hyperhive_approval_queue_length", "gauge", "Approvals waiting for the operator.").add(sample.value)
        elif sample.key in GAUGES:
            family(*_gauge(sample.key)).add(sample.value, agent=sample.agent)
        if sample.key == "inbox_depth":
            inbox_max.add(max([*window_inbox[sample.agent], sample.value]), agent=sample.agent)
    return "".join(_render_family(f) for f in families.values() if f.samples)


def _gauge(key: str) -> tuple[str, str, str]:
    name, help_text = GAUGES[key]
    return name, "gauge", help_text


def _render_family(family: Family) -> str:
    lines = [f"# HELP {family.name} {_escape_help(family.help)}", f"# TYPE {family.name} {family.kind}"]
    for sample_name, labels, value in family.samples:
        rendered = ",".join(f'{key}="{_escape_label(text)}"' for key, text in labels.items())
        lines.append(f"{sample_name}{{{rendered}}} {_number(value)}" if rendered else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))
