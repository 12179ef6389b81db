"""hyperhive-nap: An agent parks itself until a chosen time; messages queue meanwhile.

The ``nap(seconds)`` tool records a wake time and tells the model to end its turn;
``before_recv`` then holds the agent's loop (state ``napping``, detail the wake
time) until that time, ``/cancel``, or ``hyperhive wake NAME``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click

from hyperhive_core import Panel, StashKey, ToolContext, hookimpl, iso_utc
from hyperhive_nap.naps import Naps, NapSection, m001_naps
from hyperhive_nap.web import WAKE_ROUTE, nap_panel

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import Hive

__all__ = ["NAPS", "NapSection", "Naps"]

NAPS = StashKey[Naps]("nap")
"""The hive's naps in ``hive.stash``, created at startup."""


def naps_of(hive: Hive) -> Naps:
    """The hive's naps, created at startup."""
    return hive.stash[NAPS]


async def nap(ctx: ToolContext, seconds: int) -> str:
    """Sleep: your turn ends now and you wake no sooner than `seconds` from now.
    Messages that arrive meanwhile wait and reach you together when you wake;
    the operator can wake you early.

    :param seconds: how long to sleep, from 1 up to the hive's limit ([nap] max_seconds, an hour by default).
    """
    wake_at = await naps_of(ctx.hive).start(ctx.agent, seconds)
    return (
        f"napping until {iso_utc(wake_at)} ({seconds}s). End your turn now: call no more tools, "
        "just finish with a short final message. Messages that arrive meanwhile will wait for you."
    )


async def wake(hive: Hive, agent: str) -> dict[str, Any]:
    """End ``agent``'s nap now: the host command ``wake``, and ``POST /-/nap/agents/<agent>/wake``."""
    return {"agent": agent, "woken": await naps_of(hive).wake(agent)}


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("nap", NapSection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("nap", [m001_naps])


@hookimpl
async def on_startup(hive: Hive) -> None:
    hive.stash[NAPS] = await Naps.load(hive)


@hookimpl
def register_tools(register: Callable[..., None]) -> None:
    register(nap, roles=("agent", "manager"))


@hookimpl
async def before_recv(hive: Hive, agent: str) -> None:
    await naps_of(hive).wait(agent)


@hookimpl
async def on_cancel(hive: Hive, agent: str) -> None:
    await naps_of(hive).wake(agent)


@hookimpl
def register_host_commands(register: Callable[..., None]) -> None:
    register("wake", wake)


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    register(WAKE_ROUTE, wake, methods=("POST",))


@hookimpl
async def agent_panels(hive: Hive, agent: str) -> list[Panel]:
    return [nap_panel(agent, naps_of(hive).wake_time(agent), await hive.broker.inbox_depth(agent))]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from hyperhive_core import CliState, ask_daemon, pass_state

    @cli.command(name="wake")
    @click.argument("name")
    @pass_state
    def wake_command(state: CliState, name: str) -> None:
        """End agent NAME's nap now; its queued messages are handled next."""
        woken = ask_daemon(state, "wake", agent=name)["woken"]
        click.echo(f"woke {name}" if woken else f"{name} was not napping")
