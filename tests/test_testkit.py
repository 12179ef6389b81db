"""The test kit, hyperhive_core.testing: a pytest plugin, cheap to import, and its documented example passes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from hyperhive_core.errors import PluginError
from hyperhive_core.hostclient import HostCommandError
from hyperhive_core.rehearsal import parse_scenario
from hyperhive_core.testing import CHROMIUM, HeldClock, Script, needs_claude

REPO = Path(__file__).resolve().parent.parent


def docs_example() -> dict[str, str]:
    """The files of the worked example in docs/plugins.md, by the path each block's first line names."""
    docs = (REPO / "docs" / "plugins.md").read_text()
    section = re.search(r"^## Testing your plugin$(.*?)(?=^## )", docs, re.MULTILINE | re.DOTALL)
    assert section, "docs/plugins.md has no '## Testing your plugin' section"
    blocks = re.findall(r"^```(?:python|toml)\n# (\S+)\n(.*?)^```$", section.group(1), re.MULTILINE | re.DOTALL)
    return dict(blocks)


def run_pytest(directory: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """pytest in ``directory`` as a plugin's author runs it: the kit comes from the entry point alone."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_example_has_every_file():
    assert sorted(docs_example()) == [
        "hyperhive_hello.py",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/test_hello.py",
    ]


@needs_claude
@pytest.mark.slow
def test_the_documented_example_passes(tmp_path):
    for name, text in docs_example().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    ran = run_pytest(tmp_path)
    summary = ran.stdout.strip().splitlines()[-1]
    if CHROMIUM.exists():
        assert re.fullmatch(r"4 passed in .*", summary), ran.stdout + ran.stderr
    else:  # the Chromium test skips, saying why
        assert re.fullmatch(r"3 passed, 1 skipped in .*", summary), ran.stdout + ran.stderr
        assert "install chromium" in ran.stdout or "Playwright is not installed" in ran.stdout


def test_the_kit_is_a_pytest_plugin_whose_fixtures_need_no_import(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    listed = run_pytest(tmp_path, "--fixtures").stdout
    assert "fixtures defined from hyperhive_core.testing" in listed
    for fixture in ("make_pm", "make_config", "local_plugin", "chromium", "clean_env", "hyperhive"):
        assert re.search(rf"^{fixture}( \[session scope\])? -- .*testing\.py", listed, re.MULTILINE), fixture


def test_importing_the_kit_loads_no_event_loop_web_server_or_browser():
    code = "import sys, hyperhive_core.testing; print(json.dumps(sorted(set(sys.modules) & set(sys.argv[1:]))))"
    heavy = ["trio", "quart", "playwright", "hyperhive_core.daemon", "hyperhive_web"]
    ran = subprocess.run([sys.executable, "-c", f"import json; {code}", *heavy], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == []


def test_a_script_is_the_scenario_it_says():
    script = Script()
    script.on("worker", "greet", name="greeting").call("greet", {"name": 'Ada "the first"'}, text="…").reply(
        "said: {{result}}", delay=0.5
    )
    script.on("worker", regex=r"(?s)from (?P<who>\w+)", once=True).reply("hi {{match.who}}")
    script.otherwise("nothing scripted")
    scenario = parse_scenario(str(script))
    greeting, once = scenario.rules_for("worker")[:2]
    assert (greeting.name, greeting.when) == ("greeting", "greet")
    assert [step.tool for step in greeting.steps] == ["mcp__hyperhive__greet", None]
    assert greeting.steps[1].delay == 0.5
    assert once.once
    assert len(scenario.rules_for("manager")) == 1  # the "*" rule


def test_a_script_says_what_is_wrong_with_it():
    rule_without_steps = Script()
    rule_without_steps.on("worker", "greet")
    with pytest.raises(
        ValueError, match=r"a rule for 'worker' has no steps; add \.call\(\.\.\.\) or \.reply\(\.\.\.\)"
    ):
        str(rule_without_steps)
    odd_input = Script()
    odd_input.on("worker").call("greet", {"when": object()})
    with pytest.raises(TypeError, match="TOML holds strings, paths, numbers, booleans, lists and tables, not object"):
        str(odd_input)


def test_make_pm_loads_by_name_and_names_what_is_missing(make_pm):
    assert "nap" in dict(make_pm("nap").list_name_plugin())
    with pytest.raises(PluginError, match=r"plugin 'nonesuch' is selected by make_pm but not installed"):
        make_pm("nonesuch")


def test_make_config_takes_toml_and_sections(make_pm, make_config, tmp_path):
    config = make_config(make_pm(), "[hive]\nadmin_group = 'adm'\n", claude={"stall_seconds": 9})
    assert config.hive.admin_group == "adm"
    assert config.hive.state_dir == tmp_path / "state"  # the kit's default, kept beside the given key
    assert config.section("claude").stall_seconds == 9


def test_local_plugin_loads_an_uninstalled_module_here_and_in_a_subprocess(local_plugin, make_pm, tmp_path, hyperhive):
    source = tmp_path / "src"
    source.mkdir()
    (source / "kit_probe.py").write_text(
        textwrap.dedent("""
            import click
            from hyperhive_core import hookimpl

            @hookimpl
            def register_commands(cli):
                @cli.command()
                def probe():
                    click.echo("probe loaded")
        """)
    )
    local_plugin("probe", "kit_probe", source)
    assert "probe" in dict(make_pm("probe").list_name_plugin())
    ran = subprocess.run([hyperhive, "probe"], capture_output=True, text=True, timeout=60)
    assert ran.stdout == "probe loaded\n", ran.stderr
    with pytest.raises(ValueError, match=r"give a plugin name and a 'module' or 'module:attr'"):
        local_plugin("no good", "kit_probe")
    with pytest.raises(ValueError, match=r"local_plugin\('probe', 'kit_probe:a:b'\)"):
        local_plugin("probe", "kit_probe:a:b")


@pytest.fixture
def hello(local_plugin, tmp_path):
    """The documented example's plugin, loadable as ``hello``."""
    source = tmp_path / "hello-src"
    source.mkdir()
    (source / "hyperhive_hello.py").write_text(docs_example()["hyperhive_hello.py"])
    local_plugin("hello", "hyperhive_hello", source)


@pytest.mark.slow
def test_a_daemon_answers_host_commands_and_plugin_commands(hello, hive_daemon, tmp_path):
    quiet = Script()
    quiet.otherwise("nothing to do")
    state = tmp_path / "hive-state"
    daemon = hive_daemon(
        quiet, plugins=["web", "hello"], agents={"worker": {}}, web={"port": 0}, hive={"state_dir": state}
    )
    assert daemon.socket == state / "host.sock"
    assert daemon.request("greetings", agent="worker") == {"agent": "worker", "greetings": 0}
    with pytest.raises(HostCommandError, match="no agent named 'ghost'; known agents: manager, worker"):
        daemon.request("greetings", agent="ghost")
    counted = daemon.cli("greetings", "worker")
    assert (counted.returncode, counted.stdout) == (0, "0\n"), counted.stderr
    unknown = daemon.cli("greetings", "ghost")
    assert unknown.returncode == 1
    assert "no agent named 'ghost'" in unknown.stderr
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=\S+", daemon.login_url())
    assert daemon.stop() == 0


def test_a_daemon_that_cannot_start_says_why(hive_daemon):
    with pytest.raises(AssertionError, match=r"(?s)`hyperhive up` exited with 1:.*nonesuch"):
        hive_daemon(Script(), nonesuch={"key": 1})


@pytest.mark.slow
async def test_chromium_logs_in_to_a_daemons_dashboard(hive_daemon, chromium):
    quiet = Script()
    quiet.otherwise("nothing to do")
    daemon = await trio.to_thread.run_sync(lambda: hive_daemon(quiet, plugins=["web"], web={"port": 0}))
    errors = []
    page = await chromium.dashboard(daemon, "/agent/manager/", errors)
    assert (await chromium.run(lambda: page.url)).endswith("/agent/manager/")  # logged in: not sent to /login
    assert errors == []


def test_without_a_browser_a_chromium_test_skips_saying_what_to_install(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_page.py").write_text(
        "def test_page(chromium):\n    raise AssertionError('ran without a browser')\n"
    )
    env = {**os.environ, "HYPERHIVE_CHROMIUM": str(tmp_path / "no-chromium"), "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path)}
    ran = run_pytest(tmp_path, env=env)
    assert ran.stdout.strip().splitlines()[-1].startswith("1 skipped"), ran.stdout + ran.stderr
    assert "Chromium does not start" in ran.stdout
    assert "install chromium or `playwright install`" in ran.stdout


async def test_a_held_clock_jumps_only_when_told(autojump_clock):
    clock = HeldClock(autojump_clock)
    start = trio.current_time()
    with trio.fail_after(60):  # a bare autojump clock jumps to this deadline while the thread works
        await trio.to_thread.run_sync(time.sleep, 0.2)
    assert trio.current_time() == start
    with trio.fail_after(7200):
        await clock.advance(3600)
    assert trio.current_time() - start >= 3600
