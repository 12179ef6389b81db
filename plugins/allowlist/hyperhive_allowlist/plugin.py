"""The allowlist plugin's hooks: the agent section, its checks, the session, the panel."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hyperhive_allowlist.patterns import MAX_PATTERNS, pattern_problem
from hyperhive_allowlist.writable import DEFAULT_WRITABLE, MAX_GRANTS, for_state, grant_problem
from hyperhive_core import Panel, hookimpl, option

hyperhive_api = ">=1.0,<2"  # the plugin API this plugin works with (docs/plugins.md#versions)

if TYPE_CHECKING:
    from hyperhive_core import AgentConfig, Hive, SessionOptions

SECTION = "allowlist"
# Claude Code lets a call through when its hook times out (2.1.330), so leave the
# checker far more time than its bounded work needs, even on a loaded machine.
HOOK_TIMEOUT_SECONDS = 120


@dataclass
class AllowlistSection:
    """The Bash commands an agent may run, enforced by a Claude Code PreToolUse hook."""

    bash: list[str] = option(
        [],
        help='Patterns in Claude Code\'s Bash(…) grammar, e.g. "git *", "pytest*". Every part of a\n'
        "command (split on &&, ||, ;, |, & and newlines) must match one. Empty: no shell at all.",
    )
    writable: list[str] = option(
        DEFAULT_WRITABLE,
        help="Where commands may write (redirections, and the files options and operands of known\n"
        'programs name: git --output, sort -o, cp, tee, …), e.g. "/state/work/**". /state is the\n'
        "agent's state dir; * is any text in one path component, a whole ** component any number\n"
        "of them. Hidden files and directories are never writable.",
    )


def section_of(hive: Hive, agent: str) -> AllowlistSection | None:
    return hive.agents.get(agent).config.section(SECTION)


def agent_writable(hive: Hive, agent: str, section: AllowlistSection) -> list[str]:
    """The section's ``writable`` paths, with ``/state`` where the agent sees its state dir."""
    return for_state(section.writable, str(hive.backend.view(hive.container_spec(agent)).state))


def hook_command(patterns: list[str], writable: list[str]) -> str:
    """The shell command Claude Code runs before each Bash call.

    ``-I`` keeps the agent's working directory and environment out of Python's
    import path. If the checker cannot even start, exit status 2 denies the call:
    a hook that fails any other way would let it through.
    """
    config = json.dumps({"bash": patterns, "writable": writable}, separators=(",", ":"))
    checker = shlex.join([sys.executable, "-I", "-m", "hyperhive_allowlist.check", config])
    failed = "hyperhive allow-list: the checker could not run, so Bash is blocked; tell the operator"
    return f"{checker} || {{ echo {shlex.quote(failed)} >&2; exit 2; }}"


@hookimpl
def register_agent_sections(register: Callable[[str, type], None]) -> None:
    register(SECTION, AllowlistSection)


@hookimpl
def validate_agent_config(agent: str, config: AgentConfig) -> Iterable[str] | None:
    section = config.section(SECTION)
    if section is None:
        return None
    if len(section.bash) > MAX_PATTERNS:
        problems = [f"[allowlist] bash has {len(section.bash)} patterns; at most {MAX_PATTERNS} are allowed"]
    else:
        problems = [f"[allowlist] bash: {problem}" for pattern in section.bash if (problem := pattern_problem(pattern))]
    if len(section.writable) > MAX_GRANTS:
        problems.append(f"[allowlist] writable has {len(section.writable)} paths; at most {MAX_GRANTS} are allowed")
    else:
        found = (grant_problem(path) for path in section.writable)
        problems += [f"[allowlist] writable: {problem}" for problem in found if problem]
    return problems


@hookimpl
def configure_session(hive: Hive, agent: str, options: SessionOptions) -> None:
    section = section_of(hive, agent)
    if section is None:
        return
    kept = [tool for tool in options.allowed_tools if tool != "Bash" and not tool.startswith("Bash(")]
    options.allowed_tools = kept + [f"Bash({pattern})" for pattern in section.bash]
    command = hook_command(section.bash, agent_writable(hive, agent, section))
    hook = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT_SECONDS}
    hooks = options.settings.setdefault("hooks", {})
    # Core starts every session with --setting-sources "": no settings file in the
    # agent's home ({"disableAllHooks": true}) can switch this hook off.
    hooks.setdefault("PreToolUse", []).append({"matcher": "Bash", "hooks": [hook]})


@hookimpl
def agent_panels(hive: Hive, agent: str) -> Iterable[Panel]:
    return [
        Panel(
            key="allowlist",
            title="SH3LL 4LL0W-L1ST",
            label="shell allow-list",
            template="allowlist/panel.html",
            context={"section": section_of(hive, agent)},
        )
    ]
