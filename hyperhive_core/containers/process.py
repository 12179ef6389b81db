"""The ``process`` backend: agents run as plain child processes, with no isolation.

For tests and development on machines without bubblewrap. It says so in the log and
in every status, because an agent here runs with the daemon's own privileges.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence

import trio

from hyperhive_core.containers import (
    ContainerBackend,
    ContainerProcess,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ContainerView,
)
from hyperhive_core.containers.spawn import SpawnedProcess

log = logging.getLogger(__name__)

NO_ISOLATION = "no isolation: agents run with the daemon's privileges"


class ProcessBackend(ContainerBackend):
    name = "process"
    isolated = False

    def __init__(self) -> None:
        self._running: set[str] = set()
        self._processes: dict[str, set[SpawnedProcess]] = {}
        log.warning("container backend 'process': %s", NO_ISOLATION)

    def view(self, spec: ContainerSpec) -> ContainerView:
        return ContainerView(state=spec.state_dir, socket=spec.socket_dir / "agent.sock")

    async def create(self, spec: ContainerSpec) -> None:
        spec.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def start(self, spec: ContainerSpec) -> None:
        await self.create(spec)
        self._running.add(spec.agent)

    async def stop(self, spec: ContainerSpec) -> None:
        self._running.discard(spec.agent)
        for process in self._processes.pop(spec.agent, set()):
            if process.returncode is None:
                # Each process leads its own session: take down whatever it started too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    async def destroy(self, spec: ContainerSpec, purge: bool) -> None:
        await self.stop(spec)

    async def status(self, spec: ContainerSpec) -> ContainerStatus:
        state = ContainerState.RUNNING if spec.agent in self._running else ContainerState.STOPPED
        return ContainerStatus(state, isolated=False, detail=NO_ISOLATION)

    async def exec(
        self, spec: ContainerSpec, argv: Sequence[str], env: Mapping[str, str], *, pty: bool = False
    ) -> ContainerProcess:
        if spec.agent not in self._running:
            raise RuntimeError(f"container of {spec.agent!r} is not running")
        await trio.lowlevel.checkpoint()
        process = SpawnedProcess.start(argv, env=env, cwd=spec.state_dir, pty=pty)
        live = self._processes.setdefault(spec.agent, set())
        live.difference_update({p for p in live if p.returncode is not None})
        live.add(process)
        return process
