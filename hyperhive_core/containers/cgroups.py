"""Per-agent cgroups: the kernel bounds each agent's memory, processes and CPU.

The daemon makes one cgroup per agent, ``<own>/hyperhive/<hive id>/<agent>``, below
its own cgroup in each hierarchy it uses: whatever bounds the daemon (a systemd
unit, a container) still bounds its agents, and under systemd the agents live in the
subtree delegated to the daemon's unit. It writes the agent's caps there and puts
every sandbox in it before the sandbox runs anything (``spawn.SpawnedProcess.start``).

On cgroup v1 the memory, pids and cpu controllers each have a hierarchy of their
own; on v2 one tree has them all, handed down level by level through
``cgroup.subtree_control``. An OOM kill takes the whole agent down: v2 does that
itself (``memory.oom.group``); on v1 ``watch_oom`` kills the rest. docs/operations.md
has the whole story.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.config import option
from hyperhive_core.containers import Limits
from hyperhive_core.errors import ConfigError, HyperhiveError

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
MOUNTINFO = Path("/proc/self/mountinfo")
PROC_CGROUP = Path("/proc/self/cgroup")
MIB = 1024 * 1024
# The smallest caps a config may ask for: below them not even a shell starts.
MIN_MEMORY_MB = 32
MIN_PIDS = 16
# Below this Claude Code's own temporary files would not fit.
MIN_TMP_MB = 16
MAX_CPU_WEIGHT = 10_000
# cgroup v1's cpu.shares bounds; a weight maps to shares as systemd maps them (100 → 1024).
MIN_SHARES, MAX_SHARES = 2, 262_144
# How long the kernel gets to pick its OOM victim after v1 reports an OOM.
OOM_KILL_WAIT = 2.0
# How long an agent's processes get to die once killed, before its cgroup is left behind.
KILL_WAIT = 5.0
POLL = 0.02
DAEMON_LEAF = "daemon"
MODES = ("auto", "required", "off")
LIMIT_KEYS = ("memory_max_mb", "memory_high_mb", "pids_max", "cpu_weight", "tmp_size_mb")
"""The caps ``[containers]`` sets for every agent and ``[agents.NAME]`` may override."""


@dataclass
class ContainersSection:
    """Every agent's resource caps, enforced with cgroups (bwrap) or systemd (nspawn).

    An agent's own ``[agents.NAME]`` table or ``agent.toml`` may override each key.
    """

    memory_max_mb: int = option(
        2048,
        help="Hard memory cap per agent, in MiB, all its sandboxes together; over it the\n"
        "kernel OOM-kills the agent, which then restarts and resumes its session. 0: no cap.",
    )
    memory_high_mb: int = option(
        1536,
        help="Soft memory cap per agent, in MiB: above it the kernel reclaims the agent's memory\n"
        "first (cgroup v2 and systemd throttle it; v1 only under host memory pressure). 0: none.\n"
        "Never above the agent's memory_max_mb.",
    )
    pids_max: int = option(512, help="Processes and threads per agent; a fork over it fails. 0: no cap.")
    cpu_weight: int = option(100, help="Each agent's CPU share under contention, 1 to 10000; 100 is an even share.")
    tmp_size_mb: int = option(
        256,
        help="Size of each sandbox's /tmp (and /dev/shm), in MiB: a write past it fails with\n"
        "ENOSPC. Its pages count against memory_max_mb too. 0: the kernel's default, half of RAM.",
    )
    cgroups: str = option(
        "auto",
        help="auto: caps where cgroups can be used, else run without (said loudly);\n"
        "required: refuse to start without them; off: no caps.",
    )

    def __post_init__(self) -> None:
        problems = limit_problems(
            memory_max_mb=self.memory_max_mb,
            memory_high_mb=self.memory_high_mb,
            pids_max=self.pids_max,
            cpu_weight=self.cpu_weight,
            tmp_size_mb=self.tmp_size_mb,
        )
        if self.cgroups not in MODES:
            problems.append(f"cgroups must be one of {', '.join(MODES)}, not {self.cgroups!r}")
        if problems:
            raise ConfigError("[containers] " + "; ".join(problems))


def limit_problems(
    *,
    memory_max_mb: int | None,
    memory_high_mb: int | None,
    pids_max: int | None,
    cpu_weight: int | None,
    tmp_size_mb: int | None,
) -> list[str]:
    """What is wrong with these caps (``None``: not given), one sentence per key."""
    problems = []
    for key, value, least in (
        ("memory_max_mb", memory_max_mb, MIN_MEMORY_MB),
        ("memory_high_mb", memory_high_mb, MIN_MEMORY_MB),
        ("pids_max", pids_max, MIN_PIDS),
        ("tmp_size_mb", tmp_size_mb, MIN_TMP_MB),
    ):
        if value is not None and value != 0 and not least <= value:
            problems.append(f"{key} must be 0 (no cap) or at least {least}, not {value}")
    if memory_max_mb and memory_high_mb and memory_high_mb > memory_max_mb:
        problems.append(
            f"memory_high_mb ({memory_high_mb}) must not be above memory_max_mb ({memory_max_mb}): "
            "the soft cap has to come before the hard one"
        )
    if cpu_weight is not None and not 1 <= cpu_weight <= MAX_CPU_WEIGHT:
        problems.append(f"cpu_weight must be from 1 to {MAX_CPU_WEIGHT} (100 is an even share), not {cpu_weight}")
    return problems


def resolve_limits(
    section: ContainersSection,
    *,
    memory_max_mb: int | None = None,
    memory_high_mb: int | None = None,
    pids_max: int | None = None,
    cpu_weight: int | None = None,
    tmp_size_mb: int | None = None,
) -> Limits:
    """An agent's caps: its own values where it has them, else the hive's.

    A soft cap taken from the hive never exceeds the agent's own hard cap.
    """
    hard = section.memory_max_mb if memory_max_mb is None else memory_max_mb
    soft = section.memory_high_mb if memory_high_mb is None else memory_high_mb
    if hard and soft > hard:
        soft = hard
    return Limits(
        memory_max_mb=hard,
        memory_high_mb=soft,
        pids_max=section.pids_max if pids_max is None else pids_max,
        cpu_weight=section.cpu_weight if cpu_weight is None else cpu_weight,
        tmp_size_mb=section.tmp_size_mb if tmp_size_mb is None else tmp_size_mb,
    )


def weight_to_shares(weight: int) -> int:
    """cgroup v2's ``cpu.weight`` as v1's ``cpu.shares``, the way systemd converts it."""
    return max(MIN_SHARES, min(MAX_SHARES, weight * 1024 // 100))


def describe_limits(limits: Limits) -> str:
    """``memory 2048 MiB (soft 1536), 512 processes, cpu weight 100``."""
    memory = f"memory {limits.memory_max_mb} MiB" if limits.memory_max_mb else "memory uncapped"
    if limits.memory_high_mb:
        memory += f" (soft {limits.memory_high_mb})"
    pids = f"{limits.pids_max} processes" if limits.pids_max else "processes uncapped"
    return f"{memory}, {pids}, cpu weight {limits.cpu_weight}"


# -- where the hierarchies are --------------------------------------------------------


class CgroupsUnavailable(HyperhiveError):
    """This host, or this daemon, cannot give agents cgroups of their own."""


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy, and the daemon's own cgroup in it."""

    mount: Path
    own: str
    """The daemon's cgroup, from ``/proc/self/cgroup``: ``/`` or ``/system.slice/hyperhive.service``."""

    @property
    def own_dir(self) -> Path:
        return self.mount / self.own.lstrip("/")


@dataclass(frozen=True)
class Layout:
    """Which cgroup version the daemon uses, and where each controller lives."""

    version: int
    hierarchies: dict[str, Hierarchy]
    """Controller → its hierarchy; on v2 all three are the one tree."""


def _unescape(path: str) -> str:
    """A mountinfo path with its octal escapes (``\\040`` for a space) decoded."""
    return path.encode().decode("unicode_escape") if "\\" in path else path


def parse_mountinfo(text: str) -> tuple[dict[str, Path], Path | None]:
    """The v1 hierarchies holding our controllers (controller → mount), and the first cgroup2 mount."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        before, separator, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not separator or len(fields) < 5 or len(tail) < 2:
            continue
        mount = Path(_unescape(fields[4]))
        if tail[0] == "cgroup2" and v2 is None:
            v2 = mount
        elif tail[0] == "cgroup" and len(tail) >= 3:
            for controller in set(tail[2].split(",")) & set(CONTROLLERS):
                v1.setdefault(controller, mount)
    return v1, v2


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """``/proc/self/cgroup``: the v1 cgroup of each controller, and the v2 one."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        if not controllers:
            v2 = path
        for controller in controllers.split(","):
            v1[controller] = path
    return v1, v2


def detect_layout(mountinfo: str, proc_cgroup: str) -> Layout:
    """v1, v2 or hybrid, from ``/proc/self/mountinfo`` and ``/proc/self/cgroup``.

    On a hybrid host (v1 controllers beside a cgroup2 tree without them) the
    controllers live on v1, so v1 it is.

    :raises CgroupsUnavailable: the three controllers are not all mounted on one version.
    """
    v1_mounts, v2_mount = parse_mountinfo(mountinfo)
    v1_own, v2_own = parse_proc_cgroup(proc_cgroup)
    if set(v1_mounts) >= set(CONTROLLERS):
        hierarchies = {name: Hierarchy(v1_mounts[name], v1_own.get(name, "/")) for name in CONTROLLERS}
        return Layout(1, hierarchies)
    if v2_mount is not None:
        offered = _read_words(v2_mount / "cgroup.controllers")
        missing = [name for name in CONTROLLERS if name not in offered and name not in v1_mounts]
        split = sorted(set(v1_mounts) & set(CONTROLLERS))
        if split:
            raise CgroupsUnavailable(
                f"the {', '.join(split)} controller(s) are on cgroup v1 and the rest on v2 at {v2_mount}; "
                "hyperhive needs memory, pids and cpu on one version (boot with systemd.unified_cgroup_hierarchy=1)"
            )
        if missing:
            raise CgroupsUnavailable(
                f"the cgroup v2 tree at {v2_mount} lacks the {', '.join(missing)} controller(s) "
                f"(its cgroup.controllers: {' '.join(sorted(offered)) or 'none'})"
            )
        hierarchy = Hierarchy(v2_mount, v2_own or "/")
        return Layout(2, dict.fromkeys(CONTROLLERS, hierarchy))
    found = ", ".join(sorted(v1_mounts)) or "none"
    raise CgroupsUnavailable(f"no cgroup hierarchy offers memory, pids and cpu (v1 controllers mounted: {found})")


def hive_id(state_root: Path) -> str:
    """A short name for the hive's cgroups, the same for every run from one state root."""
    return hashlib.sha256(str(state_root.resolve()).encode()).hexdigest()[:12]


# -- one agent's cgroup ----------------------------------------------------------------


@dataclass(eq=False)
class AgentCgroup:
    """One agent's cgroup: a directory per hierarchy on v1, one on v2."""

    agent: str
    version: int
    dirs: dict[str, Path]
    """Controller → the agent's cgroup directory in that controller's hierarchy."""
    limits: Limits
    oom_told: int = 0
    """OOM kills already reported as an exit cause."""
    oom_handled: int = 0
    """OOM kills after which (v1) the rest of the agent was killed."""
    watched: bool = False
    mounts: dict[str, Path] = field(default_factory=dict)

    @property
    def distinct_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def write_limits(self, limits: Limits) -> None:
        """Write ``limits`` to the interface files; 0 lifts a cap."""
        memory, pids, cpu = self.dirs["memory"], self.dirs["pids"], self.dirs["cpu"]
        # A capped agent gets no swap: over its cap it is OOM-killed, never paged out to thrash
        # the host. The swap files exist only where the kernel accounts swap.
        if self.version == 1:
            # memory+swap may never be below memory: lifted first, then set to the new cap. Only
            # with swap on the host: v1 counts no cap hits (failcnt) once memory+swap is capped.
            memsw = _present(memory / "memory.memsw.limit_in_bytes") if host_swaps() else []
            values = [
                *((path, "-1") for path in memsw),
                (memory / "memory.limit_in_bytes", _bytes_or(limits.memory_max_mb, "-1")),
                *((path, _bytes_or(limits.memory_max_mb, "-1")) for path in memsw),
                (memory / "memory.soft_limit_in_bytes", _bytes_or(limits.memory_high_mb, "-1")),
                (pids / "pids.max", str(limits.pids_max or "max")),
                (cpu / "cpu.shares", str(weight_to_shares(limits.cpu_weight))),
            ]
        else:
            values = [
                # One OOM kill takes the whole agent: its session restarts whole, never half-dead.
                (memory / "memory.oom.group", "1"),
                (memory / "memory.high", _bytes_or(limits.memory_high_mb, "max")),
                (memory / "memory.max", _bytes_or(limits.memory_max_mb, "max")),
                *((path, "0" if limits.memory_max_mb else "max") for path in _present(memory / "memory.swap.max")),
                (pids / "pids.max", str(limits.pids_max or "max")),
                (cpu / "cpu.weight", str(limits.cpu_weight)),
            ]
        for path, value in values:
            try:
                write_file(path, value)
            except OSError as exc:
                raise HyperhiveError(
                    f"cannot set {path.name} = {value} for agent {self.agent!r} ({path.parent}): {exc.strerror}"
                ) from None
        self.limits = limits

    def open_procs(self) -> list[int]:
        """Descriptors of each ``cgroup.procs``, opened by the daemon (root), for a child to join with."""
        fds: list[int] = []
        try:
            for directory in self.distinct_dirs:
                fds.append(os.open(directory / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise HyperhiveError(f"cannot open the cgroup of agent {self.agent!r}: {exc}") from None
        return fds

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return _read_keyed(self.dirs["memory"] / name).get("oom_kill", 0)

    def usage(self) -> dict[str, Any]:
        """Current usage, and how often each cap was hit; ``None`` for what cannot be read."""
        memory, pids = self.dirs["memory"], self.dirs["pids"]
        if self.version == 1:
            used = _read_int(memory / "memory.usage_in_bytes")
            memory_hits = _read_int(memory / "memory.failcnt")
        else:
            used = _read_int(memory / "memory.current")
            memory_hits = _read_keyed(memory / "memory.events").get("max")
        return {
            "memory_mb": None if used is None else round(used / MIB, 1),
            "pids": _read_int(pids / "pids.current"),
            "oom_kills": self.oom_kills(),
            "memory_max_hits": memory_hits,
            "pids_max_hits": _read_keyed(pids / "pids.events").get("max"),
        }

    def processes(self) -> set[int]:
        """Every process in the cgroup (on v1, in any of its hierarchies)."""
        pids: set[int] = set()
        for directory in self.distinct_dirs:
            pids |= _read_ints(directory / "cgroup.procs")
        return pids

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup; v2's ``cgroup.kill`` does it atomically."""
        if self.version == 2 and (self.dirs["memory"] / "cgroup.kill").exists():
            with contextlib.suppress(FileNotFoundError):
                write_file(self.dirs["memory"] / "cgroup.kill", "1")
                return
        for pid in self.processes():
            _kill_if_member(pid, self)

    def member(self, proc_cgroup: str) -> bool:
        """Whether a process whose ``/proc/PID/cgroup`` reads ``proc_cgroup`` is in this cgroup."""
        v1, v2 = parse_proc_cgroup(proc_cgroup)
        controller = "memory"
        inside = "/" + str(self.dirs[controller].relative_to(self.mounts[controller]))
        return (v1.get(controller) if self.version == 1 else v2) == inside

    async def kill_and_wait(self, timeout: float = KILL_WAIT) -> bool:
        """Kill every process until none is left; False if some outlived ``timeout``."""
        with trio.move_on_after(timeout):
            while self.processes():
                self.kill_all()
                await trio.sleep(POLL)
            return True
        return False


def _kill_if_member(pid: int, cgroup: AgentCgroup) -> None:
    """SIGKILL ``pid`` if, once a pidfd pins it, it is still in ``cgroup``: a pid reused
    in between (the daemon is root) must never get the signal."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already
        return
    try:
        if cgroup.member(_read(Path(f"/proc/{pid}/cgroup")) or ""):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


# -- the hive's cgroups ------------------------------------------------------------------


class Cgroups:
    """The hive's cgroups, ``<own>/hyperhive/<hive id>/<agent>`` in each hierarchy of ``layout``."""

    def __init__(self, layout: Layout, hive: str) -> None:
        self.layout = layout
        self.hive = hive
        self._agents: dict[str, AgentCgroup] = {}
        self._new_send, self._new_recv = trio.open_memory_channel[AgentCgroup](math.inf)

    @property
    def version(self) -> int:
        return self.layout.version

    def describe(self) -> str:
        """``cgroup v1`` or ``cgroup v2``, with where the hive's cgroups are."""
        where = sorted({str(path) for path in self.hive_dirs().values()})
        return f"cgroup v{self.version} ({', '.join(where)})"

    def hive_dirs(self) -> dict[str, Path]:
        return {name: h.own_dir / "hyperhive" / self.hive for name, h in self.layout.hierarchies.items()}

    def prepare(self) -> None:
        """Create the hive's cgroups (on v2 handing the controllers down to them) and
        remove empty ones a previous run left behind.

        :raises CgroupsUnavailable: with what to do about it.
        """
        try:
            if self.version == 2:
                self._delegate_v2()
            else:
                for directory in set(self.hive_dirs().values()):
                    directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgroupsUnavailable(f"cannot create the hive's cgroups: {exc}") from None
        for directory in set(self.hive_dirs().values()):
            for stale in _subdirs(directory):
                with contextlib.suppress(OSError):
                    stale.rmdir()

    def _delegate_v2(self) -> None:
        """Enable memory, pids and cpu down to the hive's cgroup.

        cgroup v2 lets a cgroup hand controllers to its children only while no
        process lives in it; so the daemon, alone in its (delegated) cgroup, first
        moves into a leaf of its own, as systemd asks of a unit with ``Delegate=yes``.
        """
        hierarchy = self.layout.hierarchies["memory"]
        base = hierarchy.own_dir
        offered = _read_words(base / "cgroup.controllers")
        missing = [name for name in CONTROLLERS if name not in offered]
        if missing:
            raise CgroupsUnavailable(
                f"the daemon's cgroup {hierarchy.own} is not given the {', '.join(missing)} controller(s); "
                "run it as a systemd service with Delegate=yes (hyperhive install-service and the NixOS module do)"
            )
        if base != hierarchy.mount and not _enabled(base):
            self._leave(base, hierarchy.own)
        for directory in (base, base / "hyperhive", base / "hyperhive" / self.hive):
            directory.mkdir(exist_ok=True)
            if _enabled(directory):
                continue
            try:
                _enable(directory)
            except OSError as exc:
                # The root of a cgroup namespace (a container's) looks like the real root, but
                # is not exempt: a process in it blocks the hand-down as anywhere else.
                if exc.errno != errno.EBUSY or directory != base:
                    raise
                self._leave(base, hierarchy.own)
                _enable(directory)

    def _leave(self, base: Path, own: str) -> None:
        """Move the daemon out of ``base`` into a leaf of its own, if nothing else lives there."""
        others = _read_ints(base / "cgroup.procs") - {os.getpid()}
        if others:
            raise CgroupsUnavailable(
                f"the daemon shares its cgroup {own} with {len(others)} other process(es), and cgroup v2 "
                "hands controllers down only from a cgroup with no process in it; run it as a systemd service "
                "with Delegate=yes (hyperhive install-service and the NixOS module do)"
            )
        leaf = base / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        write_file(leaf / "cgroup.procs", str(os.getpid()))
        log.info("moved the daemon into %s, so its cgroup can hand controllers to the agents'", leaf)

    def get(self, agent: str) -> AgentCgroup | None:
        return self._agents.get(agent)

    def apply(self, agent: str, limits: Limits) -> AgentCgroup:
        """Create ``agent``'s cgroup, or reuse it, with ``limits`` written."""
        dirs = {name: directory / agent for name, directory in self.hive_dirs().items()}
        for directory in dict.fromkeys(dirs.values()):
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                raise HyperhiveError(f"cannot create the cgroup {directory} of agent {agent!r}: {exc}") from None
        cgroup = self._agents.get(agent)
        if cgroup is None:
            mounts = {name: h.mount for name, h in self.layout.hierarchies.items()}
            cgroup = AgentCgroup(agent, self.version, dirs, limits, mounts=mounts)
            cgroup.oom_told = cgroup.oom_handled = cgroup.oom_kills()
            self._agents[agent] = cgroup
            if self.version == 1:
                self._new_send.send_nowait(cgroup)  # for watch_oom
        cgroup.write_limits(limits)
        return cgroup

    def exit_cause(self, agent: str) -> str | None:
        """``OOM-killed: ...`` once for each new OOM kill in ``agent``'s cgroup, else ``None``."""
        cgroup = self._agents.get(agent)
        if cgroup is None:
            return None
        kills = cgroup.oom_kills()
        if kills <= cgroup.oom_told:
            return None
        cgroup.oom_told = kills
        if not cgroup.limits.memory_max_mb:
            return "OOM-killed: out of memory (it has no memory cap of its own)"
        return f"OOM-killed: over its memory cap of {cgroup.limits.memory_max_mb} MiB"

    async def remove(self, agent: str) -> None:
        """Kill whatever still runs in ``agent``'s cgroup, then remove it."""
        cgroup = self._agents.pop(agent, None)
        if cgroup is None:
            return
        if not await cgroup.kill_and_wait():
            log.warning("%s: processes outlived SIGKILL in %s; its cgroup stays", agent, cgroup.distinct_dirs)
            return
        for directory in cgroup.distinct_dirs:
            _remove_dir(directory)

    async def close(self) -> None:
        """Remove every agent's cgroup, then the hive's (the daemon is stopping)."""
        for agent in list(self._agents):
            await self.remove(agent)
        for directory in set(self.hive_dirs().values()):
            _remove_dir(directory)
            with contextlib.suppress(OSError):  # other hives may still use it
                directory.parent.rmdir()

    async def watch_oom(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """cgroup v1: once the kernel OOM-kills a process of an agent, kill the rest of it.

        v2 does this itself (``memory.oom.group``). Without it a leaking tool's death
        would leave Claude Code running, or Claude Code's death leave orphans; either
        way the agent restarts whole, from its saved session.
        """
        async with trio.open_nursery() as nursery:
            for cgroup in list(self._agents.values()):
                nursery.start_soon(self._watch_agent, cgroup)
            task_status.started()
            async for cgroup in self._new_recv:
                nursery.start_soon(self._watch_agent, cgroup)

    async def _watch_agent(self, cgroup: AgentCgroup) -> None:
        if cgroup.version != 1 or cgroup.watched or self._agents.get(cgroup.agent) is not cgroup:
            return
        memory = cgroup.dirs["memory"]
        notify = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        cgroup.watched = True
        try:
            control = os.open(memory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                # The eventfd fires when the cgroup hits OOM, and when it is removed.
                write_file(memory / "cgroup.event_control", f"{notify} {control}")
            finally:
                os.close(control)
            while True:
                await trio.lowlevel.wait_readable(notify)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(notify)
                if self._agents.get(cgroup.agent) is not cgroup or not memory.is_dir():
                    return
                await self._after_oom(cgroup)
        finally:
            cgroup.watched = False
            trio.lowlevel.notify_closing(notify)
            os.close(notify)

    async def _after_oom(self, cgroup: AgentCgroup) -> None:
        """v1 reports an OOM before its killer acts: wait for the kill, then take the rest."""
        with trio.move_on_after(OOM_KILL_WAIT):
            while (kills := cgroup.oom_kills()) <= cgroup.oom_handled:
                await trio.sleep(POLL)
            cgroup.oom_handled = kills
            log.warning(
                "%s: OOM kill at its %d MiB memory cap; killing the rest of its processes",
                cgroup.agent,
                cgroup.limits.memory_max_mb,
            )
            cgroup.kill_all()


def hive_cgroups(
    section: ContainersSection,
    state_root: Path,
    *,
    mountinfo: Path = MOUNTINFO,
    proc_cgroup: Path = PROC_CGROUP,
) -> tuple[Cgroups | None, str]:
    """The hive's cgroups, prepared; or ``None`` and why agents run without caps (logged loudly).

    :raises HyperhiveError: ``[containers] cgroups = "required"`` and they cannot be had.
    """
    if section.cgroups == "off":
        reason = 'no limits: [containers] cgroups = "off"'
        log.warning("agents run WITHOUT memory, process or CPU limits: %s", reason)
        return None, reason
    try:
        if os.geteuid() != 0:
            raise CgroupsUnavailable("the daemon is not root, and only root may create cgroups for agents")
        cgroups = Cgroups(detect_layout(mountinfo.read_text(), proc_cgroup.read_text()), hive_id(state_root))
        cgroups.prepare()
    except (CgroupsUnavailable, OSError) as exc:
        if section.cgroups == "required":
            raise HyperhiveError(f'[containers] cgroups = "required", but {exc}') from None
        reason = f"no limits: {exc}"
        for line in NO_LIMITS_BANNER.format(reason=reason).splitlines():
            log.warning(line)
        return None, reason
    log.info("agents' resource limits: %s", cgroups.describe())
    return cgroups, ""


NO_LIMITS_BANNER = """************************************************************************
*  NO RESOURCE LIMITS: one agent can exhaust this host's memory.       *
************************************************************************
  {reason}
  Fix that, or set [containers] cgroups = "off" to run without on purpose."""


# -- files ------------------------------------------------------------------------------------


def write_file(path: Path, text: str) -> None:
    """One ``write()`` of ``text``: cgroup files take each write as one command."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def host_swaps() -> bool:
    """Whether the host has swap space on."""
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("SwapTotal:"):
            return line.split()[1] != "0"
    return False


def _present(path: Path) -> list[Path]:
    return [path] if path.exists() else []


def _bytes_or(mib: int, unlimited: str) -> str:
    return str(mib * MIB) if mib else unlimited


def _read(path: Path) -> str | None:
    """A small interface file's text, ``None`` if unreadable; one ``read()``, none of
    ``open()``'s layers: usage is read for every agent of every status."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    text = (_read(path) or "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _read_words(path: Path) -> set[str]:
    return set((_read(path) or "").split())


def _read_ints(path: Path) -> set[int]:
    return {int(word) for word in _read_words(path) if word.isdigit()}


def _read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file (``memory.events``, ``memory.oom_control``, ``pids.events``)."""
    values = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def _enable(directory: Path) -> None:
    write_file(directory / "cgroup.subtree_control", " ".join(f"+{name}" for name in CONTROLLERS))


def _enabled(directory: Path) -> bool:
    """Whether ``directory`` already hands memory, pids and cpu to its children (v2)."""
    enabled = {word.lstrip("+") for word in _read_words(directory / "cgroup.subtree_control")}
    return enabled >= set(CONTROLLERS)


def _subdirs(directory: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        yield from (entry for entry in directory.iterdir() if entry.is_dir())


def _remove_dir(directory: Path) -> None:
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove the cgroup %s: %s", directory, exc.strerror)
