"""The ``bwrap`` backend: each agent in bubblewrap sandboxes, as its own unprivileged host uid.

Every ``exec`` is a sandbox of its own (new user, pid, ipc, uts, network and
cgroup namespaces) in which the agent sees the system read-only, its state dir at
``/state``, its socket at ``/run/hyperhive/agent.sock`` and a private ``/tmp``.
Its network is loopback only: the model API and its ``egress`` are reached through
the daemon's proxy at ``/run/hyperhive/model.sock`` (``modelproxy.py``).
The daemon drops to the agent's uid *before* it starts bwrap, so root in the
sandbox is never root on the host. docs/security.md has the whole model.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

import hyperhive_core
from hyperhive_core import forward
from hyperhive_core.agentenv import AGENT_HOME
from hyperhive_core.claude import BUNDLED_CLI
from hyperhive_core.config import option
from hyperhive_core.containers import (
    ContainerBackend,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ContainerView,
    Limits,
    landlock,
    seccomp,
)
from hyperhive_core.containers.acl import ensure_reachable
from hyperhive_core.containers.cgroups import MIB, Cgroups, describe_limits
from hyperhive_core.containers.spawn import SpawnedProcess
from hyperhive_core.containers.uids import AgentUids, UidRangeClaim
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.mcp_surface import CONTAINER_SOCKET
from hyperhive_core.modelproxy import CONTAINER_MODEL_SOCKET, SOCKET_NAME

log = logging.getLogger(__name__)

SANDBOX_STATE = Path("/state")
SANDBOX_SOCKET = Path(CONTAINER_SOCKET)
SANDBOX_TMP = "/tmp"  # noqa: S108 - a fresh tmpfs in each sandbox
SANDBOX_SHM = "/dev/shm"  # noqa: S108 - likewise
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# PATH inside, whatever the daemon's: the system's, then the hive's virtualenv (its
# Python, `hyperhive`) and the pinned claude, both bound read-only at their host paths.
SANDBOX_PATH = ":".join(
    dict.fromkeys([*DEFAULT_PATH.split(":"), str(Path(sys.executable).parent), str(BUNDLED_CLI.parent)])
)

# The merged-/usr layout: everything else of the host's system lives under /usr.
SYSTEM_SYMLINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
# What programs need from /etc to run, resolve names and verify TLS; nothing with secrets.
ETC_FILES = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "gai.conf",
    "host.conf",
    "hosts",
    "inputrc",
    "ld.so.cache",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "profile",
    "resolv.conf",
    "ssl/certs",
    "ssl/openssl.cnf",
    "terminfo",
)


@dataclass
class BwrapSection:
    """The bwrap container backend: each agent sandboxed as its own unprivileged host uid."""

    uid_range_start: int = option(61000, help="The first host uid (and gid) given to an agent.")
    uid_range_size: int = option(1000, help="How many uids, from uid_range_start, agents may get.")
    ro_paths: list[Path] = option(
        [],
        help="Host paths bound read-only at the same place in every sandbox, besides the system,\n"
        "the hive's Python and virtualenv and its source tree (which holds the pinned claude CLI).",
    )
    stop_timeout_seconds: float = option(5.0, help="How long a stopping agent gets after SIGTERM before SIGKILL.")

    def __post_init__(self) -> None:
        if self.uid_range_start < 1000:
            raise ConfigError(
                f"[bwrap] uid_range_start must be 1000 or more, above system uids: not {self.uid_range_start}"
            )
        if not 1 <= self.uid_range_size <= 2**31 - self.uid_range_start:
            raise ConfigError(
                f"[bwrap] uid_range_size must be from 1 to 2**31 - uid_range_start, not {self.uid_range_size}"
            )
        for path in self.ro_paths:
            if not path.is_absolute() or not path.exists():
                raise ConfigError(f"[bwrap] ro_paths: {path} is not an absolute path to something that exists")
            if AGENT_HOME.is_relative_to(path):
                raise ConfigError(
                    f"[bwrap] ro_paths: {path} would cover the agents' read-only HOME, {AGENT_HOME}; "
                    "list the directories inside it that agents need instead"
                )
        if self.stop_timeout_seconds <= 0:
            raise ConfigError(f"[bwrap] stop_timeout_seconds must be positive, not {self.stop_timeout_seconds}")


def hive_runtime_paths() -> list[Path]:
    """What the hive's own programs (``hyperhive relay``, the pinned claude) need inside:
    the Python installation, the virtualenv, and the tree that holds ``hyperhive_core``
    (in a checkout: the source tree, with ``.venv`` and ``.tools``)."""
    return [Path(sys.base_prefix), Path(sys.prefix), Path(hyperhive_core.__file__).resolve().parent.parent]


def outermost(paths: Iterable[Path], covered: Iterable[Path] = ()) -> list[Path]:
    """``paths`` without duplicates and without any inside another one or inside ``covered``."""
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda path: len(path.parts)):
        if not any(path.is_relative_to(outer) for outer in [*covered, *kept]):
            kept.append(path)
    return kept


class Sandbox(SpawnedProcess):
    """One bwrap instance. ``pid`` is the outer bwrap on the host; ``send_signal``
    reaches the processes inside, and ``kill`` takes the whole sandbox down."""

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to every process in the sandbox but its init."""
        init = self._init_pid()
        namespace = _pid_namespace(init) if init is not None else None
        # Read the namespace first, then check it was this sandbox's init: a reused pid fails the check.
        if init is None or namespace is None or _parent_pid(init) != self.pid:
            return
        for pid in _all_pids():
            if pid != init:
                _signal_if(pid, sig, lambda pid: _pid_namespace(pid) == namespace)

    def kill(self) -> None:
        """SIGKILL the sandbox's init: the kernel kills everything inside, then bwrap exits."""
        init = self._init_pid()
        if init is None:
            # Not started, or already over: --die-with-parent takes the inside down with bwrap.
            super().kill()
            return
        _signal_if(init, signal.SIGKILL, lambda pid: _parent_pid(pid) == self.pid)

    def _init_pid(self) -> int | None:
        """The host pid of bwrap's child, pid 1 in the sandbox."""
        if self.returncode is not None:
            return None
        children = _children(self.pid)
        return children[0] if children else None


class BwrapBackend(ContainerBackend):
    """Agents in bubblewrap sandboxes; needs a daemon running as root, to switch uids."""

    name = "bwrap"
    isolated = True
    private_network = True

    def __init__(
        self,
        section: BwrapSection,
        uids: AgentUids,
        state_root: Path,
        cgroups: Cgroups | None = None,
        no_limits: str = "no limits: no cgroups were set up",
        *,
        claim: UidRangeClaim | None = None,
    ) -> None:
        """
        :param state_root: hidden in every sandbox, even if it lies inside a bound path.
        :param cgroups: where agents' caps are enforced; ``None``: they run without.
        :param no_limits: why there are no caps, for status.
        :param claim: the host-wide claim on the uid range, released on ``close``.
        """
        if os.geteuid() != 0:
            raise HyperhiveError(
                "the bwrap backend runs each agent as its own host uid, which needs the daemon to run as root; "
                'run it as root, or set [hive] container_backend = "process" (no isolation)'
            )
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise HyperhiveError("bubblewrap is not installed; install it with `apt-get install bubblewrap`")
        self.section = section
        self.uids = uids
        self.bwrap = bwrap
        self.state_root = state_root.resolve()
        self.ro_paths = outermost([*hive_runtime_paths(), *section.ro_paths], covered=[Path("/usr")])
        abi = landlock.abi_version()
        self.scope_sockets = abi >= landlock.SCOPE_ABI
        if not self.scope_sockets:
            log.warning(
                "Landlock ABI %d cannot scope abstract unix sockets and signals (needs %d, Linux 6.12): "
                "each sandbox's own network namespace and pid namespace keep them in alone",
                abi,
                landlock.SCOPE_ABI,
            )
        self.cgroups = cgroups
        self.no_limits = no_limits
        self.claim = claim
        # Compiled once; each sandbox reads its own sealed copy.
        self.seccomp = seccomp.compile_program()
        self._running: dict[str, int] = {}
        """Started agents, with their uids."""
        self._sandboxes: dict[str, set[Sandbox]] = {}

    def view(self, spec: ContainerSpec) -> ContainerView:
        return ContainerView(state=SANDBOX_STATE, socket=SANDBOX_SOCKET)

    async def create(self, spec: ContainerSpec) -> None:
        await self._prepare(spec)

    async def start(self, spec: ContainerSpec) -> None:
        self._running[spec.agent] = await self._prepare(spec)
        if self.cgroups is not None and spec.limits is not None:
            self.cgroups.apply(spec.agent, spec.limits)

    async def stop(self, spec: ContainerSpec) -> None:
        self._running.pop(spec.agent, None)
        async with trio.open_nursery() as nursery:
            for sandbox in self._sandboxes.pop(spec.agent, set()):
                nursery.start_soon(self._stop_sandbox, sandbox)
        if self.cgroups is not None:
            await self.cgroups.remove(spec.agent)

    async def destroy(self, spec: ContainerSpec, purge: bool) -> None:
        await self.stop(spec)
        if purge:
            await self.uids.release(spec.agent)

    async def status(self, spec: ContainerSpec) -> ContainerStatus:
        uid = self._running.get(spec.agent)
        if uid is not None:
            live = sum(sandbox.returncode is None for sandbox in self._sandboxes.get(spec.agent, ()))
            cgroup = self.cgroups.get(spec.agent) if self.cgroups is not None else None
            limits = describe_limits(cgroup.limits) if cgroup is not None else self.no_limits
            detail = f"uid {uid}, {live} sandboxes, {limits}"
            return ContainerStatus(ContainerState.RUNNING, isolated=True, detail=detail)
        uid = await self.uids.lookup(spec.agent)
        if uid is None:
            return ContainerStatus(ContainerState.ABSENT, isolated=True)
        return ContainerStatus(ContainerState.STOPPED, isolated=True, detail=f"uid {uid}")

    async def exec(
        self, spec: ContainerSpec, argv: Sequence[str], env: Mapping[str, str], *, pty: bool = False
    ) -> Sandbox:
        await trio.lowlevel.checkpoint()
        uid = self._running.get(spec.agent)
        if uid is None:
            raise RuntimeError(f"container of {spec.agent!r} is not running")
        socket = spec.socket_dir / "agent.sock"
        if not socket.is_socket():
            raise RuntimeError(f"{socket} is not a socket: open {spec.agent!r}'s socket before exec")
        os.chown(socket, uid, uid, follow_symlinks=False)  # connecting takes write permission on it
        model = spec.socket_dir / SOCKET_NAME
        if model.is_socket():  # the daemon opens one for every agent: the sandbox's way out
            os.chown(model, uid, uid, follow_symlinks=False)
            argv = forward.command(CONTAINER_MODEL_SOCKET, list(argv))
        for source in (*self.ro_paths, spec.state_dir, *spec.extra_binds.values(), socket):
            for directory in ensure_reachable(source, uid):
                log.info("%s: uid %d may now pass through %s, to reach %s", spec.agent, uid, directory, source)
        cgroup = self.cgroups.get(spec.agent) if self.cgroups is not None else None
        procs = cgroup.open_procs() if cgroup is not None else []
        fds = [_data_fd(_passwd(spec.agent, uid)), _data_fd(_group(spec.agent, uid)), seccomp.program_fd(self.seccomp)]
        passwd_fd, group_fd, seccomp_fd = fds
        try:
            sandbox = Sandbox.start(
                self.sandbox_argv(spec, argv, pty=pty, passwd_fd=passwd_fd, group_fd=group_fd, seccomp_fd=seccomp_fd),
                # Passed on by bwrap: never in its argv, which any user's ps shows.
                env=_sandbox_env(spec.agent, env, pty),
                cwd="/",
                pty=pty,
                user=uid,
                pass_fds=fds,
                preexec=landlock.restrict_scope if self.scope_sockets else None,
                cgroups=procs,  # joined between fork and exec: bwrap starts inside the agent's cgroup
            )
        finally:
            for fd in fds + procs:
                os.close(fd)
        live = self._sandboxes.setdefault(spec.agent, set())
        live.difference_update({done for done in live if done.returncode is not None})
        live.add(sandbox)
        return sandbox

    @property
    def limits_summary(self) -> str:
        return self.cgroups.describe() if self.cgroups is not None else self.no_limits

    async def limits(self, spec: ContainerSpec) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if self.cgroups is None or spec.limits is None:
            return {"enforced": False, "why": self.no_limits if self.cgroups is None else "no limits asked for"}
        cgroup = self.cgroups.get(spec.agent)
        return {
            "enforced": True,
            "via": f"cgroup v{self.cgroups.version}",
            **asdict(cgroup.limits if cgroup is not None else spec.limits),
            "usage": cgroup.usage() if cgroup is not None else None,
        }

    def exit_cause(self, spec: ContainerSpec) -> str | None:
        return self.cgroups.exit_cause(spec.agent) if self.cgroups is not None else None

    async def close(self) -> None:
        if self.cgroups is not None:
            await self.cgroups.close()
        if self.claim is not None:
            self.claim.release()

    def sandbox_argv(
        self,
        spec: ContainerSpec,
        argv: Sequence[str],
        *,
        pty: bool,
        passwd_fd: int,
        group_fd: int,
        seccomp_fd: int,
    ) -> list[str]:
        """The bwrap command line that runs ``argv`` in a new sandbox for ``spec.agent``."""
        args = [self.bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        args += ["--unshare-cgroup-try", "--die-with-parent", "--hostname", spec.agent]
        args += ["--seccomp", str(seccomp_fd)]  # loaded last, just before argv runs
        args.append("--unshare-net")  # loopback only (bwrap brings lo up): the way out is model.sock
        if not pty:
            # A sandbox without a terminal of its own must not reach the daemon's (TIOCSTI).
            # A shell on its own fresh pty keeps its session, for job control and ^C.
            args.append("--new-session")
        args += ["--ro-bind", "/usr", "/usr"]
        for link, target in SYSTEM_SYMLINKS.items():
            args += ["--symlink", target, link]
        # Every tmpfs the agent may write is sized (the kernel's default is half of RAM, each);
        # /dev, which holds only device nodes and links, turns read-only.
        size = _tmpfs_size(spec.limits)
        args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", SANDBOX_SHM, "--remount-ro", "/dev"]
        args += [*size, "--tmpfs", SANDBOX_TMP, "--symlink", "../tmp", "/var/tmp"]  # noqa: S108
        for name in ETC_FILES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind-data", str(passwd_fd), "/etc/passwd", "--ro-bind-data", str(group_fd), "/etc/group"]
        for path in self.ro_paths:
            args += ["--ro-bind", str(path), str(path)]
        if any(self.state_root.is_relative_to(path) for path in self.ro_paths):
            # Other agents, the database, host.sock; read-only, as there is nothing to write.
            args += ["--tmpfs", str(self.state_root), "--remount-ro", str(self.state_root)]
        args += ["--bind", str(spec.state_dir), str(SANDBOX_STATE)]
        for inside, source in spec.extra_binds.items():
            args += ["--bind", str(source), inside]
        args += ["--bind", str(spec.socket_dir / "agent.sock"), str(SANDBOX_SOCKET)]
        if (spec.socket_dir / SOCKET_NAME).is_socket():
            args += ["--bind", str(spec.socket_dir / SOCKET_NAME), CONTAINER_MODEL_SOCKET]
        # HOME: empty, on the root tmpfs that turns read-only next, so no dotfile can be planted.
        args += ["--dir", str(AGENT_HOME)]
        args += ["--remount-ro", "/", "--chdir", str(SANDBOX_STATE), "--cap-drop", "ALL", "--", *argv]
        return args

    async def _prepare(self, spec: ContainerSpec) -> int:
        uid = await self.uids.allocate(spec.agent)
        give_state_dir(spec.state_dir, uid)
        # Read-write binds (the manager's config repos) are the agent's to write, too.
        for source in spec.extra_binds.values():
            give_state_dir(source, uid)
        return uid

    async def _stop_sandbox(self, sandbox: Sandbox) -> None:
        sandbox.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.section.stop_timeout_seconds):
            await sandbox.wait()
            return
        sandbox.kill()
        await sandbox.wait()


def give_state_dir(state_dir: Path, uid: int) -> None:
    """Create the agent's state dir, private to its uid; a tree from an earlier owner
    (another uid, the process backend) is handed over whole."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # Only a tree the agent's uid does not own yet is walked: a uid cannot give its files
    # away, so no sandbox of this agent can be swapping symlinks into it meanwhile.
    if state_dir.stat().st_uid != uid:
        for directory, dirs, files in os.walk(state_dir):
            for name in [directory, *(os.path.join(directory, entry) for entry in dirs + files)]:
                os.chown(name, uid, uid, follow_symlinks=False)
    state_dir.chmod(0o700)


def _sandbox_env(agent: str, env: Mapping[str, str], pty: bool) -> dict[str, str]:
    base = {"HOME": str(AGENT_HOME), "USER": agent, "LOGNAME": agent, "PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    if pty:
        base["TERM"] = "xterm-256color"
    return base | dict(env) | {"PATH": SANDBOX_PATH}  # never the daemon's


def _passwd(agent: str, uid: int) -> str:
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{agent}:x:{uid}:{uid}:hyperhive agent:{AGENT_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )


def _group(agent: str, uid: int) -> str:
    return f"root:x:0:\n{agent}:x:{uid}:\nnogroup:x:65534:\n"


def _tmpfs_size(limits: Limits | None) -> list[str]:
    """bwrap's ``--size`` for the next ``--tmpfs``: the agent's ``tmp_size_mb``, if it has one."""
    return ["--size", str(limits.tmp_size_mb * MIB)] if limits is not None and limits.tmp_size_mb else []


def _data_fd(text: str) -> int:
    """A pipe holding ``text``, for ``--ro-bind-data``; it fits the pipe buffer."""
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        pipe.write(text)
    return read


# -- the sandbox's processes, seen from the host ----------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # gone, or a kernel without CONFIG_PROC_CHILDREN
        return []


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command name may hold spaces or ")"


def _pid_namespace(pid: int) -> tuple[int, int] | None:
    try:
        info = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _all_pids() -> Iterator[int]:
    return (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())


def _signal_if(pid: int, sig: int, still_it: Callable[[int], bool]) -> None:
    """Signal ``pid`` if ``still_it(pid)`` holds once a pidfd pins the process: the daemon is
    root, and a pid reused in between must never get the signal."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if still_it(pid):
            signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
