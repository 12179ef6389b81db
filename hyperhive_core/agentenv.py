"""What an agent's processes get in their environment so that files it can write configure nothing.

An agent writes its state dir. Programs it runs read configuration from files, and
some of those settings run programs: a ``~/.bashrc`` that Claude Code's Bash tool
sources before each command, a ``.git/config`` whose ``core.fsmonitor`` git runs.
So:

- ``HOME`` is :data:`AGENT_HOME`, an empty directory the agent cannot write (the
  container backends mount it read-only), so no dotfile can be planted there.
- Claude Code keeps its own files (sessions, transcripts) in the state dir, through
  ``CLAUDE_CONFIG_DIR`` = ``<state>/.claude``: where they were when ``HOME`` was the
  state dir, so existing sessions resume.
- git is told, through its environment, to ignore the settings of system, global and
  repository config that run programs (:data:`GIT_CONFIG`, :data:`GIT_VARIABLES`).
  Environment config outranks every config file, and the variables outrank config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

AGENT_HOME = Path("/home/agent")
"""``HOME`` inside a container: an empty, read-only directory."""
CLAUDE_DIR = ".claude"
"""Claude Code's config dir, under the agent's state dir (``CLAUDE_CONFIG_DIR``)."""
PROJECTS = "projects"
"""Where Claude Code keeps session transcripts, under its config dir."""

# Settings that run programs, forced to harmless values. Settings named per driver,
# remote, URL or alias (filter.<driver>.clean, remote.<name>.uploadpack, alias.<name>,
# diff.<driver>.command, …) cannot be forced this way; docs/security.md says what
# keeps a repository's config out of the agent's reach instead.
GIT_CONFIG: dict[str, str] = {
    "core.fsmonitor": "false",
    "core.hooksPath": "/dev/null",
    # A shell command run with the path of each alternate object store.
    "core.alternateRefsCommand": "true",
    # Checked-out symlinks would let a later write land where the allow-list looked at
    # a plain path; git writes them as files holding the link's target instead.
    "core.symlinks": "false",
    # An empty helper empties the list, URL-specific helpers included.
    "credential.helper": "",
    "interactive.diffFilter": "cat",
    "gpg.openpgp.program": "gpg",  # gpg.program is another name for it
    "gpg.x509.program": "gpgsm",
    "gpg.ssh.program": "ssh-keygen",
    "gpg.ssh.defaultKeyCommand": "ssh-add -L",
    # A bare repository's config is a plain file named `config`, writable like any
    # other: git uses one only when named with --git-dir.
    "safe.bareRepository": "explicit",
}
GIT_VARIABLES: dict[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    # Each of these outranks its config settings (core.pager and pager.<command>,
    # core.editor, sequence.editor, core.askPass, core.sshCommand, core.gitProxy).
    "GIT_PAGER": "cat",
    "GIT_EDITOR": "true",
    "GIT_SEQUENCE_EDITOR": "true",
    "GIT_ASKPASS": "",
    "GIT_SSH_COMMAND": "ssh",
    "GIT_PROXY_COMMAND": "",
    # Overrides protocol.<name>.allow: no ext:: (runs a command) or other transport.
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
}


def git_env(config: Mapping[str, str] = GIT_CONFIG, variables: Mapping[str, str] = GIT_VARIABLES) -> dict[str, str]:
    """The variables that make git ignore the code-running settings of its config files:
    ``variables`` as they are, and ``config`` as git's environment config."""
    env = dict(variables)
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def agent_env(state: Path, home: Path = AGENT_HOME) -> dict[str, str]:
    """``HOME``, Claude Code's config dir and git's guard, for an agent whose state dir it sees at ``state``."""
    return {"HOME": str(home), "CLAUDE_CONFIG_DIR": str(state / CLAUDE_DIR), **git_env()}
