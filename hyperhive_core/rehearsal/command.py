"""``hyperhive rehearse``: run the rehearsal model on its own."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hyperhive_core.errors import HyperhiveError

if TYPE_CHECKING:
    from hyperhive_core.rehearsal.server import RehearsalServer


@click.command()
@click.argument("scenario", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on; 0 picks a free one."
)
@click.option(
    "--log",
    "log_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append every request, as a JSON line, to FILE.",
)
def rehearse(scenario: Path | None, host: str, port: int, log_path: Path | None) -> None:
    """Serve SCENARIO (default: the shipped demo) in place of the Anthropic API.

    Point Claude Code at URL/agents/NAME with ANTHROPIC_BASE_URL. Every request is
    logged with the rule that answered it. Stop with Ctrl-C.
    """
    import trio

    from hyperhive_core.rehearsal.scenario import load_demo_scenario, load_scenario
    from hyperhive_core.rehearsal.server import RehearsalServer

    loaded = load_scenario(scenario) if scenario else load_demo_scenario()
    server = RehearsalServer(loaded, host=host, port=port, log_path=log_path)
    try:
        trio.run(_serve_until_signal, server)
    except* HyperhiveError as group:
        # The server runs in a nursery, which wraps what it raises.
        raise click.ClickException(str(group.exceptions[0])) from None


async def _serve_until_signal(server: RehearsalServer) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            click.echo(f"rehearsal model serving {server.director.scenario.source} at {server.url}")
            click.echo(f"point an agent at it: ANTHROPIC_BASE_URL={server.url}/agents/NAME ANTHROPIC_API_KEY=rehearsal")
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
