"""The running hive: what the daemon hands to plugins and what operator commands act on."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core.agents import AgentConfig, Agents, State
from hyperhive_core.broker import Broker, BrokerSection, Message, RecipientDirectory
from hyperhive_core.claude import ClaudeSection, find_cli
from hyperhive_core.config import Config, option
from hyperhive_core.containers import ContainerBackend, ContainerSpec, collect_backends
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.events import EventBus, EventsSection
from hyperhive_core.mcp_surface import AgentSockets
from hyperhive_core.names import SYSTEM
from hyperhive_core.paths import StatePaths
from hyperhive_core.plugins import HivePluginManager, await_all
from hyperhive_core.store import Store
from hyperhive_core.tools import collect_tools

if TYPE_CHECKING:
    from hyperhive_core.harness import Harness
    from hyperhive_core.rehearsal import RehearsalServer

log = logging.getLogger(__name__)


@dataclass
class HiveSection:
    """The hive as a whole."""

    state_dir: Path | None = option(
        None,
        help="Where the database, agent state and sockets live.\n"
        "Default: /var/lib/hyperhive as root, else ~/.local/share/hyperhive.",
    )
    plugins: list[str] | None = option(
        None,
        help="Plugins to load, by entry-point name. Default: every installed plugin.\n"
        "The HYPERHIVE_LOAD_PLUGINS environment variable overrides this.",
    )
    manager: str = option("manager", help="The manager agent's name; the hive always has one.")
    container_backend: str = option(
        "bwrap", help="Where agents run: bwrap (default), nspawn, or process (no isolation)."
    )
    admin_group: str = option("", help="Group allowed to use the host socket (mode 0660). Empty: the daemon's own.")


class Hive:
    """Config, plugins, store, broker, events, agents, tools, containers: one per daemon."""

    def __init__(self, config: Config, pm: HivePluginManager, store: Store, paths: StatePaths) -> None:
        self.config = config
        self.pm = pm
        self.store = store
        self.paths = paths
        self.settings: HiveSection = config.section("hive", HiveSection)
        self.claude: ClaudeSection = config.section("claude", ClaudeSection)
        self.events = EventBus(store, config.section("events", EventsSection))
        directory = RecipientDirectory()
        self.broker = Broker(
            store, config.section("broker", BrokerSection), policy=directory, on_commit=self._message_committed
        )
        self.agents = Agents(store, self.events, directory, self.settings.manager)
        self.surface = AgentSockets(self, collect_tools(pm))
        self.backend = make_backend(self)
        self.harnesses: dict[str, Harness] = {}
        self.rehearsal: RehearsalServer | None = None
        self.agent_nursery: trio.Nursery | None = None
        """Where agents' turn loops run; set by the daemon once it serves."""
        self._claude_cli: Path | None = None

    @property
    def claude_cli(self) -> Path:
        if self._claude_cli is None:
            self._claude_cli = find_cli(self.claude.cli)
        return self._claude_cli

    # -- per-agent facts ---------------------------------------------------------

    def container_spec(self, name: str) -> ContainerSpec:
        return ContainerSpec(
            agent=name,
            role=self.agents.get(name).role,
            state_dir=self.paths.agent_state(name),
            socket_dir=self.paths.agent_run(name),
        )

    def session_env(self, name: str, home: Path) -> dict[str, str]:
        """The Claude Code process's environment: the model endpoint, and no phoning home."""
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # List the hive's tools up front instead of behind the CLI's tool search.
            "ENABLE_TOOL_SEARCH": "false",
            "CLAUDE_CODE_MAX_RETRIES": str(self.claude.api_retries),
        }
        # A TLS-intercepting proxy's CA, when the host needs one to reach the API.
        if os.environ.get("NODE_EXTRA_CA_CERTS"):
            env["NODE_EXTRA_CA_CERTS"] = os.environ["NODE_EXTRA_CA_CERTS"]
        if self.rehearsal is not None:
            env |= self.rehearsal.env_for(name)
        else:
            for key in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
                if os.environ.get(key):
                    env[key] = os.environ[key]
            if self.claude.base_url:
                env["ANTHROPIC_BASE_URL"] = self.claude.base_url
        return env

    # -- operator controls ---------------------------------------------------------

    async def add_agent(self, name: str, config: AgentConfig) -> None:
        """Register an agent, open its socket, and start its supervised turn loop.

        ``config`` has been through ``check_agent_config``.
        """
        from hyperhive_core.harness import Harness, supervise_agent

        agent = await self.agents.add(name, config, self.claude.model)
        self.paths.agent_state(name).mkdir(parents=True, exist_ok=True, mode=0o700)
        spec = self.container_spec(name)
        await self.backend.create(spec)
        await self.surface.open(name, agent.role, spec.socket_dir / "agent.sock")
        harness = self.harnesses[name] = Harness(self, name)
        assert self.agent_nursery is not None, "agents start once the daemon serves"
        await self.agent_nursery.start(supervise_agent, self, harness)

    async def pause(self, name: str, reason: str = "paused by the operator") -> None:
        status = self.agents.get(name).status
        status.paused, status.pause_reason = True, reason
        await self.agents.remember(name, paused=1)
        self.events.publish(name, "note", text=f"paused: {reason}")
        self.agents.publish_status(name)

    async def resume(self, name: str) -> None:
        status = self.agents.get(name).status
        harness = self.harnesses.get(name)
        if harness is not None:
            harness.resume()
        status.paused, status.pause_reason, status.failed = False, "", False
        await self.agents.remember(name, paused=0)
        self.agents.publish_status(name)

    async def cancel(self, name: str) -> bool:
        """Interrupt ``name``'s current turn, and let ``on_cancel`` plugins let go (end a nap).

        :return: whether a turn was interrupted.
        """
        self.agents.get(name)
        harness = self.harnesses.get(name)
        interrupted = bool(harness and await harness.cancel())
        await await_all(self.pm.hook.on_cancel(hive=self, agent=name))
        return interrupted

    async def set_model(self, name: str, model: str) -> dict[str, Any]:
        """Switch ``name`` to ``model`` once its current turn ends; return its model status."""
        agent = self.agents.get(name)
        if not model or not model.strip() or any(ch.isspace() for ch in model):
            raise HyperhiveError(f"model name {model!r} is not valid; give one word, like 'haiku' or 'sonnet'")
        status = agent.status
        if model == status.model:
            status.queued_model = None
        elif status.state in (State.THINKING, State.COMPACTING):
            status.queued_model = model
        else:
            status.queued_model = model
            harness = self.harnesses.get(name)
            if harness is not None:
                await harness.apply_queued_model()
        await self.agents.remember(name, model_override=model)
        self.agents.publish_status(name)
        return {"model": status.model, "queued": status.queued_model, "switched_at": status.model_switched_at}

    async def notify(self, recipient: str, event: str, **fields: Any) -> Message:
        """Send a hive event (``approval_resolved``, ``container_crash``, …) to an inbox."""
        return await self.broker.send(SYSTEM, recipient, json.dumps({"event": event, **fields}), kind="event")

    async def _message_committed(self, message: Message) -> None:
        """Run the ``on_message`` hooks; a failing one is reported, the message stays sent."""
        try:
            await await_all(self.pm.hook.on_message(hive=self, message=message))
        except Exception as exc:
            log.exception("an on_message hook failed for message %d", message.id)
            self.events.publish(SYSTEM, "error", where="on_message", message_id=message.id, error=repr(exc))


def make_backend(hive: Hive) -> ContainerBackend:
    """The backend ``[hive] container_backend`` names, from those plugins registered."""
    backends = collect_backends(hive.pm)
    name = hive.settings.container_backend
    if name not in backends:
        raise ConfigError(
            f"{hive.config.path}: hive.container_backend = {name!r} is not available; "
            f"registered backends: {', '.join(sorted(backends))}"
        )
    return backends[name](hive)
