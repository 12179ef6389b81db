"""Slash commands on the agent page's input line: ``/model sonnet``, ``/cancel``, and plugins' own."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from hyperhive_core import HyperhiveError, PluginError, State, UnknownAgent, await_all, collect, operator_actions

if TYPE_CHECKING:
    from hyperhive_core import Hive

COMMAND_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")


@dataclass(frozen=True)
class SlashCommand:
    name: str
    handler: Callable[..., Any]
    help: str
    plugin: str


SlashCommands = dict[str, SlashCommand]


def collect_slash_commands(pm: pluggy.PluginManager) -> SlashCommands:
    """Every command from ``register_slash_commands``; a name two plugins claim is an error."""

    def adapt(name: str, handler: Callable[..., Any], help: str = "") -> tuple[str, Any]:
        if not COMMAND_NAME.fullmatch(name):
            raise PluginError(f"slash command {name!r} is not a valid name: lowercase letters, digits and '-'")
        return name, (handler, help)

    registry = collect(pm, "register_slash_commands", "slash command", adapt)
    return {name: SlashCommand(name, registry[name][0], registry[name][1], registry.owners[name]) for name in registry}


async def run_slash_command(
    hive: Hive, commands: SlashCommands, agent: str, line: str, host: str | None = None
) -> dict[str, str]:
    """Run ``/name args`` for ``agent``; return the command's name and its answer in words.

    :param host: the other host that runs ``agent``, if another does: a command that needs the
        agent's local state, rather than a host command that goes there, cannot run here.
    """
    name, _, args = line.strip().removeprefix("/").partition(" ")
    command = commands.get(name)
    if not line.strip().startswith("/") or command is None:
        known = ", ".join(f"/{known}" for known in sorted(commands))
        raise HyperhiveError(
            f"unknown command {line.strip().split(' ')[0]!r}; the commands are {known} (/help says what each does)"
        )
    if host is None:
        hive.agents.get(agent)
    try:
        (answer,) = await await_all([command.handler(hive, agent, args.strip())])
    except UnknownAgent as exc:
        if host is None:
            raise
        raise HyperhiveError(
            f"/{name} needs {agent}'s own state, and {agent} runs on host {host!r}: "
            f"use /{name} on that host's dashboard"
        ) from exc
    return {"command": name, "text": str(answer) if answer is not None else f"/{name}: done"}


async def live_status(hive: Hive, agent: str) -> dict[str, Any]:
    """The agent's live status, asked of the host that runs it when that is another one."""
    if agent in hive.agents:
        return hive.agents.get(agent).snapshot()
    return await operator_actions.agent(hive, agent)


async def model_command(hive: Hive, agent: str, args: str) -> str:
    """``/model NAME``: switch models once the current turn ends; bare ``/model`` shows the status."""
    if not args:
        status = await live_status(hive, agent)
        queued = f", switching to {status['queued_model']} after this turn" if status["queued_model"] else ""
        return f"model {status['model']}{queued}"
    result = await operator_actions.model(hive, agent, args)
    if result["queued"]:
        return f"model {result['queued']} queued: {agent} switches when its turn ends (now {result['model']})"
    return f"model is now {result['model']}"


async def cancel_command(hive: Hive, agent: str, args: str) -> str:
    """``/cancel``: interrupt the turn, or end a nap."""
    if args:
        raise HyperhiveError("/cancel takes no arguments")
    state = (await live_status(hive, agent))["state"]
    if (await operator_actions.cancel(hive, agent))["cancelled"]:
        return "turn cancelled; its messages wait for the next turn"
    if state == State.NAPPING:
        return f"nap over: {agent} wakes now"
    return f"nothing to cancel: {agent} is {state}"


BUILTIN_COMMANDS = {
    "model": (model_command, "/model NAME: switch model when the turn ends; /model alone shows it"),
    "cancel": (cancel_command, "/cancel: interrupt the turn, or end a nap"),
}
