"""hyperhive-telemetry: Per-agent turn statistics, charts and Prometheus /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click

from hyperhive_core import hookimpl
from hyperhive_telemetry import store, web
from hyperhive_telemetry.api import stats_body
from hyperhive_telemetry.collect import TELEMETRY, Telemetry
from hyperhive_telemetry.config import TelemetrySection

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import Hive, Message, Panel, Turn


@hookimpl
def register_config_sections(register: Callable[[str, type], None]) -> None:
    register("telemetry", TelemetrySection)


@hookimpl
def register_migrations(register: Callable[[str, Iterable[Any]], None]) -> None:
    register("telemetry", store.MIGRATIONS)


@hookimpl
def on_startup(hive: Hive) -> None:
    hive.stash[TELEMETRY] = Telemetry(hive, hive.config.section("telemetry"))


@hookimpl
def hive_services(hive: Hive) -> list[Callable[..., Any]]:
    telemetry = hive.stash[TELEMETRY]
    return [telemetry.run_sampler, telemetry.run_retention]


@hookimpl
def on_turn_start(hive: Hive, agent: str) -> None:
    hive.stash[TELEMETRY].turn_started(agent)


@hookimpl
def on_message(hive: Hive, message: Message) -> None:
    hive.stash[TELEMETRY].message_sent(message)


@hookimpl
async def on_turn_end(hive: Hive, agent: str, turn: Turn) -> None:
    await hive.stash[TELEMETRY].turn_ended(agent, turn)


@hookimpl
async def on_dead_letter(hive: Hive, message: Message) -> None:
    await hive.stash[TELEMETRY].dead_lettered(message)


@hookimpl
async def on_agent_purged(hive: Hive, agent: str) -> None:
    await hive.stash[TELEMETRY].agent_purged(agent)


@hookimpl
def register_routes(register: Callable[..., None]) -> None:
    # Paths of their own, which dashboards and Prometheus scrapers know.
    for rule, view in web.ROUTES:
        register(rule, view, public=True)


@hookimpl
def dashboard_panels(hive: Hive) -> list[Panel]:
    return [web.hive_panel(hive)]


@hookimpl
def agent_panels(hive: Hive, agent: str) -> list[Panel]:
    return [web.agent_panel(hive, agent)]


async def stats(hive: Hive, since: str | None = None, agent: str | None = None, key: str | None = None) -> dict:
    """Host command: what ``GET /api/stats`` returns."""
    args = {name: [value] for name, value in (("since", since), ("agent", agent), ("key", key)) if value}
    return await stats_body(hive, args)


@hookimpl
def register_host_commands(register: Callable[..., None]) -> None:
    register("stats", stats)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from hyperhive_core import CliState, ask_daemon, echo_json, json_option, pass_state

    @cli.command(name="stats")
    @click.argument("name", required=False)
    @click.option("--since", help="From when: 15m, 2h, 7d, an ISO time or epoch seconds. Default: [telemetry] window.")
    @json_option(help="Everything, series included, as JSON.")
    @pass_state
    def stats_command(state: CliState, name: str | None, since: str | None, as_json: bool) -> None:
        """Turn statistics per agent (or agent NAME's alone)."""
        body = ask_daemon(state, "stats", since=since, agent=name)
        if as_json:
            echo_json(body)
            return
        click.echo(format_summary(body["summary"]))


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """The summaries as a table, one agent a line."""
    lines = [f"{'agent':<16} {'turns':>5} {'/min':>6} {'p50':>8} {'p95':>8} {'cost $':>8} {'inbox':>5} {'notes':>8}"]
    for agent, figures in summary.items():
        if "turns" not in figures:
            continue
        durations = figures["turn_duration_ms"]
        inbox = figures["inbox_depth"]["current"]
        lines.append(
            f"{agent:<16} {figures['turns']:>5} {figures['turns_per_min']:>6.2f} "
            f"{_ms(durations['p50']):>8} {_ms(durations['p95']):>8} {figures['cost_usd']:>8.4f} "
            f"{'-' if inbox is None else int(inbox):>5} {_size(figures['notes_bytes']):>8}"
        )
    queue = summary.get("hive", {}).get("approval_queue", {}).get("current")
    if queue is not None:
        lines.append(f"approvals waiting: {int(queue)}")
    return "\n".join(lines) if len(lines) > 1 else "no statistics in this window"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.1f}s"


def _size(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}K"
