"""``hyperhive send``, ``status`` and ``agents``, answered before click loads.

The operator and scripts run these all the time, and each only asks the running
daemon one question over the host socket. Importing click costs about as much as
starting Python, and the plugins many times that; so ``hyperhive_core.__main__``
offers argv here first. :func:`main` takes exactly these commands' plain forms
(``--config``, ``-v`` and ``-q``, then the command and its arguments) and answers
them with the standard library. Anything else (``--help``, an unknown option, a
missing argument, shell completion) goes on to the click CLI, which gives its usual
help and errors. The click commands call the functions here too, so both ways
print the same.

Keep module-level imports to the standard library and core's light modules:
tests/test_cli_startup.py fails if mcp, trio, pluggy, the plugins or the like load.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from hyperhive_core.configfile import configured_state_dir, find_config, read_toml
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.hostclient import DaemonNotRunning, request
from hyperhive_core.paths import StatePaths, default_state_dir

# click's shell completion runs through the click CLI.
COMPLETE_VAR = "_HYPERHIVE_COMPLETE"
# The top-level flags that only set the log level; these commands log nothing.
LOG_FLAGS = re.compile(r"-[vq]+|--verbose|--quiet")


# What a terminal acts on instead of showing: C0 controls but tab and newline, DEL,
# C1 controls (0x9b alone starts a control sequence) and the bidirectional controls
# that reorder the text around them.
UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def showable(text: str) -> str:
    """``text`` with every character a terminal would act on written out (``\\x1b``, ``\\u202e``)."""
    return UNSHOWABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


class ShowableStream(io.TextIOBase):
    """A text stream that writes :func:`showable` text to ``stream``.

    What the CLI prints comes largely from agents (message bodies, question text, a
    config commit's diff, log lines): an escape sequence in it could rewrite what the
    operator's terminal shows, hide a line of a diff, or retitle the window.
    """

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(showable(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self.stream.errors


def show_only_text() -> None:
    """Route the CLI's standard output and error through :class:`ShowableStream`.

    Not for shell completion: click writes its answer as bytes, for the shell to read.
    """
    if COMPLETE_VAR in os.environ:
        return
    sys.stdout = ShowableStream(sys.stdout)  # type: ignore[arg-type]
    sys.stderr = ShowableStream(sys.stderr)  # type: ignore[arg-type]


def host_socket(config_path: str | None) -> Path:
    """The running daemon's host socket, from ``[hive] state_dir`` of the config.

    Only that key is read (``configfile.configured_state_dir``): validating the
    whole file needs every plugin, and the daemon validated it when it started.
    """
    path, required = find_config(config_path)
    state_dir = configured_state_dir(path, read_toml(path, required))
    return StatePaths(state_dir or default_state_dir()).host_socket


def ask(config_path: str | None, cmd: str, **arguments: Any) -> Any:
    """Send one command to the running daemon and return its result.

    :raises HyperhiveError: the config or the daemon says no; the message says what to do.
    """
    try:
        return request(host_socket(config_path), cmd, **arguments)
    except DaemonNotRunning:
        check_config(config_path)
        raise


def check_config(config_path: str | None) -> None:
    """Check the whole config when no daemon answers, and raise what is wrong with it.

    Only state_dir was read: a mistake elsewhere in the file (a misspelt
    ``state_dir`` key, say) may be why there is no daemon here. The full check (it
    loads the plugins) names it; a valid config leaves "not running".
    """
    from hyperhive_core.boot import boot

    boot(config_path)


def to_json(value: Any) -> str:
    """A result as ``--json`` prints it."""
    return json.dumps(value, indent=2, default=str)


# -- the commands: each returns the lines to print -----------------------------------


# How long ``hyperhive send`` keeps trying while the hive is down or restarting (docs/hostsock.md).
SEND_RETRY_FOR = 30.0


def send(
    config_path: str | None,
    name: str,
    message: str,
    retry_for: float = SEND_RETRY_FOR,
    idempotency_key: str | None = None,
) -> list[str]:
    """Send ``message`` to agent ``name``, as the operator: stored once, however often it is tried.

    Every try carries the same idempotency key, so a retry after a lost answer gets
    the stored message back instead of storing a copy.
    """
    # 128 random bits, as many as a UUID4 has, without importing uuid (and platform).
    key = idempotency_key or os.urandom(16).hex()

    def notice(exc: HyperhiveError) -> None:
        if isinstance(exc, DaemonNotRunning):
            check_config(config_path)  # a wrong config, not a stopped hive, may be why: say so at once
        sys.stderr.write(f"{exc}; trying again for up to {retry_for:g} s\n")

    arguments = {"to": name, "body": message, "idempotency_key": key}
    result = ask(config_path, "send", retry_for=retry_for, on_retry=notice, **arguments)
    return [f"sent message {result['id']} to {name}"]


def status(config_path: str | None, as_json: bool) -> list[str]:
    """The running hive: state dir, backend, model endpoint, agents."""
    result = ask(config_path, "status")
    if as_json:
        return [to_json(result)]
    backend = result["backend"]
    isolation = "" if backend["isolated"] else "  (NO ISOLATION: agents run with the daemon's privileges)"
    lines = [f"state dir  {result['state_dir']}", f"backend    {backend['name']}{isolation}"]
    if backend.get("limits"):
        lines.append(f"limits     {backend['limits']}")  # how agents' caps are enforced, or "no limits: why"
    if result["rehearsal"]:
        lines.append(f"model      REHEARSAL MODEL at {result['rehearsal']} (no real Claude)")
    agent_lines = [agent_line(agent) for agent in result["agents"]]
    return lines + broker_lines(result.get("broker")) + cluster_lines(result.get("cluster")) + agent_lines


def cluster_lines(cluster: dict[str, Any] | None) -> list[str]:
    """The hosts of a hive across hosts, up or down, with their agents and last heartbeat; none for one host."""
    if not cluster or not cluster.get("host"):
        return []
    now = time.time()
    return [f"host       {cluster['host']}, one of {len(cluster['hosts'])}"] + [
        f"  host     {host['name']:<24} {'up' if host['up'] else 'DOWN':<5} {host['agents']} agents, "
        f"last seen {max(0.0, now - host['last_seen']):.0f} s ago"
        for host in cluster["hosts"]
    ]


def broker_lines(health: dict[str, Any] | None) -> list[str]:
    """The broker's health (``MessageBroker.health``) as ``status`` shows it: its store, and on JetStream
    the node connected to, each stream's leader and replicas, each recipient's backlog."""
    if health is None:
        return []
    if health["backend"] == "sqlite":
        return [
            f"broker     sqlite {health['file']} (WAL {health['wal_bytes'] // 1024} KiB): "
            f"{health['queued']} queued, {health['leased']} leased, {health['dead']} dead"
        ]
    if health["backend"] != "jetstream":
        return [f"broker     {health['backend']}"]
    where = f"jetstream {health['name']!r}"
    if "error" in health:
        return [f"broker     {where}: UNREACHABLE: {health['error']}"]
    node = health["connected"]
    lines = [
        f"broker     {where} via {node['url']} (node {node['server']}, nats-server {node['version']})"
        + ("" if health["ok"] else "  DEGRADED: a stream has no leader or a replica is behind")
    ]
    for stream in health["streams"]:
        replicas = ", ".join(
            f"{peer['name']} "
            + ("OFFLINE" if peer["offline"] else "current" if peer["current"] else f"lag {peer['lag']}")
            for peer in stream["replicas"]
        )
        lines.append(
            f"  stream   {stream['name']:<24} {stream['messages']} messages, {stream['bytes'] // 1024} KiB, "
            f"leader {stream['leader'] or 'NONE'}" + (f"; {replicas}" if replicas else "")
        )
    lines += [
        f"  inbox    {each['name']:<24} {each['pending']} pending, {each['ack_pending']} leased"
        for each in health["consumers"]
    ]
    return lines


def agents(config_path: str | None, as_json: bool) -> list[str]:
    """Every agent with its state, model and inbox depth."""
    result = ask(config_path, "agents")
    return [to_json(result)] if as_json else [agent_line(agent) for agent in result]


def agent_line(agent: dict[str, Any]) -> str:
    """One agent as ``status`` and ``agents`` list it."""
    host = f"{agent['host']:<10} " if "host" in agent else ""  # a hive across hosts
    return (
        f"{host}{agent['name']:<16} {agent['role']:<8} {describe_state(agent):<28} "
        f"model {agent['model']:<10} inbox {agent['inbox_depth']}"
    )


def event_line(event: dict[str, Any]) -> str:
    """One live event as ``hyperhive events`` prints it: id, host (another host's), agent, type, data."""
    data = dict(event["data"])
    host = data.pop("host", "")
    details = json.dumps(data, ensure_ascii=False)
    return f"{event['id']} {host or '-':<10} {event['agent']:<16} {event['type']:<18} {details[:300]}"


def describe_state(agent: dict[str, Any]) -> str:
    flags = [flag for flag in ("paused", "failed", "stopped") if agent.get(flag)]
    state = agent["state"] + (f" ({agent['detail']})" if agent.get("detail") else "")
    return ", ".join([state, *flags])


# -- dispatch --------------------------------------------------------------------------


def parse(argv: list[str]) -> Callable[[], list[str]] | None:
    """The command ``argv`` asks for, ready to run, if it is plain enough to run here; else None.

    Any other option, ``--`` or ``--help`` (anything starting with ``-``) is left
    to click, which knows them all.
    """
    config_path = None
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-c", "--config"):
            if not rest or rest[0].startswith("-"):
                return None
            config_path = rest.pop(0)
        elif option.startswith("--config="):
            config_path = option.removeprefix("--config=")
        elif option.startswith("-c") and not option.startswith("--"):
            config_path = option.removeprefix("-c")  # -cFILE, as click reads it
        elif not LOG_FLAGS.fullmatch(option):
            return None
    match rest:
        case ["send", *args]:
            return _parse_send(config_path, args)
        case ["status" | "agents" as command, *flags] if set(flags) <= {"--json"}:
            return partial(status if command == "status" else agents, config_path, bool(flags))
    return None


def _parse_send(config_path: str | None, args: list[str]) -> Callable[[], list[str]] | None:
    """``send NAME MESSAGE`` with ``--retry-for SECONDS`` and ``--idempotency-key KEY`` anywhere among them."""
    positional: list[str] = []
    options: dict[str, str] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        option, has_value, value = arg.partition("=")
        if option in ("--retry-for", "--idempotency-key"):
            if not has_value:
                if not rest or rest[0].startswith("-"):
                    return None
                value = rest.pop(0)
            options[option] = value
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    try:
        retry_for = float(options.get("--retry-for", SEND_RETRY_FOR))
    except ValueError:
        return None
    if len(positional) != 2 or not retry_for >= 0:  # click says what is wrong
        return None
    name, message = positional
    return partial(send, config_path, name, message, retry_for, options.get("--idempotency-key"))


def main(argv: list[str]) -> int | None:
    """Run ``argv`` if it is one of the commands here: its exit status, or None to leave it to click."""
    command = None if COMPLETE_VAR in os.environ else parse(argv)
    if command is None:
        return None
    try:
        lines = command()
    except HyperhiveError as exc:
        sys.stderr.write(f"Error: {exc}\n")  # as click shows it
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")
        return 1
    try:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (``| head``): end quietly, as click does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
