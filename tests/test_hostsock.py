"""The host control socket: JSON lines, versioned replies, plugin commands, the CLI on top."""

from __future__ import annotations

import grp
import inspect
import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.hostsock import (
    PROTOCOL_VERSION,
    DaemonNotRunning,
    HostCommand,
    HostCommandError,
    request,
    subscribe,
)
from hyperhive_core.plugins import callers_by_plugin, make_plugin_manager
from hyperhive_core.testing import running_hive

QUIET = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'


async def exchange(path, *lines: bytes) -> list[dict]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        replies = []
        for line in lines:
            await stream.send_all(line)
            data = b""
            while not data.endswith(b"\n"):
                data += await stream.receive_some(65536)
            replies.append(json.loads(data))
        return replies


async def test_hook_register_host_commands(make_pm, tmp_path):
    class Echo:
        @hookimpl
        def register_host_commands(self, register):
            async def echo(hive, text: str):
                if not text:
                    raise HyperhiveError("say something")
                return {"echo": text, "agents": [agent.name for agent in hive.agents]}

            register("echo", echo)

    async with running_hive(tmp_path, make_pm(echo=Echo()), QUIET) as hive:
        replies = await exchange(
            hive.paths.host_socket,
            b'{"cmd": "echo", "text": "hi"}\n',
            b'{"cmd": "echo", "text": ""}\n',
            b'{"cmd": "echo"}\n',
        )
    assert replies[0] == {"version": PROTOCOL_VERSION, "ok": {"echo": "hi", "agents": ["manager"]}}
    assert replies[1] == {"version": PROTOCOL_VERSION, "error": "say something"}
    assert replies[2]["error"].startswith("bad arguments for 'echo'")


async def test_bad_requests_get_clear_errors_and_the_connection_survives(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), QUIET) as hive:
        assert stat.S_IMODE(hive.paths.host_socket.stat().st_mode) == 0o660
        replies = await exchange(
            hive.paths.host_socket,
            b"not json\n",
            b'["cmd"]\n',
            b'{"cmd": "warp"}\n',
            b'{"cmd": "send", "to": "nobody", "body": "x"}\n',
            b'{"cmd": "send", "to": "manager", "body": "hello"}\n',
        )
    assert all(reply["version"] == PROTOCOL_VERSION for reply in replies)
    assert "not valid JSON" in replies[0]["error"]
    assert 'a "cmd" string' in replies[1]["error"]
    assert replies[2]["error"].startswith("unknown command 'warp'; known commands: agent, agents, approval,")
    assert replies[3]["error"] == "no agent named 'nobody'; known agents: manager"
    assert replies[4]["ok"]["to"] == "manager"


async def test_subscribe_streams_live_events(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), QUIET) as hive:
        stream = await trio.open_unix_socket(str(hive.paths.host_socket))
        async with stream:
            await stream.send_all(b'{"cmd": "subscribe", "agent": "manager"}\n')
            buffered = b""
            while b"\n" not in buffered:
                buffered += await stream.receive_some(65536)
            assert json.loads(buffered.split(b"\n")[0])["ok"] == "subscribed"
            await hive.pause("manager")
            with trio.fail_after(10):
                while True:
                    lines = buffered.split(b"\n")
                    events = [json.loads(line)["event"] for line in lines[1:] if line.strip()]
                    if any(event["type"] == "state_change" and event["data"]["paused"] for event in events):
                        break
                    buffered += await stream.receive_some(65536)


async def test_cli_talks_to_the_daemon(make_pm, tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    async with running_hive(tmp_path, make_pm(), QUIET) as hive:
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')

        def cli(*args):
            return subprocess.run([hyperhive, "-c", str(config), *args], capture_output=True, text=True, env=clean_env)

        status = await trio.to_thread.run_sync(cli, "status")
        assert status.returncode == 0, status.stderr
        assert "backend    process  (NO ISOLATION" in status.stdout
        assert "REHEARSAL MODEL" in status.stdout
        assert "manager" in status.stdout
        sent = await trio.to_thread.run_sync(cli, "send", "manager", "hello there")
        assert sent.stdout.startswith("sent message ")
        paused = await trio.to_thread.run_sync(cli, "pause", "manager")
        assert paused.stdout == "paused manager\n"
        assert hive.agents.get("manager").status.paused
        unknown = await trio.to_thread.run_sync(cli, "pause", "ghost")
        assert unknown.returncode == 1
        assert unknown.stderr == "Error: no agent named 'ghost'; known agents: manager\n"


async def test_cli_send_waits_for_a_starting_hive_and_a_key_sends_once(make_pm, tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')

    def cli(*args):
        return subprocess.run([hyperhive, "-c", str(config), *args], capture_output=True, text=True, env=clean_env)

    argv = [hyperhive, "-c", str(config), "send", "manager", "are you up?"]
    early = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env)
    try:
        with trio.fail_after(30):  # it says it will try again before the hive starts
            notice = await early.stderr.receive_some(65536)
        assert notice.decode() == (
            f"the hive is not running (no socket at {tmp_path}/state/host.sock); start it with `hyperhive up`; "
            "trying again for up to 30 s\n"
        )
        async with running_hive(tmp_path, make_pm(), QUIET) as hive:
            with trio.fail_after(30):
                assert await early.wait() == 0
            [message] = await hive.broker.recent_from("operator")
            assert (await early.stdout.receive_some(65536)).decode() == f"sent message {message.id} to manager\n"

            # A script may run the same send again with its own key: stored once.
            keyed = ("send", "--idempotency-key", "job-7", "manager")
            first = await trio.to_thread.run_sync(cli, *keyed, "nightly report")
            again = await trio.to_thread.run_sync(cli, *keyed, "nightly report")
            other = await trio.to_thread.run_sync(cli, *keyed, "another")
            assert first.returncode == again.returncode == 0, first.stderr + again.stderr
            assert again.stdout == first.stdout
            assert other.returncode == 1
            assert "idempotency key 'job-7' was already used by 'operator'" in other.stderr
            assert [m.body for m in await hive.broker.recent_from("operator")] == ["nightly report", "are you up?"]
    finally:
        early.kill()
    refused = await trio.to_thread.run_sync(cli, "send", "--retry-for", "0", "manager", "hello?")
    assert (refused.returncode, refused.stderr) == (
        1,
        f"Error: the hive is not running (no socket at {tmp_path}/state/host.sock); start it with `hyperhive up`\n",
    )


def test_a_send_is_retried_only_with_an_idempotency_key(tmp_path):
    with pytest.raises(ValueError, match="retrying a send without an idempotency_key could store it twice"):
        request(tmp_path / "host.sock", "send", retry_for=30, to="manager", body="hi")


def test_cli_without_a_daemon_says_so(tmp_path, hyperhive, clean_env):
    (tmp_path / "hyperhive.toml").write_text(f'[hive]\nstate_dir = "{tmp_path}"\n')
    result = subprocess.run([hyperhive, "status"], capture_output=True, text=True, env=clean_env)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: the hive is not running (no socket at {tmp_path}/host.sock); start it with `hyperhive up`\n"
    )
    with pytest.raises(DaemonNotRunning):
        request(tmp_path / "host.sock", "status")
    assert issubclass(HostCommandError, HyperhiveError)


async def test_the_admin_group_can_reach_the_socket(make_pm, tmp_path):
    group = grp.getgrnam("adm")
    async with running_hive(tmp_path, make_pm(), QUIET, hive={"admin_group": "adm"}) as hive:
        root, sock = hive.paths.root.stat(), hive.paths.host_socket.stat()
    assert (stat.S_IMODE(root.st_mode), root.st_gid) == (0o710, group.gr_gid)  # pass through, not list
    assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, group.gr_gid)


async def test_a_missing_admin_group_is_a_clear_error(make_pm, make_config, tmp_path):
    pm = make_pm()
    hive = {"state_dir": str(tmp_path / "state"), "admin_group": "no-such-group-here", "container_backend": "process"}
    config = make_config(pm, hive=hive)
    with pytest.raises(HyperhiveError, match=r"admin_group = 'no-such-group-here' does not exist; create it"):
        await run_hive(config, pm)
    assert not (tmp_path / "state").exists()


# -- the documented commands are the real ones ----------------------------------------

REPO = Path(__file__).resolve().parent.parent


def documented_host_commands(doc: Path) -> dict[str, set[str]]:
    """The commands in ``doc``'s ``| cmd | arguments | result |`` tables, with their arguments.

    An argument is a backticked name in the arguments cell; text in brackets (a
    default, or ``optional``) is not one.
    """
    documented: dict[str, set[str]] = {}
    in_table = False
    for line in doc.read_text().splitlines():
        if line.startswith("| cmd | arguments | result |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("| ---"):
            commands, arguments = line.split("|")[1:3]
            named = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", arguments)))
            documented |= dict.fromkeys(re.findall(r"`([\w-]+)`", commands), named)
    return documented


def host_commands_by_owner() -> dict[str, dict[str, HostCommand]]:
    """Every installed plugin's (and core's) host commands, by plugin."""
    pm = make_plugin_manager(None)
    by_owner: dict[str, dict[str, HostCommand]] = {}
    for owner, caller in callers_by_plugin(pm, "register_host_commands"):
        caller(register=lambda name, handler, owner=owner: by_owner.setdefault(owner, {}).update({name: handler}))
    return by_owner


def doc_of(owner: str) -> Path:
    """Core's commands are in docs/hostsock.md; a bundled plugin's in its README."""
    if owner == "core":
        return REPO / "docs" / "hostsock.md"
    package = Path(inspect.getfile(make_plugin_manager(None).get_plugin(owner)))
    return package.parent.parent / "README.md"


def arguments_of(handler: HostCommand) -> set[str]:
    return set(list(inspect.signature(handler).parameters)[1:])  # after hive


OWNERS = host_commands_by_owner()


def test_core_and_every_bundled_plugin_with_host_commands_is_checked():
    assert {"core", "nap", "telemetry", "compaction", "questions"} <= set(OWNERS)


@pytest.mark.parametrize("owner", sorted(OWNERS))
def test_every_host_command_is_documented_with_its_arguments(owner):
    doc = doc_of(owner)
    documented = documented_host_commands(doc)
    for name, handler in OWNERS[owner].items():
        assert name in documented, f"host command {name!r} ({owner}) is not in the command table of {doc}"
        assert documented[name] == arguments_of(handler), (
            f"{doc} documents {name!r} with arguments {sorted(documented[name])}, "
            f"the code takes {sorted(arguments_of(handler))}"
        )
    # And nothing documented that does not exist; subscribe is the socket's own.
    socket_commands = {"subscribe": set(list(inspect.signature(subscribe).parameters)[1:])} if owner == "core" else {}
    assert set(documented) == set(OWNERS[owner]) | set(socket_commands), f"{doc} documents unknown commands"
    for name, arguments in socket_commands.items():
        assert documented[name] == arguments
