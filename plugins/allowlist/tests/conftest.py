"""Run the real checker the way Claude Code does: a process, the hook's JSON on stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

# What the tests' agent may run; several are risky on purpose, so that the checker's
# own rules (not a missing pattern) must stop the bypass attempts.
PATTERNS = [
    "git *",
    "pytest*",
    "nix build .*",
    "python3 *",
    "bash *",
    "node *",
    "perl *",
    "ls *",
    "cat *",
    "echo *",
    "grep *",
    "find *",
    "touch *",
    "cd *",
    "[ *",
    "test *",
    "printf *",
    "sort *",
    "tee *",
    "cp *",
    "mv *",
    "ln *",
    "sed *",
    "tar *",
    "curl *",
    "wget *",
    "dd *",
    "mkdir *",
]
WRITABLE = ["/state/**", "/tmp/**"]


def hook_event(command: str, cwd: str = "/state", tool: str = "Bash") -> str:
    """A PreToolUse event as Claude Code 2.1.330 writes it on the hook's stdin."""
    return json.dumps(
        {
            "session_id": "cbb8c4f3-0000-4000-8000-000000000000",
            "transcript_path": "/state/.claude/projects/-state/cbb8c4f3.jsonl",
            "cwd": cwd,
            "permission_mode": "default",
            "hook_event_name": "PreToolUse",
            "tool_name": tool,
            "tool_input": {"command": command, "description": "x"},
            "tool_use_id": "toolu_test",
        }
    )


def run_checker(stdin: str, config: object) -> str | None:
    """The deny reason the checker printed, or ``None`` when it let the call through."""
    argument = config if isinstance(config, str) else json.dumps(config)
    done = subprocess.run(
        [sys.executable, "-I", "-m", "hyperhive_allowlist.check", argument],
        input=stdin.encode("utf-8", "surrogatepass"),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    if not done.stdout:
        return None
    output = json.loads(done.stdout)["hookSpecificOutput"]
    assert output["hookEventName"] == "PreToolUse"
    assert output["permissionDecision"] == "deny"
    reason = output["permissionDecisionReason"]
    assert reason.startswith("hyperhive allow-list: ")
    return reason


@pytest.fixture
def raw_check() -> Callable[[str, object], str | None]:
    """``raw_check(stdin, config)``: the checker on any input and configuration."""
    return run_checker


@pytest.fixture
def event() -> Callable[..., str]:
    """``event(command, cwd="/state", tool="Bash")``: a hook event's JSON."""
    return hook_event


@pytest.fixture
def default_config() -> dict[str, list[str]]:
    return {"bash": PATTERNS, "writable": WRITABLE}


@pytest.fixture
def check() -> Callable[..., str | None]:
    """``check(command, patterns=PATTERNS, writable=WRITABLE, cwd="/state")``: the deny reason or ``None``."""

    def run(
        command: str, patterns: list[str] = PATTERNS, writable: list[str] = WRITABLE, cwd: str = "/state"
    ) -> str | None:
        return run_checker(hook_event(command, cwd), {"bash": patterns, "writable": writable})

    return run
