"""Where the hive keeps its files, under one state root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


def default_state_dir() -> Path:
    """``/var/lib/hyperhive`` for root, else ``$XDG_DATA_HOME/hyperhive`` (``~/.local/share``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/hyperhive")
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "hyperhive"


class StatePaths(NamedTuple):
    """The layout of the state root.

    A NamedTuple, not a dataclass: the CLI builds one to find the host socket, and
    importing dataclasses (it imports inspect) would add several ms to its start.
    """

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "hive.db"

    @property
    def host_socket(self) -> Path:
        """The operator's control socket."""
        return self.root / "host.sock"

    def agent_dir(self, name: str) -> Path:
        """Everything of one agent: its ``state`` and its proposed ``config`` repo."""
        return self.root / "agents" / name

    def agent_state(self, name: str) -> Path:
        """The agent's persistent ``/state``."""
        return self.agent_dir(name) / "state"

    def applied(self, name: str) -> Path:
        """The agent's applied config: what runs."""
        return self.root / "applied" / name

    def inside(self, path: Path) -> Path:
        """``path`` resolved, if it lies strictly inside the state root; else a ValueError.

        Checked before anything is deleted, so no name or symlink can aim outside.
        """
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise ValueError(f"{path} resolves to {resolved}, outside the state root {root}")
        return resolved

    @property
    def daemon_lock(self) -> Path:
        """Held locked by the running daemon, so that a second one on this root refuses to start."""
        return self.root / "run" / "daemon.lock"

    def agent_run(self, name: str) -> Path:
        """The directory holding the agent's own MCP socket."""
        return self.root / "run" / name

    def ensure(self, admin_gid: int | None = None) -> None:
        """Create the state root, private to the daemon's user.

        :param admin_gid: the host socket's group. Its members may then pass
            through the root (0710) to reach ``host.sock``, but not list it.
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if admin_gid is None:
            self.root.chmod(0o700)
        else:
            os.chown(self.root, -1, admin_gid)
            self.root.chmod(0o710)
