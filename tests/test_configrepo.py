"""Config repos with real git: the template, pinned fetches, diffs, and repos planted by a hostile manager."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from hyperhive_core import configrepo
from hyperhive_core.agents import AgentConfig
from hyperhive_core.configrepo import ConfigRepos, GitError, InvalidRef, check_ref, render_agent_toml
from hyperhive_core.errors import ConfigError
from hyperhive_core.paths import StatePaths


def git(repo: Path, *args: str) -> str:
    """git as the manager runs it in its own repo (hooks off, so the test's own commits fire nothing)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    argv = ["git", "-C", str(repo), "-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "--", *files)
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repos(tmp_path):
    return ConfigRepos(StatePaths(tmp_path / "state"))


async def test_a_new_agents_repos_come_from_the_template(repos):
    sha = await repos.create("scout", AgentConfig(instructions='map "the" docs\nthen rest'), ["allowlist"])
    proposed, applied = repos.proposed("scout"), repos.applied("scout")
    assert git(proposed, "log", "--format=%H %s") == f"{sha} scout: config from the template"
    assert git(proposed, "status", "--porcelain") == ""
    toml = (applied / "agent.toml").read_text()
    assert toml == (proposed / "agent.toml").read_text()
    assert "# allowed_recipients: Agents it may message" in toml
    assert "Sections the hive's plugins read: [allowlist]" in toml
    assert "request_apply_commit" in (proposed / "README.md").read_text()
    assert await repos.read_config("scout", sha) == AgentConfig(instructions='map "the" docs\nthen rest')
    assert repos.proposed_names() == ["scout"]
    with pytest.raises(GitError, match="already has a config repo"):
        await repos.create("scout", AgentConfig(), [])


def test_the_template_renders_every_value_as_toml():
    import tomllib

    config = AgentConfig(model="sonnet", instructions="a\tb \\ c", allowed_recipients=["x", "y"])
    config.sections["allowlist"] = {"bash": ["git *"], "strict": True}
    parsed = tomllib.loads(render_agent_toml(config, ["allowlist"]))
    assert parsed == {
        "model": "sonnet",
        "instructions": "a\tb \\ c",
        "allowed_recipients": ["x", "y"],
        "allowlist": {"bash": ["git *"], "strict": True},
    }


def test_the_template_keeps_awkward_strings_and_keys_whole():
    import tomllib

    config = AgentConfig(instructions='line one\nline "two"\x00\x7f end')
    config.sections["allowlist"] = {"commands": {"git.status": ["-s"], "a b": []}}
    parsed = tomllib.loads(render_agent_toml(config, ["allowlist"]))
    assert parsed["instructions"] == config.instructions
    assert parsed["allowlist"] == {"commands": {"git.status": ["-s"], "a b": []}}


async def test_a_request_pins_the_commit_and_diffs_from_what_runs(repos):
    base = await repos.create("scout", AgentConfig(), [])
    proposed = repos.proposed("scout")
    wanted = commit(proposed, {"agent.toml": 'model = "sonnet"\n'})
    assert await repos.fetch("scout", "main") == wanted
    commit(proposed, {"agent.toml": 'model = "opus"\n'})  # the branch moves on
    git(proposed, "gc", "--quiet", "--prune=now")
    diff = await repos.diff("scout", base, wanted)
    assert '+model = "sonnet"' in diff
    assert "opus" not in diff
    assert (await repos.read_config("scout", wanted)).model == "sonnet"
    await repos.checkout("scout", wanted)
    assert (repos.applied("scout") / "agent.toml").read_text() == 'model = "sonnet"\n'
    # A new agent's diff starts from nothing, agent.toml (what gets applied) first.
    assert (await repos.diff("scout", None, base)).startswith("diff --git a/agent.toml b/agent.toml\nnew file mode")


async def test_refs_resolve_by_branch_full_ref_head_and_commit_id(repos):
    await repos.create("scout", AgentConfig(), [])
    proposed = repos.proposed("scout")
    sha = commit(proposed, {"agent.toml": 'model = "sonnet"\n'})
    for ref in ("main", "refs/heads/main", "HEAD", sha, sha[:10]):
        assert await repos.fetch("scout", ref) == sha
    with pytest.raises(GitError, match="has no commit 'nope'"):
        await repos.fetch("scout", "nope")


@pytest.mark.parametrize(
    "ref",
    [
        "--upload-pack=touch /tmp/pwned",
        "-c",
        "../../etc/passwd",
        "/etc/passwd",
        "main..evil",
        "HEAD~1",
        "main^",
        "a b",
        "@{-1}",
        "@",
        "refs/heads/.hidden",
        "main.lock",
        "main/",
        "x\x00y",
        "",
        "a" * 300,
    ],
)
def test_bad_refs_are_refused(ref):
    with pytest.raises(InvalidRef, match="commit_ref"):
        check_ref(ref)


def test_good_refs_pass():
    for ref in ("main", "refs/heads/feature/x-1", "HEAD", "0123abcd", "v1.2"):
        assert check_ref(ref) == ref


async def test_config_problems_are_reported(repos):
    await repos.create("scout", AgentConfig(), [])
    proposed = repos.proposed("scout")
    bad_toml = commit(proposed, {"agent.toml": "model = \n"})
    with pytest.raises(ConfigError, match="not valid TOML"):
        await repos.read_config("scout", await repos.fetch("scout", bad_toml))
    unknown_key = commit(proposed, {"agent.toml": 'modle = "x"\n'})
    with pytest.raises(ConfigError, match="unknown key agent.modle"):
        await repos.read_config("scout", await repos.fetch("scout", unknown_key))
    git(proposed, "rm", "--quiet", "agent.toml")
    git(proposed, "commit", "--quiet", "-m", "gone")
    with pytest.raises(ConfigError, match="has no agent.toml"):
        await repos.read_config("scout", await repos.fetch("scout", "main"))


# -- a hostile manager ------------------------------------------------------------------


CANARY_SCRIPT = "#!/bin/sh\ntouch {canary}\n"


def plant(proposed: Path, canary: Path) -> None:
    """Everything a manager could leave in its repo to run code on the host, each touching ``canary``."""
    hooks = proposed / ".git" / "hooks"
    for hook in ("pre-commit", "post-checkout", "post-merge", "reference-transaction", "pre-auto-gc", "fsmonitor"):
        (hooks / hook).write_text(CANARY_SCRIPT.format(canary=canary))
        (hooks / hook).chmod(0o755)
    touch = f"touch {canary}"
    with (proposed / ".git" / "config").open("a") as config:
        config.write(
            f'[core]\n\tfsmonitor = "{touch}"\n\tsshCommand = "{touch}"\n\tpager = "{touch}"\n'
            f'\talternateRefsCommand = "{touch}"\n\thooksPath = "{hooks}"\n'
            f'[filter "evil"]\n\tclean = "{touch}"\n\tsmudge = "{touch}"\n\trequired = true\n'
            f'[diff "evil"]\n\ttextconv = "{touch}"\n\tcommand = "{touch}"\n'
            f'[uploadpack]\n\tpackObjectsHook = "{touch}"\n'
            f'[include]\n\tpath = "{canary}.included"\n'
        )


async def test_planted_hooks_and_config_run_nothing_on_the_host(repos, tmp_path):
    base = await repos.create("scout", AgentConfig(), [])
    proposed = repos.proposed("scout")
    canary = tmp_path / "canary"
    sha = commit(proposed, {".gitattributes": "* filter=evil diff=evil\n", "agent.toml": 'model = "sonnet"\n'})
    plant(proposed, canary)
    assert await repos.fetch("scout", "main") == sha
    assert "+model" in await repos.diff("scout", base, sha)
    await repos.checkout("scout", sha)
    assert (await repos.read_config("scout", sha)).model == "sonnet"
    assert not canary.exists()
    assert (repos.applied("scout") / "agent.toml").read_text() == 'model = "sonnet"\n'  # no smudge filter ran


async def test_a_symlinked_git_dir_is_refused(repos, tmp_path):
    await repos.create("scout", AgentConfig(), [])
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    secret = commit_repo(elsewhere, {"agent.toml": 'instructions = "host secret"\n'})
    proposed = repos.proposed("scout")
    os.rename(proposed / ".git", tmp_path / "moved.git")
    (proposed / ".git").symlink_to(elsewhere / ".git")
    with pytest.raises(GitError, match=r"\.git is a symlink"):
        await repos.fetch("scout", secret)


async def test_a_gitfile_pointing_elsewhere_is_refused(repos, tmp_path):
    await repos.create("scout", AgentConfig(), [])
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    commit_repo(elsewhere, {"agent.toml": 'instructions = "host secret"\n'})
    proposed = repos.proposed("scout")
    os.rename(proposed / ".git", tmp_path / "moved.git")
    (proposed / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")
    with pytest.raises(GitError, match=r"\.git is not a directory"):
        await repos.fetch("scout", "main")


async def test_alternates_symlinks_and_fifos_inside_git_are_refused(repos, tmp_path):
    await repos.create("scout", AgentConfig(), [])
    git_dir = repos.proposed("scout") / ".git"
    alternates = git_dir / "objects" / "info" / "alternates"
    alternates.parent.mkdir(exist_ok=True)
    alternates.write_text("/elsewhere/objects\n")
    with pytest.raises(GitError, match="alternates names object stores outside"):
        await repos.fetch("scout", "main")
    alternates.unlink()

    (git_dir / "refs" / "heads" / "leak").symlink_to("/etc/hostname")
    with pytest.raises(GitError, match="refs/heads/leak is a symlink"):
        await repos.fetch("scout", "main")
    (git_dir / "refs" / "heads" / "leak").unlink()

    os.mkfifo(git_dir / "refs" / "heads" / "stuck")  # would block a plain open
    with pytest.raises(GitError, match="refs/heads/stuck is not a regular file"):
        await repos.fetch("scout", "main")
    (git_dir / "refs" / "heads" / "stuck").unlink()

    objects = git_dir / "objects"
    os.rename(objects, tmp_path / "objects")
    objects.symlink_to(tmp_path / "objects")
    with pytest.raises(GitError, match="objects is a symlink"):
        await repos.fetch("scout", "main")


async def test_a_symlink_committed_as_agent_toml_is_not_followed(repos):
    await repos.create("scout", AgentConfig(), [])
    proposed = repos.proposed("scout")
    (proposed / "agent.toml").unlink()
    (proposed / "agent.toml").symlink_to("/etc/passwd")
    git(proposed, "add", "agent.toml")
    git(proposed, "commit", "--quiet", "-m", "link")
    sha = await repos.fetch("scout", "main")
    with pytest.raises(ConfigError, match="agent.toml must be a plain file, not mode 120000"):
        await repos.read_config("scout", sha)
    await repos.checkout("scout", sha)
    checked_out = repos.applied("scout") / "agent.toml"
    assert not checked_out.is_symlink()
    assert checked_out.read_text() == "/etc/passwd"


async def test_an_oversized_repo_is_refused(repos, monkeypatch):
    await repos.create("scout", AgentConfig(), [])
    monkeypatch.setattr(configrepo, "MAX_REPO_BYTES", 100)
    with pytest.raises(GitError, match="a config repo should be small"):
        await repos.fetch("scout", "main")


async def test_quarantines_are_cleaned_up(repos):
    await repos.create("scout", AgentConfig(), [])
    await repos.fetch("scout", "main")
    with pytest.raises(GitError):
        await repos.fetch("scout", "nope")
    assert sorted(path.name for path in repos.git.scratch.iterdir()) == ["home"]
    assert stat.S_IMODE(repos.git.scratch.stat().st_mode) == 0o700


def commit_repo(path: Path, files: dict[str, str]) -> str:
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "config", "user.name", "someone")
    git(path, "config", "user.email", "someone@example.invalid")
    return commit(path, files)
