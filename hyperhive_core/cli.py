"""The ``hyperhive`` command line.

Loading the plugins imports all of them (the dashboard's web stack, MCP, ...):
hundreds of ms that core's commands never need. So modules load only inside the
commands that use them, and the plugins' commands only when a command name is
not core's or ``--help`` lists them all (:class:`HiveGroup`). ``send``, ``status``
and ``agents`` even skip click when they can: ``hyperhive_core.fastcli``.
tests/test_cli_startup.py keeps it that way.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from hyperhive_core import fastcli
from hyperhive_core.backup import backup_command
from hyperhive_core.cliopts import CliState, config_option, echo_json, json_option, pass_state
from hyperhive_core.configfile import configured_plugins, find_config, read_toml
from hyperhive_core.dead_letters import dead_command
from hyperhive_core.errors import HyperhiveError, PluginError
from hyperhive_core.rehearsal.command import rehearse
from hyperhive_core.service import install_service

if TYPE_CHECKING:
    from hyperhive_core.plugins import HivePluginManager

# Where HiveGroup keeps one invocation's plugin commands, in its context's meta.
PLUGIN_COMMANDS = "hyperhive.plugin_commands"
# ... and the --config given after the command name, which picks those plugins too.
CONFIG_AFTER = "hyperhive.config_after"


class HiveGroup(click.Group):
    """Core's commands, and the plugins' ones loaded only when asked for.

    Also shows a user-caused error as one clear line and a non-zero exit, not a traceback.
    """

    # make_cli's groups carry their plugins' commands already.
    plugins_added = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self.plugin_commands(ctx).get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.plugin_commands(ctx)])

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        ctx.find_root().meta.setdefault(CONFIG_AFTER, config_in(args[1:]))
        return super().resolve_command(ctx, args)

    def plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The commands the plugins add, by name; the plugins load on the first call."""
        if self.plugins_added:
            return {}
        root = ctx.find_root()
        meta = root.meta
        if PLUGIN_COMMANDS not in meta:
            try:
                group = make_cli(plugins_for_commands(root.params.get("config_path") or meta.get(CONFIG_AFTER)))
            except HyperhiveError as exc:
                raise click.ClickException(str(exc)) from None
            meta[PLUGIN_COMMANDS] = {
                name: command for name, command in group.commands.items() if name not in self.commands
            }
        return meta[PLUGIN_COMMANDS]

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HyperhiveError as exc:
            raise click.ClickException(str(exc)) from None
        except BaseExceptionGroup as exc:
            from hyperhive_core.supervise import root_cause  # trio's: only the daemon raises groups

            cause = root_cause(exc)  # a startup error raised inside the daemon's nurseries
            if not isinstance(cause, HyperhiveError):
                raise
            raise click.ClickException(str(cause)) from None


@click.group(cls=HiveGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hyperhive", prog_name="hyperhive")
@config_option(top_level=True)
@click.option("-v", "--verbose", count=True, help="More log detail (-v debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, quiet: bool) -> None:
    """hyperhive: a swarm of Claude Code agents on one host, steered by an operator."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = CliState(config_path)


@cli.command()
@pass_state
def up(state: CliState) -> None:
    """Run the hive and its dashboard in the foreground."""
    from hyperhive_core.daemon import run_daemon

    booted = state.boot()
    sys.exit(run_daemon(booted.config, booted.pm))


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_state
def init(state: CliState, force: bool) -> None:
    """Write a commented default config (every installed plugin's sections)."""
    from hyperhive_core.boot import config_schemas
    from hyperhive_core.config import render_default_config
    from hyperhive_core.plugins import make_plugin_manager

    path, _ = find_config(state.config_path)
    if path.exists() and not force:
        raise click.ClickException(f"{path} already exists; pass --force to overwrite it")
    pm = make_plugin_manager(None)
    path.write_text(render_default_config(config_schemas(pm)))
    click.echo(f"wrote {path}")


@cli.command(name="plugins")
@click.option("--all", "show_all", is_flag=True, help="Include core's builtin plugins.")
@json_option()
@pass_state
def list_plugins(state: CliState, show_all: bool, as_json: bool) -> None:
    """List loaded plugins, their versions and the hooks they implement."""
    from hyperhive_core.plugins import describe_plugins

    infos = [info for info in describe_plugins(state.boot().pm) if show_all or not info.builtin]
    if as_json:
        echo_json([asdict(info) for info in infos])
        return
    if not infos:
        click.echo("no plugins loaded")
        return
    width = max(len(info.name) for info in infos)
    for info in infos:
        hooks = ", ".join(info.hooks) or "(no hooks)"
        click.echo(f"{info.name:<{width}}  {info.distribution} {info.version}  {hooks}")


cli.add_command(rehearse)
cli.add_command(install_service)
cli.add_command(backup_command)
cli.add_command(dead_command)


# -- talking to the running daemon over the host socket -----------------------------


def ask_daemon(state: CliState, cmd: str, **arguments: Any) -> Any:
    """Send one command to the running daemon; errors become one clear line."""
    return fastcli.ask(state.config_path, cmd, **arguments)


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


# The next three run in hyperhive_core.fastcli, which answers their plain forms without click.


@cli.command()
@json_option()
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """The running hive: backend, model endpoint, agents."""
    echo_lines(fastcli.status(state.config_path, as_json))


@cli.command()
@json_option()
@pass_state
def agents(state: CliState, as_json: bool) -> None:
    """List agents with their state, model and inbox depth."""
    echo_lines(fastcli.agents(state.config_path, as_json))


@cli.command()
@click.argument("name")
@click.argument("message")
@click.option(
    "--retry-for",
    type=click.FloatRange(min=0),
    default=fastcli.SEND_RETRY_FOR,
    show_default=True,
    metavar="SECONDS",
    help="Keep trying this long while the hive is not running, restarting, or drops the answer; 0 fails at once. "
    "A retry never stores a second copy.",
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Store the message once per KEY: running this again with the same KEY sends nothing new. "
    "Default: a new random key.",
)
@pass_state
def send(state: CliState, name: str, message: str, retry_for: float, idempotency_key: str | None) -> None:
    """Send MESSAGE to agent NAME, as the operator."""
    echo_lines(fastcli.send(state.config_path, name, message, retry_for, idempotency_key))


def agent_action(name: str, done: str, help: str) -> click.Command:
    """A command ``hyperhive NAME AGENT`` that asks the daemon to act on one agent."""

    @cli.command(name=name, help=help)
    @click.argument("agent")
    @pass_state
    def action(state: CliState, agent: str) -> None:
        ask_daemon(state, name, agent=agent)
        click.echo(f"{done} {agent}")

    return action


agent_action("pause", "paused", "Pause agent AGENT after its current turn.")
agent_action("resume", "resumed", "Resume a paused (or failed) agent AGENT.")


@cli.command()
@click.argument("agent")
@click.option("--host", default=None, help="In a hive across hosts: the host to run it on (default: this one).")
@pass_state
def spawn(state: CliState, agent: str, host: str | None) -> None:
    """Create and start a new agent AGENT with a default config."""
    ask_daemon(state, "spawn", agent=agent, **({"host": host} if host else {}))
    click.echo(f"spawned {agent}" + (f" on {host}" if host else ""))


@cli.command()
@click.argument("agent", required=False)
@click.option(
    "--after", type=int, default=None, metavar="ID", help="First replay the kept events after event ID (0: all)."
)
@json_option("One JSON object per event.")
@pass_state
def events(state: CliState, agent: str | None, after: int | None, as_json: bool) -> None:
    """Follow the live events of AGENT (default: every agent) until Ctrl-C.

    In a hive across hosts, every host's, each with the host it came from.
    """
    import json

    from hyperhive_core.hostclient import subscribe

    for event in subscribe(fastcli.host_socket(state.config_path), agent, after):
        click.echo(json.dumps(event) if as_json else fastcli.event_line(event))


agent_action("restore", "restored", "Bring back destroyed agent AGENT from its kept state.")
agent_action("rebuild", "rebuilt", "Restart agent AGENT from scratch with its current config.")


@cli.command()
@click.argument("name")
@pass_state
def cancel(state: CliState, name: str) -> None:
    """Interrupt agent NAME's current turn; its messages wait for the next one."""
    cancelled = ask_daemon(state, "cancel", agent=name)["cancelled"]
    click.echo(f"cancelled {name}'s turn" if cancelled else f"{name} was not in a turn")


@cli.command()
@click.argument("name")
@click.argument("model")
@pass_state
def model(state: CliState, name: str, model: str) -> None:
    """Switch agent NAME to MODEL once its current turn ends.

    MODEL is an alias (haiku, sonnet, opus, ...), a full model id (claude-sonnet-4-5),
    or a name [claude] extra_models allows; the daemon checks it.
    """
    result = ask_daemon(state, "model", agent=name, model=model)
    queued = f" (queued: {result['queued']})" if result["queued"] else ""
    click.echo(f"{name}: model {result['model']}{queued}")


@cli.command()
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also wipe its state and config; this cannot be undone.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def destroy(state: CliState, name: str, purge: bool, yes: bool) -> None:
    """Stop and remove agent NAME. Its state is kept for `restore` unless --purge."""
    if not yes:
        what = "destroy {0} and WIPE its state" if purge else "destroy {0} (its state is kept)"
        if not sys.stdin.isatty():
            raise click.ClickException(f"refusing to {what.format(name)} without confirmation; pass --yes")
        click.confirm(f"{what.format(name)}?", abort=True)
    ask_daemon(state, "destroy", agent=name, purge=purge)
    click.echo(f"destroyed {name}" + ("; state purged" if purge else "; state kept (hyperhive restore to undo)"))


@cli.command()
@pass_state
def kept(state: CliState) -> None:
    """List destroyed agents whose state is kept."""
    rows = ask_daemon(state, "kept")
    for row in rows:
        click.echo(row["name"])
    if not rows:
        click.echo("no kept state")


# -- the manager's requests (docs/approvals.md) --------------------------------------


def describe_approval(approval: dict[str, Any]) -> str:
    sha = (approval["fetched_sha"] or "")[:12]
    line = f"#{approval['id']:<4} {approval['status']:<9} {approval['kind']:<13} {approval['agent']:<16} {sha:<12}"
    line += f"  {approval['description']}"
    if approval["problems"]:
        line += "  [INVALID: can only be denied]"
    return line


@cli.command()
@click.argument("approval_id", metavar="[ID]", type=int, required=False)
@click.option("--all", "show_all", is_flag=True, help="Include resolved requests, not only pending ones.")
@json_option()
@pass_state
def approvals(state: CliState, approval_id: int | None, show_all: bool, as_json: bool) -> None:
    """List the manager's pending requests; with ID, show one with its diff."""
    if approval_id is not None:
        approval = ask_daemon(state, "approval", approval_id=approval_id)
        if as_json:
            echo_json(approval)
            return
        click.echo(describe_approval(approval))
        ref = f", ref {approval['commit_ref']}" if approval["commit_ref"] else ""
        click.echo(f"requested by {approval['requested_by']}{ref}")
        for field in ("note", "error"):
            if approval[field]:
                click.echo(f"{field}: {approval[field]}")
        for problem in approval["problems"]:
            click.echo(f"problem: {problem}")
        if approval["diff"]:
            click.echo("")
            click.echo(approval["diff"], nl=False)
        return
    rows = ask_daemon(state, "approvals", status=None if show_all else "pending")
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(describe_approval(row))
    if not rows:
        click.echo("no approvals" if show_all else "no pending approvals")


@cli.command()
@click.argument("approval_id", metavar="ID", type=int)
@click.option("--note", default="", help="A note for the manager.")
@pass_state
def approve(state: CliState, approval_id: int, note: str) -> None:
    """Approve request ID and carry it out (`hyperhive approvals ID` shows its diff)."""
    result = ask_daemon(state, "approve", approval_id=approval_id, note=note)
    if result["status"] == "failed":
        raise click.ClickException(f"approval {approval_id} failed: {result['error']}")
    click.echo(f"approved #{approval_id}: {result['kind']} {result['agent']}")


@cli.command()
@click.argument("approval_id", metavar="ID", type=int)
@click.option("--note", required=True, help="Why: the manager reads it.")
@pass_state
def deny(state: CliState, approval_id: int, note: str) -> None:
    """Deny request ID, telling the manager why."""
    result = ask_daemon(state, "deny", approval_id=approval_id, note=note)
    click.echo(f"denied #{approval_id}: {result['kind']} {result['agent']}")


@cli.command()
@pass_state
def drafts(state: CliState) -> None:
    """List agents the manager drafted and has not had spawned yet."""
    rows = ask_daemon(state, "drafts")
    for row in rows:
        pending = f"  (spawn_commit #{row['pending']} pending)" if row["pending"] else ""
        click.echo(f"{row['name']:<16} by {row['created_by']}{pending}")
    if not rows:
        click.echo("no drafts")


@cli.group(hidden=True)
def debug() -> None:
    """Ops-only commands, hidden from --help."""


@debug.command(name="recv")
@click.argument("name", default="operator")
@click.option("--limit", default=20, show_default=True)
@pass_state
def debug_recv(state: CliState, name: str, limit: int) -> None:
    """The last messages addressed to NAME (default: the operator)."""
    for message in reversed(ask_daemon(state, "recv", agent=name, limit=limit)):
        click.echo(f"#{message['id']} {message['from']} → {message['to']} ({message['kind']}): {message['body']}")


@debug.command(name="config")
@pass_state
def debug_config(state: CliState) -> None:
    """Print the effective config, defaults filled in, as JSON."""
    from hyperhive_core.config import plain

    config = state.boot().config
    sections = {name: plain(section) for name, section in config.sections.items()}
    echo_json({"path": str(config.path), "sections": sections})


def add_plugin_commands(group: click.Group, pm: HivePluginManager) -> None:
    """Let each plugin add commands; a name two owners claim is an error naming both."""
    from hyperhive_core.plugins import callers_by_plugin

    owners = dict.fromkeys(group.commands, "hyperhive")
    for owner, caller in callers_by_plugin(pm, "register_commands"):
        before = dict(group.commands)
        caller(cli=group)
        for name, command in group.commands.items():
            if before.get(name) is command:
                continue
            if name in owners:
                raise PluginError(
                    f"command {name!r} is registered by both {owners[name]!r} and {owner!r}; "
                    "disable one of them, or rename the command."
                )
            owners[name] = owner


def make_cli(pm: HivePluginManager) -> click.Group:
    """The ``hyperhive`` group with core's commands plus those the plugins in ``pm`` add."""
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    add_plugin_commands(group, pm)
    group.plugins_added = True
    return group


def config_in(args: list[str]) -> str | None:
    """The ``--config`` among a command's own arguments (``hyperhive wake -c FILE bob``): the
    plugins, whose commands these may be, load before the command parses them."""
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-c", "--config") and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
    return None


def plugins_for_commands(config_path: str | None) -> HivePluginManager:
    """The plugins whose commands ``hyperhive`` offers: those the config selects.

    A broken config must not hide ``init`` or ``--help``: fall back to every
    installed plugin, and let the command itself report the problem.
    """
    from hyperhive_core.plugins import make_plugin_manager, plugin_selection

    try:
        path, required = find_config(config_path)
        selection, source = plugin_selection(configured_plugins(path, read_toml(path, required)))
        return make_plugin_manager(selection, source)
    except HyperhiveError:
        return make_plugin_manager(None)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    cli.main(args=sys.argv[1:] if argv is None else argv, prog_name="hyperhive")


if __name__ == "__main__":
    main()
