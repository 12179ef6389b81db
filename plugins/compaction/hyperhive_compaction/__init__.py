"""hyperhive-compaction: Keeps each agent's /state/notes.md small with a secondary Claude Code session."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click

from hyperhive_compaction import records
from hyperhive_compaction.compactor import Compactor
from hyperhive_compaction.config import CompactionSection
from hyperhive_core import hookimpl

if TYPE_CHECKING:
    from hyperhive_core.harness import Turn
    from hyperhive_core.hive import Hive


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("compaction", CompactionSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("compaction", records.MIGRATIONS)


@hookimpl
async def on_startup(hive: Hive) -> None:
    hive.compaction = Compactor(hive, hive.config.section("compaction"))
    await hive.store.write(records.mark_interrupted)


@hookimpl
async def on_turn_start(hive: Hive, agent: str, turn: Turn) -> None:
    await hive.compaction.turn_started(agent)


@hookimpl
async def on_turn_end(hive: Hive, agent: str, turn: Turn) -> None:
    await hive.compaction.turn_ended(agent)


async def compact_notes(hive: Hive, agent: str) -> dict[str, Any]:
    """Host command: compact ``agent``'s notes now, or once its turn ends."""
    return await hive.compaction.request(agent)


async def compactions(hive: Hive, agent: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """Host command: the newest compactions of ``agent``, or the latest of each agent."""
    return await hive.compaction.last(agent, limit)


@hookimpl
def register_host_commands(register: Callable[..., None]) -> None:
    register("compact-notes", compact_notes)
    register("compactions", compactions)


def describe_run(run: dict[str, Any]) -> str:
    """One line about a compaction, for the CLI and the slash command."""
    agent = run["agent"]
    if run.get("queued"):
        return f"{agent} is in a turn; its notes are compacted when the turn ends"
    if run["outcome"] == records.OK:
        return f"{agent}: notes.md compacted, {run['before_bytes']} → {run['after_bytes']} bytes"
    if run["outcome"] == records.RUNNING:
        return f"{agent}: compacting notes.md ({run['before_bytes']} bytes)"
    kept = f"notes.md kept at {run['before_bytes']} bytes"
    return f"{agent}: compaction undone ({run['outcome']}), {kept}: {run['reason']}"


@hookimpl
def register_commands(cli: click.Group) -> None:
    from hyperhive_core.cli import CliState, ask_daemon, pass_state

    @cli.command(name="compact-notes")
    @click.argument("name")
    @pass_state
    def compact_notes_command(state: CliState, name: str) -> None:
        """Compact agent NAME's notes.md now (or once its current turn ends)."""
        # No client timeout: the daemon bounds the session by [compaction] timeout_seconds.
        run = ask_daemon(state, "compact-notes", agent=name, timeout=None)
        line = describe_run(run)
        if run.get("outcome") not in (None, records.OK):
            raise click.ClickException(line)
        click.echo(line)
