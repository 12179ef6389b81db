"""An agent's environment: git ignores the settings of its config files that run programs.

Each case is a repository whose config (or hooks) would make real git run a canary
program, and the command that triggers it. Without the one forced setting that stops
it the canary runs (so the case really triggers it, and that setting is needed); with
the environment a session gets, nothing runs.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from hyperhive_core.agentenv import AGENT_HOME, GIT_CONFIG, GIT_VARIABLES, agent_env, git_env
from hyperhive_core.testing import needs_claude, running_hive

IDLE = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'


@dataclass(frozen=True)
class Case:
    name: str
    guard: str
    """The forced setting or variable that stops it."""
    config: str
    """Appended to the repository's .git/config; RUN is the canary program's path."""
    command: str
    """Run by sh in the repository, with the environment under test."""
    setup: str = ""
    """Run by sh in the repository first, without the guard."""
    tty: bool = False
    """Run the command on a terminal (git pages and filters colour only there)."""
    stdin: str = ""


CASES = [
    Case("fsmonitor", "core.fsmonitor", "[core]\n\tfsmonitor = RUN\n", "git status"),
    Case("hooks-path", "core.hooksPath", "[core]\n\thooksPath = HOOKS\n", "git commit -q --allow-empty -m x"),
    Case("hooks-dir", "core.hooksPath", "", "git commit -q --allow-empty -m x", setup="cp RUN .git/hooks/pre-commit"),
    Case("pager", "GIT_PAGER", "[core]\n\tpager = RUN\n", "git log -1", tty=True),
    Case("pager-per-command", "GIT_PAGER", "[pager]\n\tlog = RUN\n", "git log -1", tty=True),
    Case("editor", "GIT_EDITOR", "[core]\n\teditor = RUN\n", "git commit -q --allow-empty"),
    Case("sequence-editor", "GIT_SEQUENCE_EDITOR", "[sequence]\n\teditor = RUN\n", "git rebase -q -i HEAD~1"),
    Case("ssh-command", "GIT_SSH_COMMAND", "[core]\n\tsshCommand = RUN\n", "git ls-remote ssh://127.0.0.1:1/x"),
    Case("git-proxy", "GIT_PROXY_COMMAND", "[core]\n\tgitProxy = RUN\n", "git ls-remote git://127.0.0.1:1/x"),
    Case(
        "askpass",
        "GIT_ASKPASS",
        "[core]\n\taskPass = RUN\n",
        "git credential fill",
        stdin="url=https://127.0.0.1/x\n\n",
    ),
    Case(
        "credential-helper",
        "credential.helper",
        "[credential]\n\thelper = !RUN\n",
        "git credential fill",
        stdin="url=https://h/x\n\n",
    ),
    Case(
        "credential-helper-per-url",
        "credential.helper",
        '[credential "https://127.0.0.1"]\n\thelper = !RUN\n',
        "git credential fill",
        stdin="url=https://127.0.0.1/x\n\n",
    ),
    Case(
        "interactive-diff-filter",
        "interactive.diffFilter",
        "[interactive]\n\tdiffFilter = RUN\n[color]\n\tui = always\n",
        "git add -p",
        setup="echo more >> f",
        tty=True,
        stdin="q\n",
    ),
    Case(
        "gpg-program",
        "gpg.openpgp.program",
        "[gpg]\n\tprogram = RUN\n[commit]\n\tgpgSign = true\n",
        "git commit -q --allow-empty -m s",
    ),
    Case(
        "gpg-ssh-program",
        "gpg.ssh.program",
        '[gpg]\n\tformat = ssh\n[gpg "ssh"]\n\tprogram = RUN\n[user]\n\tsigningKey = /nonexistent\n',
        "git commit -q --allow-empty -m s -S",
    ),
    Case(
        "alternate-refs-command",
        "core.alternateRefsCommand",
        "",
        "git -C ../mirror fetch -q origin",
        setup="git clone -q --shared . ../mirror && git -C ../mirror config core.alternateRefsCommand RUN"
        " && git commit -q --allow-empty -m later",
    ),
    Case("ext-transport", "GIT_ALLOW_PROTOCOL", '[protocol "ext"]\n\tallow = always\n', "git ls-remote ext::RUN"),
    Case(
        "ext-transport-through-insteadof",
        "GIT_ALLOW_PROTOCOL",
        '[protocol "ext"]\n\tallow = always\n[url "ext::RUN"]\n\tinsteadOf = https://example.invalid/x\n',
        "git ls-remote https://example.invalid/x",
    ),
    # A bare repository's config is a plain file, `config`: git must not use it unless told to.
    Case(
        "bare-repository",
        "safe.bareRepository",
        "",
        "cd ../bare.git && git log -p",
        setup="git clone -q --bare . ../bare.git && printf '[diff \"d\"]\\n\\ttextconv = RUN\\n' >> ../bare.git/config"
        " && echo '* diff=d' > ../bare.git/info/attributes",
    ),
]


def make_repo(root: Path, case: Case) -> tuple[Path, Path, Path]:
    """A repository with two commits and a tracked file, the case's config, and its canary.

    :returns: the repository, the canary program, and the file it creates when it runs.
    """
    canary = root / "canaries" / case.name
    program = root / "bin" / case.name
    hooks = root / "hooks" / case.name
    for directory in (canary.parent, program.parent, hooks):
        directory.mkdir(parents=True, exist_ok=True)
    program.write_text(f"#!/bin/sh\ntouch {canary}\nexit 1\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    (hooks / "pre-commit").symlink_to(program)
    repo = root / "repos" / case.name / "repo"
    repo.mkdir(parents=True)
    plain = plain_env(root)
    commands = [
        "git init -q -b main",
        "git config user.name agent && git config user.email agent@hyperhive.invalid",
        "echo one > f && git add f && git commit -q -m one && git commit -q --allow-empty -m two",
    ]
    subprocess.run(" && ".join(commands), shell=True, cwd=repo, env=plain, check=True, timeout=30)
    with (repo / ".git" / "config").open("a") as config:
        config.write(case.config.replace("RUN", str(program)).replace("HOOKS", str(hooks)))
    if case.setup:
        setup = case.setup.replace("RUN", str(program))
        subprocess.run(setup, shell=True, cwd=repo, env=plain, check=True, timeout=30, capture_output=True)
    return repo, program, canary


def plain_env(root: Path) -> dict[str, str]:
    """git with no guard, and no config of this machine's own."""
    return {"PATH": os.environ["PATH"], "HOME": str(root / "home"), "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C.UTF-8"}


def run_git(repo: Path, program: Path, case: Case, env: dict[str, str]) -> None:
    """Run the case's command as an agent's Bash call would: no terminal of the daemon's to prompt on."""
    line = case.command.replace("RUN", str(program))
    command = ["script", "-qec", line, "/dev/null"] if case.tty else ["sh", "-c", line]
    subprocess.run(
        command,
        cwd=repo,
        env={**env, "TERM": "xterm-256color"} if case.tty else env,  # as in the dashboard's terminal
        input=case.stdin.encode(),
        capture_output=True,
        timeout=30,
        start_new_session=True,  # git must not find a terminal to ask on
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_runs_its_program_without_the_setting_that_stops_it(tmp_path, case):
    """So each case really triggers its program, and each forced setting is needed."""
    config = {key: value for key, value in GIT_CONFIG.items() if key != case.guard}
    variables = {key: value for key, value in GIT_VARIABLES.items() if key != case.guard}
    assert len(config) + len(variables) == len(GIT_CONFIG) + len(GIT_VARIABLES) - 1
    repo, program, canary = make_repo(tmp_path, case)
    run_git(repo, program, case, {**plain_env(tmp_path), **git_env(config, variables)})
    assert canary.exists(), f"{case.name}: without {case.guard}, the repository's config should have run it"


@needs_claude
async def test_with_the_session_env_the_repository_config_runs_nothing(make_pm, tmp_path):
    (tmp_path / "hive").mkdir()
    async with running_hive(tmp_path / "hive", make_pm(), IDLE) as hive:
        spec = hive.container_spec("manager")
        env = hive.session_env("manager", hive.backend.view(spec).state)
    assert git_env().items() <= env.items()
    ran = []
    for case in CASES:
        repo, program, canary = make_repo(tmp_path, case)
        await trio.to_thread.run_sync(run_git, repo, program, case, env)
        if canary.exists():
            ran.append(case.name)
    assert ran == []


def test_git_still_works_under_the_guard(tmp_path):
    """The guard changes what runs programs, not what git does: commit, log, diff, clone."""
    env = {**plain_env(tmp_path), **git_env()}
    repo = tmp_path / "repo"
    repo.mkdir()
    script = (
        "git init -q -b main && git config user.name a && git config user.email a@b.invalid"
        " && echo one > f && git add f && git commit -q -m one && echo two > f"
        " && git diff --stat && git commit -qam two && git log --format=%s && git clone -q . ../copy"
    )
    done = subprocess.run(script, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-3:] == ["two", "one", ""]
    assert (tmp_path / "copy" / "f").read_text() == "two\n"


def test_checked_out_symlinks_are_plain_files(tmp_path):
    """A symlink from a commit would let a later write land where the allow-list saw a plain path."""
    env = {**plain_env(tmp_path), **git_env()}
    repo = tmp_path / "repo"
    repo.mkdir()
    # A commit holding the symlink `link -> .git/config`, made with plumbing, never on disk.
    script = (
        "git init -q -b main && git config user.name a && git config user.email a@b.invalid"
        " && blob=$(printf .git/config | git hash-object -w --stdin)"
        ' && git update-index --add --cacheinfo "120000,$blob,link" && git commit -q -m link'
        " && git checkout -- link"
    )
    done = subprocess.run(script, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    link = repo / "link"
    assert not link.is_symlink()
    assert link.read_text() == ".git/config"


def test_the_environment_an_agent_gets():
    env = agent_env(Path("/state"))
    assert env["HOME"] == str(AGENT_HOME)
    assert env["CLAUDE_CONFIG_DIR"] == "/state/.claude"
    assert int(env["GIT_CONFIG_COUNT"]) == len(GIT_CONFIG)
    forced = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(len(GIT_CONFIG))}
    assert forced == GIT_CONFIG
    assert GIT_VARIABLES.items() <= env.items()
