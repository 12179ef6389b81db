"""Core's own defaults, registered through the same hooks a third party uses."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from hyperhive_core import core_tools, host_commands
from hyperhive_core.agents import (
    AgentConfig,
    core_agent_checks,
    m003_agents,
    m008_agent_pause_reason,
    m011_agent_model_switched_at,
)
from hyperhive_core.approvals import m006_approvals, m009_approval_host
from hyperhive_core.broker import (
    BrokerSection,
    Message,
    m001_messages,
    m007_message_idempotency_keys,
    m010_message_headers,
)
from hyperhive_core.brokers import JetStreamSection, make_jetstream_broker, make_sqlite_broker
from hyperhive_core.claude import ClaudeSection
from hyperhive_core.cluster import ClusterSection
from hyperhive_core.containers.bwrap import BwrapBackend, BwrapSection
from hyperhive_core.containers.cgroups import ContainersSection, hive_cgroups
from hyperhive_core.containers.dbus_watch import UnitWatcher
from hyperhive_core.containers.nspawn import NspawnBackend, make_nspawn_backend
from hyperhive_core.containers.process import ProcessBackend
from hyperhive_core.containers.uids import AgentUids, claim_uid_range, m005_agent_uids
from hyperhive_core.events import EventsSection, m002_events
from hyperhive_core.harness import m004_turns
from hyperhive_core.hive import HiveSection
from hyperhive_core.hookspecs import Migration, Service, hookimpl

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

# Core's schema, in order; append new steps, never rename a shipped one.
CORE_MIGRATIONS = [
    m001_messages,
    m002_events,
    m003_agents,
    m004_turns,
    m005_agent_uids,
    m006_approvals,
    m007_message_idempotency_keys,
    m008_agent_pause_reason,
    m009_approval_host,
    m010_message_headers,
    m011_agent_model_switched_at,
]

# Enough of a body for the sender's live tail; the message itself has all of it.
PREVIEW_CHARS = 280


@hookimpl(trylast=True)
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("hive", HiveSection)
    register("broker", BrokerSection)
    register("jetstream", JetStreamSection)
    register("cluster", ClusterSection)
    register("events", EventsSection)
    register("claude", ClaudeSection)
    register("agents", dict[str, AgentConfig])
    register("bwrap", BwrapSection)
    register("containers", ContainersSection)


@hookimpl(trylast=True)
def register_migrations(register: Callable[[str, Iterable[Migration]], None]) -> None:
    register("core", CORE_MIGRATIONS)


@hookimpl(trylast=True)
def hive_services(hive: Hive) -> Iterable[Service]:
    services: list[Service] = [hive.broker.run_retention]
    if isinstance(hive.backend, NspawnBackend):
        # systemd owns the containers there: their unit states come over D-Bus.
        services.append(UnitWatcher(hive.container_event, is_agent=lambda name: name in hive.agents).run)
    if isinstance(hive.backend, BwrapBackend) and hive.backend.cgroups and hive.backend.cgroups.version == 1:
        # v1 has no memory.oom.group: after an OOM kill, the rest of the agent goes from here.
        services.append(hive.backend.cgroups.watch_oom)
    return services


@hookimpl(trylast=True)
async def on_shutdown(hive: Hive) -> None:
    await hive.backend.close()  # the agents' cgroups


@hookimpl(trylast=True)
def on_message(hive: Hive, message: Message) -> None:
    hive.events.publish(
        message.sender,
        "message_sent",
        id=message.id,
        to=message.recipient,
        kind=message.kind,
        preview=message.body[:PREVIEW_CHARS],
    )


@hookimpl(trylast=True)
def register_tools(register: Callable[..., None]) -> None:
    for tool, roles in core_tools.TOOLS:
        register(tool, roles=roles)


@hookimpl(trylast=True)
def register_broker_backends(register: Callable[[str, Callable[..., object]], None]) -> None:
    register("sqlite", make_sqlite_broker)
    register("jetstream", make_jetstream_broker)


@hookimpl(trylast=True)
def register_container_backends(register: Callable[[str, Callable[..., object]], None]) -> None:
    register("process", lambda hive: ProcessBackend())
    register("bwrap", make_bwrap_backend)
    register("nspawn", make_nspawn_backend)


def make_bwrap_backend(hive: Hive) -> BwrapBackend:
    section = hive.config.section("bwrap", BwrapSection)
    uids = AgentUids(hive.store, section.uid_range_start, section.uid_range_size)
    # Before anything else: a hive whose agents could share uids with a running one's never starts.
    claim = claim_uid_range(section.uid_range_start, section.uid_range_size, hive.paths.root)
    try:
        cgroups, no_limits = hive_cgroups(hive.config.section("containers", ContainersSection), hive.paths.root)
        return BwrapBackend(section, uids, hive.paths.root, cgroups, no_limits, claim=claim)
    except BaseException:
        claim.release()
        raise


@hookimpl(trylast=True)
def register_host_commands(register: Callable[..., None]) -> None:
    for name, handler in host_commands.COMMANDS.items():
        register(name, handler)


@hookimpl(trylast=True)
def validate_agent_config(agent: str, config: AgentConfig) -> list[str]:
    return core_agent_checks(agent, config)
