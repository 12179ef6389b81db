"""Where the figures come from: each turn as it ends, and a sampler for the gauges.

Per turn (``on_turn_end``), keys and values:

=====================  ==============================================
``turn_duration_ms``   how long the turn took
``tool_calls``         tool calls in the turn
``cost_usd``           what the turn cost
``permission_denials`` tool calls refused (Claude Code's rules, hooks)
``exit:<kind>``        1, for ``ok``, ``compact-retry``, ``interrupted`` or ``failure``
``tool:<name>``        calls of one tool (``Read``, ``send``, …), when used
``received:<class>``   messages the turn handled, by sender class
``sent:<class>``       messages the agent sent in the turn, by recipient class
=====================  ==============================================

Classes are ``peer`` (another agent), ``operator``, ``manager`` and ``system``
(the hive's own events). Each message moved to dead-letter (``on_dead_letter``)
records ``dead_lettered`` = 1 for its recipient. The sampler records ``inbox_depth``,
``seconds_since_last_turn``, ``notes_bytes`` and ``memory_bytes`` (the agent's cgroup
usage, else its processes' PSS; 0 asleep) per agent, and ``approval_queue`` for the
agent ``hive``.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import time
from typing import TYPE_CHECKING

import trio

from hyperhive_core import OPERATOR, SYSTEM, StashKey
from hyperhive_telemetry import store
from hyperhive_telemetry.config import TelemetrySection
from hyperhive_telemetry.store import HIVE, Sample

if TYPE_CHECKING:
    from hyperhive_core import Hive, Message, Turn

log = logging.getLogger(__name__)

NOTES = "notes.md"


def party_class(name: str, manager: str) -> str:
    """``operator``, ``system``, ``manager`` or ``peer``: who is at the other end of a message."""
    if name == OPERATOR:
        return "operator"
    if name == SYSTEM:
        return "system"
    if name == manager:
        return "manager"
    return "peer"


def turn_samples(turn: Turn, sent: collections.Counter[str], at: float, manager: str) -> list[Sample]:
    """The figures of one finished turn. ``sent`` counts its outgoing messages by class."""
    result = turn.result
    figures: dict[str, float] = {
        "turn_duration_ms": turn.duration_ms,
        "tool_calls": result.tool_calls if result else 0,
        "cost_usd": turn.cost_usd,
        "permission_denials": len(result.permission_denials) if result else 0,
        f"exit:{turn.exit}": 1,
    }
    for tool, count in collections.Counter(result.tools_used if result else ()).items():
        figures[f"tool:{tool}"] = count
    for kind, count in collections.Counter(party_class(m.sender, manager) for m in turn.messages).items():
        figures[f"received:{kind}"] = count
    for kind, count in sent.items():
        figures[f"sent:{kind}"] = count
    return [Sample(turn.agent, at, key, value) for key, value in figures.items()]


def notes_bytes(hive: Hive, agent: str) -> int:
    """The size of the agent's notes.md; 0 when there is none (a symlink is not followed)."""
    try:
        info = os.lstat(hive.paths.agent_state(agent) / NOTES)
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


async def approval_queue_length(hive: Hive) -> int:
    """Approvals waiting for the operator, across all agents."""
    return len(await hive.approvals.list("pending"))


async def current_samples(hive: Hive, at: float) -> list[Sample]:
    """The gauges as they are now: what the sampler stores and /metrics serves."""
    samples = []
    agents = list(hive.agents)
    depths = await hive.broker.inbox_depths(agent.name for agent in agents)  # one question for every agent
    for agent in agents:
        samples.append(Sample(agent.name, at, "inbox_depth", depths[agent.name]))
        samples.append(Sample(agent.name, at, "notes_bytes", notes_bytes(hive, agent.name)))
        if (harness := hive.harnesses.get(agent.name)) is not None:
            samples.append(Sample(agent.name, at, "memory_bytes", await harness.memory_bytes()))
        if agent.status.last_turn_at is not None:
            samples.append(Sample(agent.name, at, "seconds_since_last_turn", max(0.0, at - agent.status.last_turn_at)))
    samples.append(Sample(HIVE, at, "approval_queue", await approval_queue_length(hive)))
    return samples


class Telemetry:
    """One per hive, in ``hive.stash[TELEMETRY]``: counts each turn's outgoing messages, runs the services."""

    def __init__(self, hive: Hive, settings: TelemetrySection) -> None:
        self.hive = hive
        self.settings = settings
        self._sent: dict[str, collections.Counter[str]] = {}

    def turn_started(self, agent: str) -> None:
        self._sent[agent] = collections.Counter()

    def message_sent(self, message: Message) -> None:
        counter = self._sent.get(message.sender)
        if counter is not None:
            counter[party_class(message.recipient, self.hive.agents.manager)] += 1

    async def turn_ended(self, agent: str, turn: Turn) -> None:
        sent = self._sent.pop(agent, collections.Counter())
        samples = turn_samples(turn, sent, time.time(), self.hive.agents.manager)
        # Telemetry may lose its last turn in a power cut: no fsync of its own.
        await self.hive.store.write(lambda db: store.record(db, samples, add_to_totals=True), durable=False)

    async def dead_lettered(self, message: Message) -> None:
        """Count a message that moved to dead-letter, for its recipient."""
        sample = Sample(message.recipient, time.time(), "dead_lettered", 1)
        await self.hive.store.write(lambda db: store.record(db, [sample], add_to_totals=True), durable=False)

    async def agent_purged(self, agent: str) -> None:
        """Forget a purged agent's figures, so stats, panels and /metrics no longer show it."""
        self._sent.pop(agent, None)
        await self.hive.store.write(lambda db: store.forget(db, agent))

    async def sample(self) -> None:
        samples = await current_samples(self.hive, time.time())
        # Not an agent purged while the gauges were read: its figures are gone for good.
        samples = [sample for sample in samples if sample.agent == HIVE or sample.agent in self.hive.agents]
        await self.hive.store.write(lambda db: store.record(db, samples), durable=False)

    async def run_sampler(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record the gauges every ``sample_interval_seconds``."""
        task_status.started()
        while True:
            await self.sample()
            await trio.sleep(self.settings.sample_interval_seconds)

    async def prune(self) -> int:
        """Delete samples older than the retention; return how many went."""
        before = time.time() - self.settings.retention_days * 86400
        deleted = 0
        while count := await self.hive.store.write(lambda db: store.prune(db, before), durable=False):
            deleted += count
        if deleted:
            log.info("telemetry: deleted %d samples older than %g days", deleted, self.settings.retention_days)
        return deleted

    async def run_retention(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delete old samples every ``retention_interval_seconds``, in chunks."""
        task_status.started()
        while True:
            await self.prune()
            await trio.sleep(self.settings.retention_interval_seconds)


TELEMETRY = StashKey[Telemetry]("telemetry")
