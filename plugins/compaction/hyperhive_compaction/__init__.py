"""hyperhive-compaction: Keeps each agent's /state/notes.md small with a secondary Claude Code session."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click

from hyperhive_compaction import records, web
from hyperhive_compaction.compactor import COMPACTOR, Compactor
from hyperhive_compaction.config import CompactionSection
from hyperhive_core import check_model, hookimpl

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import Hive, Panel, Turn


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("compaction", CompactionSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("compaction", records.MIGRATIONS)


@hookimpl
async def on_startup(hive: Hive) -> None:
    settings: CompactionSection = hive.config.section("compaction")
    if settings.model is not None:
        check_model(settings.model, hive.claude.extra_models)
    hive.stash[COMPACTOR] = Compactor(hive, settings)
    await hive.stash[COMPACTOR].recover_interrupted()


@hookimpl
def hive_services(hive: Hive) -> list[Callable[..., Any]]:
    return [hive.stash[COMPACTOR].serve]


@hookimpl
async def on_turn_start(hive: Hive, agent: str, turn: Turn) -> None:
    await hive.stash[COMPACTOR].turn_started(agent)


@hookimpl
async def on_turn_end(hive: Hive, agent: str, turn: Turn) -> None:
    await hive.stash[COMPACTOR].turn_ended(agent)


async def compact_notes(hive: Hive, agent: str) -> dict[str, Any]:
    """Host command: compact ``agent``'s notes now, or once its turn ends."""
    return await hive.stash[COMPACTOR].request(agent)


async def compactions(hive: Hive, agent: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """Host command: the newest compactions of ``agent``, or the latest of each agent."""
    return await hive.stash[COMPACTOR].last(agent, limit)


@hookimpl
async def on_agent_purged(hive: Hive, agent: str) -> None:
    await hive.store.write(lambda db: records.forget(db, agent))


@hookimpl
def register_host_commands(register: Callable[..., None]) -> None:
    register("compact-notes", compact_notes)
    register("compactions", compactions)


@hookimpl
def register_slash_commands(register: Callable[..., None]) -> None:
    register("compact-notes", web.compact_notes_command, help="compact this agent's notes.md now")


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    register("/-/compaction/agents/<agent>/compact", web.compact_view, methods=("POST",))


@hookimpl
async def dashboard_panels(hive: Hive) -> list[Panel]:
    return [await web.hive_panel(hive)]


@hookimpl
async def agent_panels(hive: Hive, agent: str) -> list[Panel]:
    return [await web.agent_panel(hive, agent)]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from hyperhive_core import CliState, ask_daemon, pass_state

    @cli.command(name="compact-notes")
    @click.argument("name")
    @pass_state
    def compact_notes_command(state: CliState, name: str) -> None:
        """Compact agent NAME's notes.md now (or once its current turn ends)."""
        # No client timeout: the daemon bounds the session by [compaction] timeout_seconds.
        run = ask_daemon(state, "compact-notes", agent=name, timeout=None)
        line = web.describe_run(run)
        if run.get("outcome") not in (None, records.OK):
            raise click.ClickException(line)
        click.echo(line)
