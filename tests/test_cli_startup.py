"""`hyperhive send`, `status` and `agents` start quickly: none of the heavy modules load.

Each run goes through the installed `hyperhive` command (or the click CLI's entry),
against a real daemon, and lists every module in `sys.modules` at exit. (`-X
importtime` would miss modules loaded with `importlib.import_module`, as plugins
are.) bench/cli.py has the timings.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import trio

from hyperhive_core import fastcli
from hyperhive_core.boot import boot
from hyperhive_core.daemon import state_paths
from hyperhive_core.hostclient import HostCommandError, request, subscribe
from hyperhive_core.paths import default_state_dir
from hyperhive_core.testing import running_hive

QUIET = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'

# The one list of what these commands must never import (each costs tens to hundreds
# of ms), with every installed plugin's package added by heavy_modules().
HEAVY_LIBRARIES = ("mcp", "mcp_types", "quart", "quart_trio", "hypercorn", "trio", "pluggy", "sqlite_utils", "jeepney")

# Runs the Python code in argv[2] with the rest of argv as its own, then writes every
# imported module's name to the file argv[1].
PROBE = """
import atexit, sys
out, code = sys.argv[1:3]
sys.argv = sys.argv[2:]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
exec(code)
"""
CLICK_ENTRY = "from hyperhive_core.cli import main; main()"  # the click CLI, without the quick dispatch


def quick_entry(hyperhive: str) -> str:
    """The installed console script, run as the shell runs it."""
    return f"import runpy; runpy.run_path({hyperhive!r}, run_name='__main__')"


def heavy_modules() -> tuple[str, ...]:
    plugins = {entry.module.partition(".")[0] for entry in entry_points(group="hyperhive")}
    return HEAVY_LIBRARIES + tuple(sorted(plugins))


def run(entry: str, *args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``entry`` with ``args``: the result, and every module the process imported."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "modules"
        result = subprocess.run(
            [sys.executable, "-c", PROBE, str(out), entry, *args], capture_output=True, text=True, env=env, timeout=60
        )
        return result, set(out.read_text().split())


def heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if any(name == top or name.startswith(f"{top}.") for top in heavy_modules()))


def test_the_heavy_list_names_every_bundled_plugin():
    assert {"hyperhive_web", "hyperhive_nap", "hyperhive_questions", "hyperhive_telemetry"} <= set(heavy_modules())


def test_listing_commands_loads_the_plugins_and_the_check_sees_it(hyperhive, clean_env):
    """The check can fail: ``--help`` lists plugin commands, so it must load the plugins."""
    result, modules = run(quick_entry(hyperhive), "--help", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "wake" in result.stdout  # the nap plugin's command
    assert {"hyperhive_nap", "pluggy"} <= set(heavy(modules))


async def test_send_status_agents_import_nothing_heavy(make_pm, tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    async with running_hive(tmp_path, make_pm(), QUIET) as hive:
        config.write_text(f'[hive]\nstate_dir = "{hive.paths.root}"\n')
        # Paused, the manager only queues what it is sent: its inbox is all that changes.
        await trio.to_thread.run_sync(lambda: request(hive.paths.host_socket, "pause", agent="manager"))

        async def both_ways(*args: str) -> list[str]:
            """Run ``args`` through the quick path and through click; each prints the same."""
            outputs = []
            for entry in (quick_entry(hyperhive), CLICK_ENTRY):
                result, modules = await trio.to_thread.run_sync(
                    lambda entry=entry: run(entry, "-c", str(config), *args, env=clean_env)
                )
                assert result.returncode == 0, result.stderr
                assert heavy(modules) == [], f"{entry} {' '.join(args)} imported heavy modules"
                assert ("click" in modules) == (entry == CLICK_ENTRY), "the quick path must not need click"
                outputs.append(result.stdout)
            return outputs

        quick, click = await both_ways("status")
        assert quick == click
        assert f"state dir  {hive.paths.root}\n" in quick
        assert "manager          manager  idle, paused" in quick
        for args in (["status", "--json"], ["agents"], ["agents", "--json"]):
            quick, click = await both_ways(*args)
            assert quick == click
        assert '"name": "manager"' in quick

        quick, click = await both_ways("send", "manager", "héllo, one")
        ids = [int(re.fullmatch(r"sent message (\d+) to manager\n", line)[1]) for line in (quick, click)]
        bodies = {message.id: message.body for message in await hive.broker.recent_for("manager")}
        assert [bodies[id_] for id_ in ids] == ["héllo, one", "héllo, one"]
        # With one key, the second way gets the message the first stored.
        once = await both_ways("send", "--idempotency-key", "k-1", "manager", "two", "--retry-for=0")
        assert once[0] == once[1]
        assert [message.body for message in await hive.broker.recent_for("manager")].count("two") == 1


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "[hive]\nstate_dir = 5\n",
            'hyperhive.toml: hive.state_dir must be a path string like "/var/lib/hyperhive", not 5',
        ),
        ("hive = 3\n", "hyperhive.toml: [hive] must be a table, not 3"),
        (
            "[hive\n",
            "hyperhive.toml is not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)",
        ),
    ],
)
@pytest.mark.parametrize("args", [["send", "manager", "hi"], ["status"], ["agents", "--json"]])
def test_a_bad_state_dir_is_one_clear_line_either_way(tmp_path, hyperhive, clean_env, text, error, args):
    (tmp_path / "hyperhive.toml").write_text(text)
    for entry in (quick_entry(hyperhive), CLICK_ENTRY):
        result, modules = run(entry, *args, env=clean_env)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"Error: {error}\n"
        assert heavy(modules) == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[hive]\nstate_dir = "{state}"\n', "the hive is not running (no socket at {state}/host.sock); start it with"),
        # The quick read skips the rest of the file: without a daemon, the full check explains.
        ('[hive]\nstate_dri = "{state}"\n', "hyperhive.toml: unknown key hive.state_dri. Valid keys in [hive]: "),
        ('[hive]\nstate_dir = "{state}"\n[nap]\nnap_minutes = 5\n', "hyperhive.toml: unknown key nap.nap_minutes."),
        ('[hive]\nplugins = ["warp-drive"]\n', "plugin 'warp-drive' is selected by [hive] plugins in hyperhive.toml"),
    ],
)
# send waits for a hive that is starting unless told not to (docs/hostsock.md).
@pytest.mark.parametrize("args", [["send", "--retry-for", "0", "manager", "hi"], ["status"]])
def test_without_a_daemon_the_config_is_checked_in_full(tmp_path, hyperhive, clean_env, text, error, args):
    state = tmp_path / "state"
    (tmp_path / "hyperhive.toml").write_text(text.format(state=state))
    for entry in (quick_entry(hyperhive), CLICK_ENTRY):
        result, _ = run(entry, *args, env=clean_env)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith(f"Error: {error.format(state=state)}")
        assert result.stderr.count("\n") == 1


def test_a_named_config_that_does_not_exist_says_how_to_make_one(tmp_path, hyperhive, clean_env):
    missing = tmp_path / "nowhere.toml"
    for args in (["-c", str(missing), "status"], [f"--config={missing}", "send", "manager", "hi"]):
        result = subprocess.run([hyperhive, *args], capture_output=True, text=True, env=clean_env, timeout=60)
        assert result.returncode == 1
        assert result.stderr == (
            f"Error: config file {missing} does not exist; create one with `hyperhive init --config {missing}`\n"
        )


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["send", "manager"], "Error: Missing argument 'MESSAGE'."),
        (["status", "--bogus"], "Error: No such option '--bogus'."),
        (["send", "manager", "hi", "--help"], "Usage: hyperhive send [OPTIONS] NAME MESSAGE"),
        (["--help"], "hyperhive: a swarm of Claude Code agents"),
        (["-c"], "Error: Option '-c' requires an argument."),
    ],
)
def test_anything_but_the_plain_forms_goes_to_click(hyperhive, clean_env, args, output):
    result = subprocess.run([hyperhive, *args], capture_output=True, text=True, env=clean_env, timeout=60)
    assert output in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (["status"], (fastcli.status, None, False)),
        (["agents", "--json"], (fastcli.agents, None, True)),
        (
            ["-c", "a.toml", "-vv", "-q", "send", "bee", "hi there"],
            (fastcli.send, "a.toml", "bee", "hi there", 30.0, None),
        ),
        (
            ["send", "--retry-for", "0", "bee", "hi", "--idempotency-key=k1"],
            (fastcli.send, None, "bee", "hi", 0.0, "k1"),
        ),
        (
            ["send", "bee", "--retry-for=2.5", "a=b", "--idempotency-key", "k"],
            (fastcli.send, None, "bee", "a=b", 2.5, "k"),
        ),
        (["send", "--retry-for", "-1", "bee", "hi"], None),
        (["send", "--retry-for=soon", "bee", "hi"], None),
        (["send", "bee", "hi", "--idempotency-key"], None),
        (["--config=a.toml", "--verbose", "status", "--json"], (fastcli.status, "a.toml", True)),
        (["-ca.toml", "agents"], (fastcli.agents, "a.toml", False)),
        (["--config", "", "send", "bee", "-"], None),  # "-" and every other dash argument: click decides
        (["send", "bee", "--", "-x"], None),
        (["send", "bee", "hi", "extra"], None),
        (["status", "--json", "--json", "x"], None),
        (["--config"], None),
        (["-c", "--help", "status"], None),
        (["-vc", "a.toml", "status"], None),
        (["--version"], None),
        (["pause", "bee"], None),
        ([], None),
    ],
)
def test_which_command_lines_run_without_click(argv, call):
    command = fastcli.parse(argv)
    assert (command and (command.func, *command.args)) == call


def test_shell_completion_goes_to_click(hyperhive, clean_env):
    env = clean_env | {"_HYPERHIVE_COMPLETE": "bash_complete", "COMP_WORDS": "hyperhive statu", "COMP_CWORD": "1"}
    result = subprocess.run([hyperhive, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout == "plain,status\n"


@pytest.mark.parametrize(
    "hive",
    [
        "",
        '[hive]\nstate_dir = "{tmp}/somewhere"\n',
        '[hive]\nstate_dir = "~/hive-state"\nplugins = ["nap"]\n[nap]\n',
        '[hive]\nstate_dir = "relative/state"\n',
    ],
)
@pytest.mark.parametrize("found_by", ["flag", "env", "cwd"])
def test_the_host_socket_is_where_the_daemon_puts_it(tmp_path, monkeypatch, clean_env, hive, found_by):
    """The quick read of ``[hive] state_dir`` agrees with the daemon's fully validated config."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / ("hyperhive.toml" if found_by == "cwd" else "elsewhere.toml")
    path.write_text(hive.format(tmp=tmp_path))
    if found_by == "env":
        monkeypatch.setenv("HYPERHIVE_CONFIG", str(path))
    flag = str(path) if found_by == "flag" else None
    expected = state_paths(boot(flag).config).host_socket
    assert fastcli.host_socket(flag) == expected
    if not hive:
        assert expected == default_state_dir() / "host.sock"


async def test_the_client_reads_long_replies_streams_events_and_explains_refusals(make_pm, tmp_path):
    """hostclient: replies that span many reads, a live event stream, a request the daemon cuts off."""
    async with running_hive(tmp_path, make_pm(), QUIET) as hive:
        sock = hive.paths.host_socket

        def client() -> None:
            request(sock, "pause", agent="manager")
            bodies = [f"{index:02d}" + "é" * 30_000 for index in range(20)]  # 60 kB each, under max_body_bytes
            sent = [request(sock, "send", to="manager", body=body)["id"] for body in bodies]
            received = request(sock, "recv", agent="manager", limit=20)  # one reply line of 1.2 MB
            assert [message["id"] for message in reversed(received)] == sent
            assert [message["body"] for message in reversed(received)] == bodies

            events = subscribe(sock, agent="operator", after_id=0)
            assert next(events)["type"] == "message_sent"
            events.close()

            with pytest.raises(HostCommandError, match=r"^request over 1048576 bytes; send one JSON object per line$"):
                request(sock, "send", to="manager", body="x" * 2_000_000)
            assert (
                request(sock, "agent", agent="manager")["inbox_depth"] == 20
            )  # the connection was refused, not the hive

        with trio.fail_after(60):
            await trio.to_thread.run_sync(client)
