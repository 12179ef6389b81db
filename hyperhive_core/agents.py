"""The hive's agents: who exists, their config, and their authoritative live state.

The daemon holds each agent's state machine (``idle``, ``thinking``, ``compacting``,
``napping``, ``asleep``, each with a detail, plus the flags ``paused``, ``failed`` and
``stopped``). The dashboard and CLI render it; nothing derives it from events.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from hyperhive_core.broker import RecipientDirectory
from hyperhive_core.config import build_section, extra_tables, option
from hyperhive_core.containers.cgroups import LIMIT_KEYS, limit_problems
from hyperhive_core.egress import egress_problems
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.models import InvalidModel, check_model
from hyperhive_core.names import OPERATOR, InvalidName, check_agent_name
from hyperhive_core.plugins import HivePluginManager, collect

if TYPE_CHECKING:
    from hyperhive_core.containers import ContainerSpec
    from hyperhive_core.events import EventBus
    from hyperhive_core.store import Store

log = logging.getLogger(__name__)

MANAGER = "manager"
AGENT = "agent"


@dataclass
class AgentConfig:
    """One agent's settings: [agents.NAME] in hyperhive.toml, or its agent.toml."""

    model: str | None = option(None, help="Model for this agent. Default: [claude] model.")
    instructions: str = option("", help="What this agent is for; added to its system prompt.")
    allowed_recipients: list[str] = option(
        [], help="Agents it may message, besides the operator and the manager (who may message anyone)."
    )
    # Resource caps: in agent.toml too, since the operator approves every change to it.
    memory_max_mb: int | None = option(
        None, help="Hard memory cap in MiB (0: none). Default: [containers] memory_max_mb."
    )
    memory_high_mb: int | None = option(
        None, help="Soft memory cap in MiB (0: none). Default: [containers] memory_high_mb."
    )
    pids_max: int | None = option(None, help="Process and thread cap (0: none). Default: [containers] pids_max.")
    cpu_weight: int | None = option(None, help="CPU share, 1 to 10000. Default: [containers] cpu_weight.")
    tmp_size_mb: int | None = option(
        None, help="Size of each sandbox's /tmp in MiB (0: the kernel's default). Default: [containers] tmp_size_mb."
    )
    recycle_rss_mb: int | None = option(
        None,
        help="Restart its Claude Code between turns (resuming the session) once the process\n"
        "tree's RSS passes this many MiB (0: never). Default: [claude] recycle_rss_mb.",
    )
    # Like the caps, in agent.toml too: a change reaches the agent only once the operator approves it.
    egress: list[str] = option(
        [],
        help='What it may connect to besides the model API, as "host:port" entries (no wildcards),\n'
        "through the hive's proxy; everything else is refused. Needs the bwrap or nspawn backend.",
    )
    sections: dict[str, Any] = extra_tables(
        help="Plugin sections follow as sub-tables, e.g. [agents.NAME.allowlist]; each plugin checks its own."
    )

    def section(self, name: str, default: Any = None) -> Any:
        """A plugin's section of this agent's config (a dataclass once checked), or ``default``."""
        return self.sections.get(name, default)

    def limit_overrides(self) -> dict[str, int | None]:
        """The resource caps this agent sets itself (``None``: the hive's)."""
        return {key: getattr(self, key) for key in LIMIT_KEYS}


def check_agent_config(
    pm: HivePluginManager, name: str, config: AgentConfig, where: str, *, extra_models: Collection[str] = ()
) -> AgentConfig:
    """Check the model, type the plugin sections and run every ``validate_agent_config``; return the checked config.

    :param where: the file (and table) the config came from, quoted in errors.
    :param extra_models: ``[claude] extra_models``, the model names allowed besides the known ones.
    :raises ConfigError: one sentence per problem, all of them at once.
    """
    schemas = collect(pm, "register_agent_sections", "agent config section", lambda key, schema: (key, schema))
    problems = []
    if config.model is not None:
        try:
            check_model(config.model, extra_models)
        except InvalidModel as exc:
            problems.append(str(exc))
    for key in sorted(set(config.sections) - set(schemas)):
        known = ", ".join(f"[{known}]" for known in sorted(schemas)) or "none"
        problems.append(f"unknown section [{key}] (sections plugins read: {known})")
    sections = {}
    for key, raw in config.sections.items():
        if key in schemas and not isinstance(raw, schemas[key]):
            try:
                sections[key] = build_section(schemas[key], raw, key, Path(where))
            except ConfigError as exc:
                problems.append(str(exc).removeprefix(f"{where}: "))
        else:
            sections[key] = raw
    checked = dataclasses.replace(config, sections=sections)
    if not problems:
        for found in pm.hook.validate_agent_config(agent=name, config=checked):
            problems.extend(found or ())
    if problems:
        raise ConfigError(f"{where}: agent {name!r} has an invalid config: " + "; ".join(problems))
    return checked


class State(enum.StrEnum):
    IDLE = "idle"
    THINKING = "thinking"
    COMPACTING = "compacting"
    NAPPING = "napping"
    ASLEEP = "asleep"
    """Idle, with its Claude Code process and container released; the next message resumes the session."""


class UnknownAgent(HyperhiveError):
    """No agent has that name."""


@dataclass
class AgentStatus:
    """An agent's live state: what the dashboard's badge and model status show."""

    state: State = State.IDLE
    detail: str = ""
    since: float = field(default_factory=time.time)
    paused: bool = False
    pause_reason: str = ""
    spend_cap_lifted_on: str | None = None
    """The UTC day (``YYYY-MM-DD``) the operator lifted the daily spend cap by resuming."""
    failed: bool = False
    stopped: bool = False
    model: str = ""
    queued_model: str | None = None
    model_switched_at: float | None = None
    last_turn_ms: int | None = None
    last_turn_at: float | None = None


# The live state's fields: plain values, copied as they are (asdict's deep copy costs more than the rest of a snapshot).
_STATUS_FIELDS = tuple(each.name for each in dataclasses.fields(AgentStatus))


@dataclass
class Agent:
    name: str
    role: str
    config: AgentConfig
    status: AgentStatus = field(default_factory=AgentStatus)
    session_id: str | None = None
    # What a listing of every agent derives from ``config``, made once: a changed config comes
    # with a new Agent (a rebuild); the view is checked against its config besides.
    _config_view: tuple[AgentConfig, dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)
    listed_spec: ContainerSpec | None = field(default=None, init=False, repr=False, compare=False)
    """Its container spec as the listing hands it to ``backend.limits``: kept by ``Hive.listed_spec``."""

    @property
    def is_manager(self) -> bool:
        return self.role == MANAGER

    def snapshot(self) -> dict[str, Any]:
        """The JSON-able view served to the dashboard and the host socket.

        Its ``config`` is shared by every snapshot of this config: read it, never change it.
        """
        status = self.status
        live = {key: getattr(status, key) for key in _STATUS_FIELDS}
        return {"name": self.name, "role": self.role, **live, "config": self.config_view()}

    def config_view(self) -> dict[str, Any]:
        """The config as plain JSON-able values, made again only once the config is another."""
        view = self._config_view
        if view is None or view[0] is not self.config:
            view = self._config_view = (self.config, asdict(self.config))
        return view[1]


def core_agent_checks(agent: str, config: AgentConfig) -> list[str]:
    """Core's own checks of an agent config (registered as a ``validate_agent_config``)."""
    problems = []
    for recipient in config.allowed_recipients:
        try:
            check_agent_name(recipient)
        except InvalidName as exc:
            problems.append(f"allowed_recipients: {exc}")
    problems += limit_problems(**config.limit_overrides())
    if config.recycle_rss_mb is not None and config.recycle_rss_mb < 0:
        problems.append(f"recycle_rss_mb must be 0 (never) or a size in MiB, not {config.recycle_rss_mb}")
    problems += egress_problems(config.egress)
    return problems


class Agents:
    """The registry of live agents; also the broker's recipient policy."""

    def __init__(self, store: Store, events: EventBus, directory: RecipientDirectory, manager: str) -> None:
        self.store = store
        self.events = events
        self.directory = directory
        self.manager = check_agent_name(manager)
        self._agents: dict[str, Agent] = {}
        self._asleep: set[str] = set()

    def __iter__(self) -> Iterator[Agent]:
        return iter(sorted(self._agents.values(), key=lambda agent: (not agent.is_manager, agent.name)))

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def get(self, name: str) -> Agent:
        try:
            return self._agents[name]
        except KeyError:
            if name in self.directory.remote:
                raise UnknownAgent(
                    f"agent {name!r} runs on another host of the hive, not this one; "
                    "use that host's dashboard or CLI (`hyperhive agents` says which host)"
                ) from None
            known = ", ".join(sorted(self._agents)) or "none"
            elsewhere = sorted(self.directory.remote - self._agents.keys())
            if elsewhere:
                known += f"; on other hosts: {', '.join(elsewhere)}"
            raise UnknownAgent(f"no agent named {name!r}; known agents: {known}") from None

    async def add(
        self, name: str, config: AgentConfig, default_model: str, origin: str, extra_models: Collection[str] = ()
    ) -> Agent:
        """Register an agent (and remember it, with its config); it may now send and receive.

        :param origin: ``config`` (declared in hyperhive.toml), ``applied`` (spawned
            with config repos; restarted from its applied repo) or ``spawn`` (added at
            run time without repos, restarted from the stored config).
        :param extra_models: ``[claude] extra_models``: the operator's stored model
            override must still be allowed, or the agent runs its configured model.
        """
        check_agent_name(name)
        role = MANAGER if name == self.manager else AGENT
        row = await self.store.write(lambda db: _upsert(db, name, role, origin, config))
        agent = Agent(name, role, config, session_id=row.get("session_id"))
        agent.status.paused = bool(row.get("paused"))
        agent.status.pause_reason = row.get("pause_reason") or ""
        agent.status.spend_cap_lifted_on = row.get("spend_cap_lifted_on")
        # What the dashboard shows of its past outlives a restart or rebuild, as its state does.
        agent.status.last_turn_ms, agent.status.last_turn_at = await self.store.read(partial(last_turn, name=name))
        override = row.get("model_override")
        if override:
            try:
                check_model(override, extra_models)
            except InvalidModel as exc:
                log.warning("%s: dropping the model the operator chose earlier: %s", name, exc)
                override = None
                await self.remember(name, model_override=None)
        agent.status.model = override or config.model or default_model
        agent.status.model_switched_at = row.get("model_switched_at") if override else None  # the operator's switch
        self._agents[name] = agent
        # The manager may message anyone; others the operator, the manager and their list.
        may_message = None if agent.is_manager else {self.manager, *config.allowed_recipients}
        self.directory.add(name, may_message=may_message)
        return agent

    def remove(self, name: str) -> None:
        """Forget a live agent: it no longer sends or receives."""
        self._agents.pop(name, None)
        self._asleep.discard(name)
        self.directory.remove(name)

    async def stored(self) -> dict[str, dict[str, Any]]:
        """Every agent the store remembers, live or kept, by name."""
        return await self.store.read(lambda db: {row["name"]: row for row in db.table("agents").rows})

    def peers(self, name: str) -> list[str]:
        """Who ``name`` may message."""
        agent = self.get(name)
        everyone = {*self._agents, *self.directory.remote}  # the other hosts' agents too
        if agent.is_manager:
            return [OPERATOR, *(other for other in sorted(everyone) if other != name)]
        allowed = {self.manager, *agent.config.allowed_recipients} & everyone
        return [OPERATOR, *sorted(allowed - {name})]

    def set_state(self, name: str, state: State, detail: str = "") -> None:
        """Move the state machine, and tell every subscriber. An asleep agent shows ``asleep`` for ``idle``."""
        status = self.get(name).status
        if state is State.IDLE and name in self._asleep:
            state = State.ASLEEP
        if (status.state, status.detail) == (state, detail):
            return
        status.state, status.detail, status.since = state, detail, time.time()
        self.publish_status(name)

    def set_asleep(self, name: str, asleep: bool) -> None:
        """Whether ``name``'s Claude Code process and container are released. An idle agent
        shows it at once; a napping one once its nap ends, a busy one once its turn does."""
        status = self.get(name).status
        if asleep:
            self._asleep.add(name)
            if status.state is State.IDLE:
                self.set_state(name, State.ASLEEP)
        else:
            self._asleep.discard(name)
            if status.state is State.ASLEEP:
                self.set_state(name, State.IDLE)

    def publish_status(self, name: str) -> None:
        status = self.get(name).status
        self.events.publish(
            name,
            "state_change",
            state=status.state.value,
            detail=status.detail,
            paused=status.paused,
            pause_reason=status.pause_reason,
            failed=status.failed,
            stopped=status.stopped,
        )

    async def remember(self, name: str, **columns: Any) -> None:
        """Persist per-agent facts that outlive the daemon (session id, model, paused and why)."""
        await self.store.write(lambda db: db.table("agents").update(name, columns))


def _upsert(db: sqlite_utils.Database, name: str, role: str, origin: str, config: AgentConfig) -> dict[str, Any]:
    table = db.table("agents")
    rows = list(table.rows_where("name = ?", [name]))
    columns = {"role": role, "origin": origin, "config_json": config_json(config), "destroyed_at": None}
    if rows:
        table.update(name, columns)
        return rows[0]
    table.insert({"name": name, "created_at": time.time(), **columns})
    return {}


def last_turn(db: sqlite_utils.Database, name: str) -> tuple[int | None, float | None]:
    """How long ``name``'s latest recorded turn took (ms) and when it ended; Nones before its first."""
    row = db.execute(
        "SELECT duration_ms, started_at FROM turns WHERE agent = ? ORDER BY started_at DESC LIMIT 1", [name]
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1] + row[0] / 1000)


def config_json(config: AgentConfig) -> str:
    """An agent config as stored: plain JSON, plugin sections as their tables."""
    return json.dumps(asdict(config))


def config_from_json(text: str) -> AgentConfig:
    return AgentConfig(**json.loads(text))


def m003_agents(db: sqlite_utils.Database) -> None:
    db.table("agents").create(
        {
            "name": str,
            "role": str,
            "created_at": float,
            "destroyed_at": float,
            "applied_sha": str,
            "model_override": str,
            "paused": int,
            "session_id": str,
            "origin": str,
            "config_json": str,
        },
        pk="name",
        not_null={"role", "created_at"},
        defaults={"paused": 0},
    )


def m008_agent_pause_reason(db: sqlite_utils.Database) -> None:
    """Why an agent is paused, and the day the operator lifted its spend cap: both outlive a restart."""
    db.table("agents").add_column("pause_reason", str)
    db.table("agents").add_column("spend_cap_lifted_on", str)


def m011_agent_model_switched_at(db: sqlite_utils.Database) -> None:
    """When the operator's last model switch took effect: the agent page shows it after a restart too."""
    db.table("agents").add_column("model_switched_at", float)
