"""Attacks on the bash allow-list: the real checker process judges, and real bash runs what it lets through.

Each command tries to write a hidden file (``.git/config``, whose filters and aliases
run programs) that the allow-list never lets a command write. Whatever the checker
allows is then run by bash, so a hole shows as a changed file, not only as a missing
denial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PATTERNS = ["echo *", "cat *", "git log *", "git --work-tree*"]
ORIGINAL = "[core]\n\tbare = false\n"

# `/dev/stdout` and `/dev/stderr` reopen whatever file descriptor 1 or 2 names; a
# redirection of the same command may have pointed it at a hidden file first.
REOPENING = [
    "echo '[alias]' 1<.git/config >/dev/stdout",
    "echo '[alias]' >/dev/stdout 1<.git/config",
    "echo '[alias]' 2<.git/config 2>/dev/stderr >&2",
    "echo '[alias]' 2<.git/config >>/dev/stderr 1>&2",
    "echo '[alias]' 5<.git/config 1>&5 >/dev/stdout",
    "cat /dev/null 1<.git/config >/dev/stdout",
    "git log -1 --output=/dev/stdout 1<.git/config",
]


def checker(command: str, cwd: Path) -> str | None:
    """The deny reason of the real checker, run as Claude Code runs it; ``None`` if it allows ``command``."""
    config = json.dumps({"bash": PATTERNS, "writable": [f"{cwd}/**"]})
    event = {"hook_event_name": "PreToolUse", "tool_name": "Bash", "cwd": str(cwd), "tool_input": {"command": command}}
    done = subprocess.run(
        [sys.executable, "-I", "-m", "hyperhive_allowlist.check", config],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)["hookSpecificOutput"]["permissionDecisionReason"] if done.stdout else None


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True, timeout=60)
    (tmp_path / ".git" / "config").write_text(ORIGINAL)
    return tmp_path


@pytest.mark.parametrize("command", REOPENING)
def test_a_standard_stream_device_cannot_reopen_a_hidden_file(repo: Path, command: str) -> None:
    reason = checker(command, repo)
    if reason is None:  # let through: see what bash makes of it
        subprocess.run(["bash", "-c", command], cwd=repo, capture_output=True, timeout=60, check=False)
    assert (repo / ".git" / "config").read_text() == ORIGINAL
    assert reason is not None
    assert "reopens whatever file a descriptor names" in reason


@pytest.mark.parametrize(
    "command",
    ["echo hi >/dev/stdout", "echo hi >/dev/stderr 2>&1", "echo hi 2>/dev/null >/dev/stdout", "git log -1 2>&1"],
)
def test_the_standard_streams_stay_writable_on_their_own(repo: Path, command: str) -> None:
    assert checker(command, repo) is None


def test_git_cannot_check_files_out_into_its_own_directory(repo: Path) -> None:
    """A committed file named ``config``, checked out with ``.git`` as the work tree, is git's config."""
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    (repo / "config").write_text("[alias]\n\tst = !touch pwned\n")
    for args in (["add", "config"], ["-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "c"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, timeout=60)
    for command in ["git --work-tree=.git checkout HEAD -- .", f"git --work-tree {repo}/.git reset --hard"]:
        reason = checker(command, repo)
        if reason is None:
            subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, timeout=60, check=False)
        assert (repo / ".git" / "config").read_text() == ORIGINAL
        assert reason is not None
        assert "`--work-tree` (git writes the work tree's files there) writes to" in reason
    assert checker(f"git --work-tree={repo} status", repo) is None
