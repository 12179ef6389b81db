"""The plugin's hooks: the agent section, its validation, the session options, the panel."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import hyperhive_web
import pytest
import trio
from hivekit import needs_claude, running_hive
from hyperhive_allowlist import plugin

from hyperhive_core import hookimpl
from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.config import build_section
from hyperhive_core.errors import ConfigError

IDLE = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'


@pytest.fixture
def checked(make_pm):
    """An agent's config table, built and checked with the plugin loaded."""

    def check(table: dict) -> AgentConfig:
        config = build_section(AgentConfig, table, "agents.worker", "hyperhive.toml")
        return check_agent_config(make_pm(allowlist=plugin), "worker", config, "w.toml")

    return check


def test_the_section_is_typed(checked):
    config = checked({"allowlist": {"bash": ["git *", "pytest*"]}})
    assert config.section("allowlist") == plugin.AllowlistSection(["git *", "pytest*"], ["/state/**", "/tmp/**"])
    assert checked({}).section("allowlist") is None
    narrow = checked({"allowlist": {"bash": ["git *"], "writable": ["/state/work/**"]}})
    assert narrow.section("allowlist").writable == ["/state/work/**"]


def test_every_bad_pattern_is_refused_at_once(checked):
    with pytest.raises(ConfigError) as caught:
        checked({"allowlist": {"bash": ["git *", "* --help", "", "ls\nrm"], "writable": ["work/**", "/state/.git/**"]}})
    message = str(caught.value)
    assert message.startswith("w.toml: agent 'worker' has an invalid config: ")
    assert "[allowlist] bash: pattern '* --help' must start with the command's name" in message
    assert "[allowlist] bash: pattern '' is empty" in message
    assert "[allowlist] bash: pattern 'ls\\nrm' contains a newline" in message
    assert "[allowlist] writable: writable path 'work/**' must be absolute, as the agent sees it" in message
    assert "[allowlist] writable: writable path '/state/.git/**' names a hidden file or directory" in message


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"bash": "git *"}, "allowlist.bash must be a list of strings"),
        ({"bash": [1]}, "allowlist.bash[0] must be a string"),
        ({"shell": ["git *"]}, "unknown key allowlist.shell"),
        ({"bash": ["git *"] * 201}, "[allowlist] bash has 201 patterns; at most 200 are allowed"),
        ({"bash": [], "writable": "/state/**"}, "allowlist.writable must be a list of strings"),
        ({"bash": [], "writable": ["/state/**"] * 101}, "[allowlist] writable has 101 paths; at most 100 are allowed"),
    ],
)
def test_a_malformed_section_is_refused(checked, table, problem):
    with pytest.raises(ConfigError, match="invalid config") as caught:
        checked({"allowlist": table})
    assert problem in str(caught.value)


def test_the_hook_command_runs_the_checker_in_a_shell():
    command = plugin.hook_command(["git *"], ["/state/**", "/tmp/**"])
    event = json.dumps({"tool_name": "Bash", "tool_input": {"command": "git status && rm -rf x"}, "cwd": "/state"})
    done = subprocess.run(["sh", "-c", command], input=event, capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0
    reason = json.loads(done.stdout)["hookSpecificOutput"]["permissionDecisionReason"]
    assert "`rm -rf x` matches none of the allowed patterns" in reason


def test_a_checker_that_cannot_start_still_denies(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    command = plugin.hook_command(["git *"], ["/state/**"])
    done = subprocess.run(["sh", "-c", command], input="{}", capture_output=True, text=True, timeout=30)
    assert done.returncode == 2  # Claude Code's "block this call"; any other failure would let it run
    assert "the checker could not run, so Bash is blocked" in done.stderr


@needs_claude
async def test_session_options_of_an_allow_listed_agent(make_pm, tmp_path):
    class Other:
        @hookimpl(tryfirst=True)
        def configure_session(self, hive, agent, options):
            options.settings["hooks"] = {"PreToolUse": [{"matcher": "Write", "hooks": []}]}

    agents = {
        "worker": {"allowlist": {"bash": ["git *", "pytest*"]}},
        "narrow": {"allowlist": {"bash": ["git *"], "writable": ["/state/work/**", "/tmp/x/*"]}},
    }
    pm = make_pm(allowlist=plugin, other=Other())
    async with running_hive(tmp_path, pm, IDLE, agents=agents) as hive:
        with trio.fail_after(10):
            worker = await hive.harnesses["worker"].session_options()
            narrow = await hive.harnesses["narrow"].session_options()
            manager = await hive.harnesses["manager"].session_options()
    assert "Bash" not in worker.allowed_tools
    assert worker.allowed_tools[-2:] == ["Bash(git *)", "Bash(pytest*)"]
    assert "Read" in worker.allowed_tools
    write, bash = worker.settings["hooks"]["PreToolUse"]
    assert write["matcher"] == "Write"  # another plugin's hook stays
    assert bash["matcher"] == "Bash"
    # /state is where this backend (the process one) shows the agent its state dir
    state = tmp_path / "state" / "agents" / "worker" / "state"
    assert bash["hooks"][0]["command"] == plugin.hook_command(["git *", "pytest*"], [f"{state}/**", "/tmp/**"])
    state = tmp_path / "state" / "agents" / "narrow" / "state"
    [hook] = narrow.settings["hooks"]["PreToolUse"][-1]["hooks"]
    assert hook["command"] == plugin.hook_command(["git *"], [f"{state}/work/**", "/tmp/x/*"])
    # an agent without the section keeps core's behaviour
    assert "Bash" in manager.allowed_tools
    assert not any(tool.startswith("Bash(") for tool in manager.allowed_tools)
    assert len(manager.settings["hooks"]["PreToolUse"]) == 1


@needs_claude
async def test_the_agent_page_shows_the_list(make_pm, tmp_path):
    agents = {"worker": {"allowlist": {"bash": ["git *", "echo <b>"]}}, "shy": {"allowlist": {"bash": []}}}
    async with running_hive(tmp_path, make_pm(allowlist=plugin), IDLE, agents=agents) as hive:
        [worker] = plugin.agent_panels(hive, "worker")
        [shy] = plugin.agent_panels(hive, "shy")
        [manager] = plugin.agent_panels(hive, "manager")
    assert worker.key == "allowlist"
    assert worker.label == "shell allow-list"
    assert "<li><code>git *</code></li>" in worker.html
    assert "<li><code>echo &lt;b&gt;</code></li>" in worker.html
    assert "Commands may write only here (never hidden files):" in worker.html
    assert "<li><code>/state/**</code></li><li><code>/tmp/**</code></li>" in worker.html
    assert "may run no shell commands" in shy.html
    assert "No allow-list" in manager.html


@needs_claude
async def test_hook_agent_panels(make_pm, tmp_path):
    """The allow-list panel on the real dashboard's agent page."""
    agents = {"worker": {"allowlist": {"bash": ["git *", "pytest*"]}}}
    pm = make_pm(allowlist=plugin, web=hyperhive_web)
    async with running_hive(tmp_path, pm, IDLE, agents=agents, web={"port": 0}) as hive:
        page = urllib.request.Request(
            f"{hive.web.url}/agent/worker/", headers={"Authorization": f"Bearer {hive.web.token}"}
        )
        with trio.fail_after(10):
            html = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(page, timeout=10).read().decode())
    assert "SH3LL 4LL0W-L1ST" in html
    assert "<li><code>git *</code></li><li><code>pytest*</code></li>" in html
