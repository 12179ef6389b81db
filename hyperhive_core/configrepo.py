"""Per-agent config repos: what the manager proposes, and what runs.

Each agent created at run time has two git repos in the state root:

- ``agents/<name>/config``, the **proposed** repo. The manager writes it (it is bound
  into the manager's container at ``/agents/<name>/config``), so the daemon treats it
  as hostile: it never runs git inside it once it exists, never with its hooks or
  its config in effect. A request copies the repo's refs and objects, plain files
  only and no symlink followed, into a fresh daemon-owned quarantine repo; the ref
  is resolved there, and the commit is fetched (objects checked) into the applied repo.
- ``applied/<name>``, the **applied** repo, daemon-owned: every requested commit is
  pinned there under ``refs/hyperhive/pinned/<sha>``, and its work tree is checked out
  at the approved commit, which is what runs.

Every git command is an argument list run with no system or global config, an empty
``HOME``, hooks off, and only in the daemon's own repos.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import trio

from hyperhive_core.agents import AgentConfig
from hyperhive_core.config import build_section, help_text, plain, toml_document, toml_value
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.names import AGENT_NAME, RESERVED
from hyperhive_core.paths import StatePaths

ORIGIN_APPLIED = "applied"
"""The ``origin`` of an agent whose config is its applied repo at the recorded ``applied_sha``."""
AGENT_TOML = "agent.toml"
README = "README.md"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
"""The empty tree: what a new agent's config is diffed from."""
HIVE_IDENTITY = ("hyperhive", "hive@hyperhive.invalid")

# Bounds on what the daemon copies out of a proposed repo: a config repo is small.
MAX_REPO_BYTES = 64 * 1024 * 1024
MAX_REPO_FILES = 20_000
MAX_REF_DEPTH = 16
MAX_AGENT_TOML_BYTES = 256 * 1024
MAX_DIFF_CHARS = 200_000
GIT_SECONDS = 60

_HEX = re.compile(r"[0-9a-f]{4,64}")
_LOOSE_DIR = re.compile(r"[0-9a-f]{2}")
_LOOSE_OBJECT = re.compile(r"[0-9a-f]{38}|[0-9a-f]{62}")
_PACK_FILE = re.compile(r"pack-[0-9a-f]{40,64}\.(?:pack|idx)")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class GitError(HyperhiveError):
    """A git command failed, or a proposed repo cannot be read safely."""


class InvalidRef(HyperhiveError):
    """A commit ref that is not a plain ref name or commit id."""


def check_ref(ref: object) -> str:
    """Return ``ref`` if it is a commit id, ``HEAD``, or a ref name by git's rules; else raise.

    Stricter than ``git check-ref-format --allow-onelevel``: no revision syntax
    (``~``, ``^``, ``@{``), and nothing that starts with ``-``, so a ref can never
    be read as an option (``--upload-pack=…``).
    """
    how = "give a branch (main), a full ref (refs/heads/main), HEAD, or a commit id"
    if not isinstance(ref, str) or not ref:
        raise InvalidRef(f"commit_ref must be a non-empty string; {how}")
    if ref.startswith("-"):
        raise InvalidRef(f"commit_ref {ref!r} starts with '-', which git would read as an option; {how}")
    problem = None
    if len(ref) > 255:
        problem = "is longer than 255 characters"
    elif _REF_FORBIDDEN.search(ref):
        problem = "contains a space, a control character, or one of ~ ^ : ? * [ \\"
    elif ".." in ref or "@{" in ref or ref == "@" or "//" in ref:
        problem = "contains '..', '@{', '//' or is '@'"
    elif ref.startswith("/") or ref.endswith(("/", ".")):
        problem = "starts with '/' or ends with '/' or '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        problem = "has a component that starts with '.' or ends with '.lock'"
    if problem:
        raise InvalidRef(f"commit_ref {ref!r} {problem}; {how}")
    return ref


# -- running git --------------------------------------------------------------------


class Git:
    """Runs git in the daemon's own repos, with no configuration but the hive's."""

    def __init__(self, scratch: Path) -> None:
        """:param scratch: a daemon-private directory for the empty ``HOME`` and quarantines."""
        self.scratch = scratch

    def env(self) -> dict[str, str]:
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        home = self.scratch / "home"
        home.mkdir(exist_ok=True, mode=0o700)
        name, email = HIVE_IDENTITY
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    async def init(self, path: Path, branch: str) -> None:
        """Create an empty repo with a work tree at ``path``."""
        await self._run([], ["init", "--quiet", f"--initial-branch={branch}", "--", str(path)])

    async def run(self, repo: Path, *args: str, bare: bool = False) -> str:
        """Run ``git args`` in the daemon-owned repo ``repo``; return its stdout.

        :param bare: ``repo`` is a bare repo (a quarantine), else a work tree.
        """
        # Named explicitly, so git never searches upward for some other repo.
        where = [f"--git-dir={repo}"] if bare else [f"--git-dir={repo / '.git'}", f"--work-tree={repo}"]
        return await self._run(where, list(args))

    async def _run(self, where: list[str], args: list[str]) -> str:
        argv = ["git", *where, *SAFE_OPTIONS, *args]
        with trio.move_on_after(GIT_SECONDS) as scope:
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=self.env(), stdin=b""
            )
        if scope.cancelled_caught:
            raise GitError(f"git {args[0]} took longer than {GIT_SECONDS}s")
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise GitError(f"git {args[0]} failed: {detail[-1] if detail else f'status {result.returncode}'}")
        return result.stdout.decode(errors="replace")


SAFE_OPTIONS = (
    "-c",
    f"core.hooksPath={os.devnull}",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.symlinks=false",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "protocol.file.allow=always",
    "-c",
    "transfer.fsckObjects=true",
)
"""No hooks, no fsmonitor, symlinks checked out as plain files, every fetched object checked."""


# -- the template -------------------------------------------------------------------


def render_agent_toml(config: AgentConfig, plugin_sections: Iterable[str]) -> str:
    """A new agent's ``agent.toml``: the documented schema as comments, then ``config``'s values."""
    lines = [
        "# This agent's config. Change it, commit, then ask the operator to apply it:",
        "#   request_apply_commit(name, commit_ref, description)  for a running agent",
        "#   request_spawn_commit(name, commit_ref)                for a draft",
        "# The operator sees the diff from what runs now; nothing changes before they approve.",
        "#",
    ]
    for field in dataclasses.fields(AgentConfig):
        if field.metadata.get("extra_tables"):
            continue
        lines += [f"# {line}" for line in f"{field.name}: {help_text(field)}".splitlines()]
    sections = ", ".join(f"[{name}]" for name in sorted(plugin_sections)) or "none are loaded"
    lines += [
        "#",
        "# Plugin sections are tables, e.g.",
        "#   [allowlist]",
        '#   bash = ["git *"]',
        f"# Sections the hive's plugins read: {sections}.",
        "",
    ]
    if config.model is not None:
        lines.append(f"model = {toml_value(config.model)}")
    else:
        lines.append('# model = "haiku"')
    lines.append(f"instructions = {toml_value(config.instructions)}")
    lines.append(f"allowed_recipients = {toml_value(config.allowed_recipients)}")
    lines += [f"{key} = {toml_value(value)}" for key, value in config.limit_overrides().items() if value is not None]
    if config.egress:
        lines.append(f"egress = {toml_value(config.egress)}")
    tables = {name: plain(section) for name, section in sorted(config.sections.items())}
    return "\n".join(lines) + "\n" + (f"\n{toml_document(tables)}" if tables else "")


README_TEXT = """# {name}: config repo

This repo is {name}'s proposed config. `agent.toml` holds its settings (model,
instructions, allowed recipients, plugin sections); the comments at its top list
them. Other files are kept with the config but not read by the hive.

To change {name}: edit, commit, then call

- `request_apply_commit("{name}", "<branch or commit>", "<why>")` for a running agent, or
- `request_spawn_commit("{name}", "<branch or commit>")` while it is a draft.

The hive fetches that exact commit when you ask; the operator sees the diff from
what runs now, and approves or denies it. Moving the branch afterwards changes
nothing: what was shown is what gets applied. The answer arrives in your inbox as
an `approval_resolved` event.
"""


# -- reading a hostile repo ---------------------------------------------------------


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


class _Copier:
    """Copies plain files out of a repo's ``.git`` into a quarantine, within a budget."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.bytes = 0
        self.files = 0

    def refuse(self, where: str, why: str) -> GitError:
        return GitError(f"{self.shown}/.git/{where} {why}; the hive reads only plain files and directories there")

    def copy_file(self, dir_fd: int, name: str, dest: Path, where: str) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self.refuse(where, "is a symlink") from None
            raise self.refuse(where, f"cannot be read ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise self.refuse(where, "is not a regular file")
            self.files += 1
            self.bytes += info.st_size
            if self.bytes > MAX_REPO_BYTES or self.files > MAX_REPO_FILES:
                raise GitError(
                    f"{self.shown} holds more than {MAX_REPO_BYTES // 2**20} MiB or {MAX_REPO_FILES} files "
                    "in .git; a config repo should be small: run `git gc --prune=now` in it, or start it afresh"
                )
            dest.write_bytes(source.read(info.st_size))

    def subdir(self, dir_fd: int, name: str, where: str) -> int:
        try:
            return _open_dir(name, dir_fd)
        except OSError as exc:
            raise self.refuse(where, _not_a_dir(dir_fd, name, exc)) from None

    def copy_tree(self, dir_fd: int, dest: Path, where: str, depth: int = 0) -> None:
        """Every file below ``dir_fd`` (the refs)."""
        if depth > MAX_REF_DEPTH:
            raise self.refuse(where, f"nests deeper than {MAX_REF_DEPTH} directories")
        dest.mkdir(exist_ok=True)
        for entry in sorted(os.listdir(dir_fd)):
            path = f"{where}/{entry}"
            if entry.endswith(".lock"):
                continue  # a git command in progress in the proposed repo
            try:
                info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile (a ref deleted, or packed)
            if stat.S_ISDIR(info.st_mode):
                child = self.subdir(dir_fd, entry, path)
                try:
                    self.copy_tree(child, dest / entry, path, depth + 1)
                finally:
                    os.close(child)
            else:
                self.copy_file(dir_fd, entry, dest / entry, path)

    def copy_objects(self, objects_fd: int, dest: Path) -> None:
        """Loose objects and packs; nothing else (no alternates, graphs or indexes of theirs)."""
        if _exists(objects_fd, "info/alternates") or _exists(objects_fd, "info/http-alternates"):
            raise self.refuse("objects/info/alternates", "names object stores outside the repo")
        for entry in sorted(os.listdir(objects_fd)):
            if not (_LOOSE_DIR.fullmatch(entry) or entry == "pack"):
                continue
            child = self.subdir(objects_fd, entry, f"objects/{entry}")
            try:
                wanted = _PACK_FILE if entry == "pack" else _LOOSE_OBJECT
                (dest / entry).mkdir(exist_ok=True)
                for name in sorted(os.listdir(child)):
                    if wanted.fullmatch(name):
                        self.copy_file(child, name, dest / entry / name, f"objects/{entry}/{name}")
            finally:
                os.close(child)


def _not_a_dir(dir_fd: int, name: str, exc: OSError) -> str:
    """Why ``name`` could not be opened as a directory, in words."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISLNK(mode):
        return "is a symlink"
    return "is not a directory" if exc.errno == errno.ENOTDIR else f"cannot be read ({exc.strerror})"


def _exists(dir_fd: int, path: str) -> bool:
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def quarantine_copy(proposed: Path, quarantine: Path, shown: str) -> None:
    """Copy the refs and objects of the repo at ``proposed`` into a new bare repo ``quarantine``.

    Nothing of ``proposed`` is trusted: its ``.git`` must be a real directory (not a
    symlink, nor a file pointing elsewhere), no symlink inside it is followed, only
    regular files are read, and its config, hooks, alternates and info files are
    left behind.

    :param shown: how to name the repo in errors (the path the manager sees).
    """
    copier = _Copier(shown)
    try:
        top = _open_dir(proposed)
    except FileNotFoundError:
        raise GitError(f"{shown} does not exist; request_spawn_draft creates a draft's config repo") from None
    except OSError as exc:
        raise GitError(f"{shown} is not a directory ({exc.strerror})") from None
    try:
        try:
            git_dir = _open_dir(".git", top)
        except FileNotFoundError:
            raise GitError(f"{shown} has no .git directory; it must be a git repo") from None
        except OSError as exc:
            raise GitError(
                f"{shown}/.git {_not_a_dir(top, '.git', exc)}; the hive reads only a repo whose "
                ".git is a plain directory inside it (not a symlink, nor a gitfile pointing elsewhere)"
            ) from None
        try:
            quarantine.mkdir(mode=0o700)
            copier.copy_file(git_dir, "HEAD", quarantine / "HEAD", "HEAD")
            if _exists(git_dir, "packed-refs"):
                copier.copy_file(git_dir, "packed-refs", quarantine / "packed-refs", "packed-refs")
            refs = copier.subdir(git_dir, "refs", "refs")
            try:
                copier.copy_tree(refs, quarantine / "refs", "refs")
            finally:
                os.close(refs)
            objects = copier.subdir(git_dir, "objects", "objects")
            try:
                (quarantine / "objects").mkdir()
                copier.copy_objects(objects, quarantine / "objects")
            finally:
                os.close(objects)
        finally:
            os.close(git_dir)
    finally:
        os.close(top)
    # The hive's own config: a plain bare repo that serves any commit it holds.
    (quarantine / "config").write_text(
        "[core]\n\trepositoryformatversion = 0\n\tbare = true\n[uploadpack]\n\tallowAnySHA1InWant = true\n"
    )


# -- the repos ----------------------------------------------------------------------


class ConfigRepos:
    """The proposed and applied config repos of every agent created at run time."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.git = Git(paths.root / "tmp" / "git")

    def proposed(self, name: str) -> Path:
        """The repo the manager writes."""
        return self.paths.agent_dir(name) / "config"

    def applied(self, name: str) -> Path:
        """The daemon's repo; its work tree is what runs."""
        return self.paths.applied(name)

    def proposed_names(self) -> list[str]:
        """Agents with a proposed repo on disk (live, draft or kept): the manager sees each."""
        agents = self.paths.root / "agents"
        if not agents.is_dir():
            return []
        return sorted(
            entry.name
            for entry in agents.iterdir()
            if AGENT_NAME.fullmatch(entry.name)
            and entry.name not in RESERVED
            and not (entry / "config").is_symlink()
            and (entry / "config").is_dir()
        )

    async def create(
        self, name: str, config: AgentConfig, plugin_sections: Sequence[str], *, apply: bool = True
    ) -> str:
        """Seed a new agent's proposed repo from the template with ``config``.

        :param apply: also fetch the template commit into the applied repo and check
            it out (a spawn); a draft's applied repo waits for its spawn_commit.
        :return: the template commit.
        :raises GitError: the agent already has a repo.
        """
        proposed = self.proposed(name)
        if proposed.exists() or proposed.is_symlink() or self.applied(name).exists():
            raise GitError(
                f"{name!r} already has a config repo ({proposed}); purge it first (hyperhive destroy {name} --purge)"
            )
        # Written before the manager can reach it, so git runs here just this once.
        proposed.mkdir(parents=True, mode=0o700)
        try:
            return await self._seed(name, config, plugin_sections, apply=apply)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.remove(name)
            raise

    async def _seed(self, name: str, config: AgentConfig, plugin_sections: Sequence[str], *, apply: bool) -> str:
        proposed, git = self.proposed(name), self.git
        await git.init(proposed, "main")
        await git.run(proposed, "config", "user.name", "manager")
        await git.run(proposed, "config", "user.email", "manager@hyperhive.invalid")
        (proposed / AGENT_TOML).write_text(render_agent_toml(config, plugin_sections))
        (proposed / README).write_text(README_TEXT.format(name=name))
        await git.run(proposed, "add", "--", AGENT_TOML, README)
        await git.run(proposed, "commit", "--quiet", "--no-verify", "-m", f"{name}: config from the template")
        if not apply:
            return (await git.run(proposed, "rev-parse", "HEAD")).strip()
        sha = await self.fetch(name, "HEAD")
        await self.checkout(name, sha)
        return sha

    async def fetch(self, name: str, ref: str) -> str:
        """Resolve ``ref`` in ``name``'s proposed repo, and pin that commit in the applied repo.

        :return: the commit's full sha: what the operator is shown, and what gets applied.
        """
        ref = check_ref(ref)
        applied = await self._applied_repo(name)
        scratch = self.git.scratch
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=f"{name}-") as tmp:
            quarantine = Path(tmp) / "quarantine.git"
            shown = f"{name}'s config repo"
            await trio.to_thread.run_sync(quarantine_copy, self.proposed(name), quarantine, shown)
            try:
                found = await self.git.run(
                    quarantine, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}", bare=True
                )
            except GitError:
                raise GitError(f"{shown} has no commit {ref!r}; commit your change, then name its branch") from None
            sha = found.strip()
            await self.git.run(
                applied, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--end-of-options", str(quarantine), f"+{sha}:{pinned(sha)}",
            )  # fmt: skip
        if (await self.git.run(applied, "cat-file", "-t", sha)).strip() != "commit":
            raise GitError(f"{ref!r} in {shown} is not a commit")
        return sha

    async def checkout(self, name: str, sha: str) -> None:
        """Move the applied repo's work tree to ``sha`` (pinned by ``fetch``)."""
        await self.git.run(self.applied(name), "checkout", "--quiet", "--force", "--detach", sha)

    async def read_config(self, name: str, sha: str) -> AgentConfig:
        """``agent.toml`` at ``sha`` in the applied repo, parsed but not yet checked by plugins.

        :raises ConfigError: it is missing, not a plain file, too big, or not valid TOML
            for an agent's config.
        """
        where = f"{name}'s {AGENT_TOML} at {sha[:12]}"
        applied = self.applied(name)
        listing = await self.git.run(applied, "ls-tree", "-z", "--full-tree", sha, "--", AGENT_TOML)
        if not listing:
            raise ConfigError(f"{where}: the commit has no {AGENT_TOML}; add one (see the README in the repo)")
        mode, kind, blob = listing.split("\t", 1)[0].split()
        if kind != "blob" or mode not in ("100644", "100755"):
            raise ConfigError(f"{where}: {AGENT_TOML} must be a plain file, not mode {mode} ({kind})")
        size = int(await self.git.run(applied, "cat-file", "-s", blob))
        if size > MAX_AGENT_TOML_BYTES:
            raise ConfigError(f"{where}: {AGENT_TOML} is {size} bytes; keep it under {MAX_AGENT_TOML_BYTES}")
        text = await self.git.run(applied, "cat-file", "blob", blob)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
        return build_section(AgentConfig, raw, "agent", Path(where))

    async def diff(self, name: str, base: str | None, sha: str) -> str:
        """The change from ``base`` (the applied commit; ``None`` for a new agent) to ``sha``.

        ``agent.toml`` is what gets applied, so its change comes first and whole: no
        padding in other files pushes it past the cut. Every file is shown as text,
        whatever a ``.gitattributes`` says (``agent.toml -diff`` would read "Binary
        files differ").
        """
        applied = self.applied(name)
        options = ("diff", "--no-ext-diff", "--no-textconv", "--no-color", "--text", "--find-renames")
        own = await self.git.run(applied, *options, base or EMPTY_TREE, sha, "--", AGENT_TOML)
        rest = await self.git.run(applied, *options, base or EMPTY_TREE, sha, "--", f":(exclude){AGENT_TOML}")
        text = own + rest
        # A valid agent.toml's diff is never cut; an oversized one is refused when the config is read.
        limit = MAX_DIFF_CHARS + min(len(own), 3 * MAX_AGENT_TOML_BYTES)
        if len(text) > limit:
            text = text[:limit] + f"\n[diff cut at {limit} characters of {len(text)}]\n"
        return text

    async def remove(self, name: str) -> None:
        """Delete both repos (a spawn that did not start); only inside the state root."""
        for path in (self.proposed(name), self.applied(name)):
            if path.exists():
                await trio.to_thread.run_sync(shutil.rmtree, self.paths.inside(path))

    async def _applied_repo(self, name: str) -> Path:
        applied = self.applied(name)
        if not (applied / ".git").is_dir():
            applied.mkdir(parents=True, exist_ok=True, mode=0o700)
            await self.git.init(applied, "applied")
        return applied


def pinned(sha: str) -> str:
    """The applied repo's ref that keeps a requested commit (and so the diff shown) alive."""
    return f"refs/hyperhive/pinned/{sha}"
