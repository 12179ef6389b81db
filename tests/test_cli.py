"""The command line, including a third-party plugin installed with pip."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hyperhive_core import hookimpl
from hyperhive_core.cli import make_cli
from hyperhive_core.errors import PluginError
from hyperhive_core.testing import Script

THIRD_PARTY = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "hyperhive-hello"
        version = "1.2.3"

        [project.entry-points.hyperhive]
        hello = "hyperhive_hello"
    """,
    "hyperhive_hello.py": """
        import click
        import trio
        from hyperhive_core import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                "Greet from a third-party plugin."
                click.echo("hello from a plugin")

        @hookimpl
        def hive_services(hive):
            async def unlucky(*, task_status=trio.TASK_STATUS_IGNORED):
                task_status.started()
                raise RuntimeError("unlucky service")
            return [unlucky]
    """,
}


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory):
    """The hello plugin, pip-installed from a temp dir into its own site dir."""
    source = tmp_path_factory.mktemp("hello-src")
    for name, text in THIRD_PARTY.items():
        (source / name).write_text(textwrap.dedent(text))
    site = tmp_path_factory.mktemp("hello-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)],
        check=True,
        capture_output=True,
    )
    return site


@pytest.mark.slow
def test_third_party_plugin_is_discovered(third_party_site, clean_env, hyperhive):
    env = clean_env | {"PYTHONPATH": str(third_party_site)}
    help_text = subprocess.run([hyperhive, "--help"], env=env, capture_output=True, text=True, check=True).stdout
    assert "Greet from a third-party plugin." in help_text
    ran = subprocess.run([hyperhive, "hello"], env=env, capture_output=True, text=True, check=True)
    assert ran.stdout == "hello from a plugin\n"
    listed = subprocess.run([hyperhive, "plugins"], env=env, capture_output=True, text=True, check=True).stdout
    assert "hello       hyperhive-hello 1.2.3  hive_services, register_commands" in listed


@pytest.mark.slow
def test_crashing_plugin_service_restarts_and_daemon_stays_up(third_party_site, clean_env, tmp_path, hyperhive):
    (tmp_path / "hyperhive.toml").write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')
    env = clean_env | {"PYTHONPATH": str(third_party_site)}
    daemon = subprocess.Popen([hyperhive, "up"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        crashes = []
        deadline = time.monotonic() + 90  # a loaded machine starts the daemon slowly
        while len(crashes) < 3 and time.monotonic() < deadline:
            line = daemon.stderr.readline()
            if "service hello:unlucky crashed" in line:
                crashes.append(line)
        assert len(crashes) == 3, "the service was not restarted"
        assert daemon.poll() is None, "the daemon died with its service"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.kill()
        daemon.stderr.close()


def test_hook_register_commands(make_pm):
    class Hello:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                click.echo("hi")

    result = CliRunner().invoke(make_cli(make_pm(hello=Hello())), ["hello"])
    assert result.output == "hi\n"


@pytest.mark.parametrize("taken", ["up", "greet"])
def test_command_name_clash_names_both(make_pm, taken):
    def plugin(name):
        class Plugin:
            @hookimpl
            def register_commands(self, cli):
                cli.command(name=taken)(lambda: None)

        return Plugin()

    with pytest.raises(PluginError, match=f"command '{taken}' is registered by both '(hyperhive|one)' and 'two'"):
        make_cli(make_pm(**({"one": plugin("one")} if taken == "greet" else {}), two=plugin("two")))


def test_debug_commands_are_hidden(make_pm):
    cli = make_cli(make_pm())
    help_text = CliRunner().invoke(cli, ["--help"]).output
    commands = [line.split()[0] for line in help_text.split("Commands:")[1].splitlines() if line.strip()]
    assert "debug" not in commands
    assert {"init", "plugins", "up"} <= set(commands)
    assert CliRunner().invoke(cli, ["debug", "--help"]).exit_code == 0


def test_init_writes_config_and_refuses_to_overwrite(clean_env, tmp_path, hyperhive):
    first = subprocess.run([hyperhive, "init"], env=clean_env, capture_output=True, text=True)
    assert first.returncode == 0
    assert first.stdout == "wrote hyperhive.toml\n"
    assert "[hive]" in (tmp_path / "hyperhive.toml").read_text()
    again = subprocess.run([hyperhive, "init"], env=clean_env, capture_output=True, text=True)
    assert again.returncode == 1
    assert "hyperhive.toml already exists; pass --force to overwrite it" in again.stderr


def test_plugins_lists_bundled_and_honours_env(clean_env, hyperhive):
    listed = subprocess.run([hyperhive, "plugins"], env=clean_env, capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in listed.splitlines()]
    assert names == ["allowlist", "compaction", "crashwatch", "nap", "questions", "telemetry", "tracing", "web"]
    only_nap = subprocess.run(
        [hyperhive, "plugins"], env=clean_env | {"HYPERHIVE_LOAD_PLUGINS": "nap"}, capture_output=True, text=True
    )
    assert [line.split()[0] for line in only_nap.stdout.splitlines()] == ["nap"]


def test_bad_config_is_one_clear_line(clean_env, tmp_path, hyperhive):
    (tmp_path / "hyperhive.toml").write_text("[hive]\nstate_dri = '/x'\n")
    result = subprocess.run([hyperhive, "plugins"], env=clean_env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == (
        "Error: hyperhive.toml: unknown key hive.state_dri. Valid keys in [hive]: admin_group, "
        "container_backend, manager, plugins, state_dir.\n"
    )


def test_debug_config_prints_every_section_with_defaults_filled_in(clean_env, tmp_path, hyperhive):
    """Sections of every shape: core's, a table of named agents, a plugin's."""
    config = tmp_path / "hive.toml"
    config.write_text(
        '[hive]\nmanager = "boss"\nstate_dir = "~/hive"\n[agents.scout]\ninstructions = "map\\nthe docs"\n'
        "[nap]\nmax_seconds = 30\n"
    )
    result = subprocess.run(
        [hyperhive, "-c", str(config), "debug", "config"], env=clean_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["path"] == str(config)
    sections = shown["sections"]
    assert sections["hive"]["manager"] == "boss"
    assert sections["hive"]["state_dir"] == str(Path("~/hive").expanduser())
    assert sections["broker"]["max_attempts"] == 5  # a default
    assert sections["agents"]["scout"]["instructions"] == "map\nthe docs"
    assert sections["agents"]["scout"]["model"] is None
    assert sections["nap"]["max_seconds"] == 30


def test_every_json_flag_is_the_shared_option():
    """Core's and the bundled plugins' commands spell --json one way, so scripts can rely on it."""
    from hyperhive_core.plugins import make_plugin_manager

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))

    flags = {
        " ".join(path): param
        for path, command in walk(make_cli(make_plugin_manager(None)), ())
        for param in command.params
        if "--json" in param.opts
    }
    assert sorted(flags) == [
        "agents",
        "approvals",
        "dead drop",
        "dead list",
        "dead requeue",
        "dead show",
        "events",
        "plugins",
        "questions",
        "stats",
        "status",
    ]
    assert all((param.name, param.is_flag, param.opts) == ("as_json", True, ["--json"]) for param in flags.values())


def test_the_readme_shows_only_commands_help_lists():
    """A newcomer copies the README's examples: each command they run is one ``--help`` offers, none hidden."""
    from hyperhive_core.plugins import make_plugin_manager

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert readme.split("```sh\n", 1)[1].startswith("make up ")
    assert "\nmake test " in readme.split("```", 2)[1]
    cli = make_cli(make_plugin_manager(None))
    listed = {name for name, command in cli.commands.items() if not command.hidden}
    shown = re.findall(r"^\.venv/bin/hyperhive ((?:-\S+ )*)([a-z][a-z-]*)", readme, re.M)
    assert len(shown) >= 5
    assert {command for _, command in shown} <= listed


def test_up_logs_the_dashboards_address_once(hive_daemon):
    script = Script()
    script.otherwise("ok")
    daemon = hive_daemon(script, plugins=["web"], web={"port": 0})
    url = daemon.login_url().split("/login")[0]
    daemon.stop()
    log = daemon.log.read_text()
    assert log.count(f"Running on {url}") == 1, log
    # In the daemon's own format, as every other line.
    (line,) = [line for line in log.splitlines() if "Running on" in line]
    assert " INFO    hypercorn.error: Running on " in line


def test_config_is_taken_before_or_after_the_command(clean_env, tmp_path, hyperhive):
    def run(*args):
        return subprocess.run([hyperhive, *args], env=clean_env, capture_output=True, text=True, timeout=120)

    assert run("init", "--config", "after.toml").stdout == "wrote after.toml\n"
    assert run("-c", "before.toml", "init").stdout == "wrote before.toml\n"
    assert run("-c", "after.toml", "init", "-c", "./after.toml", "--force").stdout == "wrote after.toml\n"
    twice = run("-c", "before.toml", "init", "--config", "after.toml")
    assert twice.returncode == 2
    assert twice.stderr.endswith(
        "Error: --config is given twice, as before.toml before the command and after.toml after it; "
        "give it once, before or after the command name\n"
    )
    missing = run("up", "--config", "missing.toml")
    assert (missing.returncode, missing.stderr) == (
        1,
        "Error: config file missing.toml does not exist; create one with `hyperhive init --config missing.toml`\n",
    )


def test_a_plugins_command_is_found_through_the_config_given_after_it(clean_env, tmp_path, hyperhive):
    def run(*args):
        return subprocess.run([hyperhive, *args], env=clean_env, capture_output=True, text=True, timeout=120)

    (tmp_path / "hyperhive.toml").write_text('[hive]\nplugins = ["telemetry"]\n')
    (tmp_path / "napping.toml").write_text('[hive]\nplugins = ["nap"]\n')
    for args in (["-c", "napping.toml", "wake"], ["wake", "-c", "napping.toml"], ["wake", "--config=napping.toml"]):
        shown = run(*args, "--help")
        assert (shown.returncode, shown.stderr) == (0, ""), args
        assert "End agent NAME's nap now" in shown.stdout
    # The default config has no nap plugin, so no wake command.
    missing = run("wake", "--help")
    assert missing.returncode == 2
    assert "No such command 'wake'" in missing.stderr


def test_every_command_that_reads_the_config_takes_config():
    """Core's and the bundled plugins' commands: all but those that read no hive config."""
    from hyperhive_core.plugins import make_plugin_manager

    def leaves(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield from leaves(sub, (*path, name)) if isinstance(sub, click.Group) else [((*path, name), sub)]

    without = {
        " ".join(path)
        for path, command in leaves(make_cli(make_plugin_manager(None)), ())
        if not any("--config" in param.opts for param in command.params)
    }
    assert without == {"install-service", "rehearse"}  # its own --config-path; a scenario, no hive
