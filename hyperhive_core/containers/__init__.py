"""Container backends: where an agent's Claude Code process, and what it runs, live.

A backend is chosen by ``[hive] container_backend`` among those registered through
the ``register_container_backends`` hook. The daemon is the only owner of restarts;
backends report what happened through ``on_container_event``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from hyperhive_core.plugins import HivePluginManager, Registry, collect


class ContainerState(enum.StrEnum):
    ABSENT = "absent"
    STOPPED = "stopped"
    RUNNING = "running"


@dataclass(frozen=True)
class Limits:
    """An agent's resource caps, as ``[containers]`` and its own config resolve them; 0 is no cap."""

    memory_max_mb: int
    """Hard cap on the agent's memory (all its sandboxes together): over it, the kernel OOM-kills."""
    memory_high_mb: int
    """Soft cap: above it the kernel reclaims the agent's memory first (throttling it)."""
    pids_max: int
    """Processes and threads the agent may have at once; a fork over it fails."""
    cpu_weight: int
    """Its share of the CPU under contention, 1 to 10000 (100 is an even share)."""
    tmp_size_mb: int = 0
    """The size of each of its sandboxes' ``/tmp`` (and ``/dev/shm``); 0: the kernel's default, half of RAM."""


@dataclass(frozen=True)
class ContainerSpec:
    """What a backend needs to know to build and run an agent's container (host paths)."""

    agent: str
    role: str
    state_dir: Path
    socket_dir: Path
    extra_binds: Mapping[str, Path] = field(default_factory=dict)
    """Container path → host path, mounted read-write (the manager's view of config repos)."""
    limits: Limits | None = None
    """The agent's resource caps; ``None``: none asked for."""


@dataclass(frozen=True)
class ContainerView:
    """Paths as the agent sees them from inside its container."""

    state: Path
    socket: Path


@dataclass(frozen=True)
class ContainerStatus:
    state: ContainerState
    isolated: bool
    detail: str = ""


class ContainerProcess(Protocol):
    """A process running inside a container; ``spawn.SpawnedProcess`` is one.

    With ``pty=True``, ``stdin`` and ``stdout`` are both the terminal's master side
    (a read returns ``b""`` once the process is gone), ``stderr`` is ``None``, and
    ``resize`` changes the terminal's size.
    """

    pid: int

    # Read-only, so a process whose pipes are always there (no ``None``) is one too.
    @property
    def stdin(self) -> trio.abc.SendStream | None: ...

    @property
    def stdout(self) -> trio.abc.ReceiveStream | None: ...

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...

    def send_signal(self, sig: int) -> None: ...

    def resize(self, rows: int, cols: int) -> None: ...


class ContainerEventKind(enum.StrEnum):
    STARTED = "started"
    STOPPED = "stopped"
    CRASHED = "crashed"


@dataclass(frozen=True)
class ContainerEvent:
    """What ``on_container_event`` hooks receive."""

    agent: str
    kind: ContainerEventKind
    detail: str = ""
    """The exit status or unit result, in words."""
    log_tail: tuple[str, ...] = ()
    """The last lines the container wrote, oldest first (bounded)."""


class ContainerBackend(abc.ABC):
    """Lifecycle and execution for agents' containers."""

    name: str
    isolated: bool
    """False when agents run with the daemon's own privileges; status shows it."""
    private_network: bool = False
    """True when each container has a network of its own, and reaches the model API and
    the agent's ``egress`` only through its ``model.sock`` (``modelproxy.py``)."""

    @abc.abstractmethod
    def view(self, spec: ContainerSpec) -> ContainerView:
        """Where the agent sees its state dir and socket."""

    @abc.abstractmethod
    async def create(self, spec: ContainerSpec) -> None:
        """Prepare the container; idempotent."""

    @abc.abstractmethod
    async def start(self, spec: ContainerSpec) -> None:
        """Make the container ready to ``exec`` in."""

    @abc.abstractmethod
    async def stop(self, spec: ContainerSpec) -> None:
        """Stop the container and every process in it."""

    @abc.abstractmethod
    async def destroy(self, spec: ContainerSpec, purge: bool) -> None:
        """Remove the container; with ``purge`` the caller wipes its state too."""

    @abc.abstractmethod
    async def status(self, spec: ContainerSpec) -> ContainerStatus:
        """The container's current state."""

    @property
    def limits_summary(self) -> str:
        """How agents' resource caps are enforced (``cgroup v2 (...)``), or ``no limits: why``."""
        return f"no limits: the {self.name} backend applies none"

    async def limits(self, spec: ContainerSpec) -> dict[str, Any]:
        """The agent's caps as enforced, with current usage where cheap to read (JSON-able).

        ``{"enforced": False, "why": ...}`` when this backend applies none.
        """
        await trio.lowlevel.checkpoint()
        return {"enforced": False, "why": self.limits_summary}

    def exit_cause(self, spec: ContainerSpec) -> str | None:
        """Why the agent's process just died, when the backend knows better than its exit status
        (an OOM kill); ``None`` otherwise. Each cause is told once."""
        return None

    async def close(self) -> None:
        """The daemon is stopping and no agent runs any more: release what the backend holds."""
        await trio.lowlevel.checkpoint()

    @abc.abstractmethod
    async def exec(
        self, spec: ContainerSpec, argv: Sequence[str], env: Mapping[str, str], *, pty: bool = False
    ) -> ContainerProcess:
        """Start ``argv`` inside the container, as the agent.

        With ``pty=False`` stdin, stdout and stderr are pipes; with ``pty=True`` the
        process gets a fresh terminal (the operator's shell).
        """


def collect_backends(pm: HivePluginManager) -> Registry:
    """Every backend factory from ``register_container_backends``, by name."""
    return collect(pm, "register_container_backends", "container backend", lambda name, factory: (name, factory))
