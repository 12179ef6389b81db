"""The plugin's hooks: the agent section, its validation, the session options, the panel."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import hyperhive_web
import pytest
import trio
from hyperhive_allowlist import plugin
from hyperhive_web import dashboard_of

from hyperhive_core import ConfigError, hookimpl, root_cause
from hyperhive_core.testing import needs_claude, running_hive

IDLE = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def refused(make_pm, tmp_path):
    """Why a hive whose worker has this [allowlist] table does not start."""

    async def start(table: dict) -> str:
        with pytest.raises(BaseException) as caught:  # noqa: PT011 - the daemon's nurseries wrap it
            async with running_hive(tmp_path, make_pm(allowlist=plugin), IDLE, agents={"worker": {"allowlist": table}}):
                pass
        error = root_cause(caught.value)
        assert isinstance(error, ConfigError), error
        return str(error)

    return start


async def test_every_bad_pattern_is_refused_at_once(refused):
    message = await refused({"bash": ["git *", "* --help", "", "ls\nrm"], "writable": ["work/**", "/state/.git/**"]})
    assert "agent 'worker' has an invalid config: " in message
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
async def test_a_malformed_section_is_refused(refused, table, problem):
    message = await refused(table)
    assert "invalid config" in message
    assert problem in message


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


def page_html(url: str, token: str) -> str:
    """A dashboard page as a script fetches it, with the operator token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@needs_claude
async def test_the_agent_page_shows_the_list(make_pm, tmp_path):
    """The typed section, and the allow-list panel on the real dashboard's agent pages."""
    agents = {
        "worker": {"allowlist": {"bash": ["git *", "echo <b>"]}},
        "narrow": {"allowlist": {"bash": ["git *"], "writable": [f"/state/{HOSTILE}/**"]}},
        "shy": {"allowlist": {"bash": []}},
    }
    pm = make_pm(allowlist=plugin, web=hyperhive_web)
    async with running_hive(tmp_path, pm, IDLE, agents=agents, web={"port": 0}) as hive:
        sections = {name: hive.agents.get(name).config.section("allowlist") for name in ("worker", "narrow", "manager")}
        dashboard = dashboard_of(hive)
        pages = {}
        with trio.fail_after(30):
            for name in ("worker", "narrow", "shy", "manager"):
                url = f"{dashboard.url}/agent/{name}/"
                pages[name] = await trio.to_thread.run_sync(page_html, url, dashboard.token)
    assert sections["worker"] == plugin.AllowlistSection(["git *", "echo <b>"], ["/state/**", "/tmp/**"])
    assert sections["narrow"].writable == [f"/state/{HOSTILE}/**"]
    assert sections["manager"] is None
    assert "SH3LL 4LL0W-L1ST" in pages["worker"]
    assert "<li><code>git *</code></li><li><code>echo &lt;b&gt;</code></li>" in pages["worker"]
    assert "Commands may write only here (never hidden files):" in pages["worker"]
    assert "<li><code>/state/**</code></li><li><code>/tmp/**</code></li>" in pages["worker"]
    assert "<li><code>/state/&lt;script&gt;alert(1)&lt;/script&gt;/**</code></li>" in pages["narrow"]
    assert HOSTILE not in pages["narrow"]
    assert "may run no shell commands" in pages["shy"]
    assert "No allow-list" in pages["manager"]
