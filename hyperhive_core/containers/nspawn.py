"""The ``nspawn`` backend: each agent in a systemd-nspawn container, run as the unit
``container@<name>.service``.

On NixOS (``/etc/NIXOS`` exists) the containers are nixos-containers, built from a
generated ``agent.nix`` with ``nixos-container create/start/stop/destroy/run``.
Elsewhere a minimal root (the host's ``/usr`` read-only) runs under plain
``systemd-nspawn`` in a transient unit of the same name. Either way the container
has its own user namespace (``--private-users=pick``): its root is an unprivileged
uid range on the host, and the agent's state dir and socket are handed to that uid.

systemd owns the containers' lifetimes. Their crashes reach ``on_container_event``
through the D-Bus watcher in ``dbus_watch``, which the daemon runs beside this
backend.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_core.containers import (
    ContainerBackend,
    ContainerEventKind,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ContainerView,
)
from hyperhive_core.containers.bwrap import ETC_FILES, _give_state_dir, hive_runtime_paths, outermost
from hyperhive_core.containers.dbus_watch import UnitState, event_kind, unit_name
from hyperhive_core.containers.spawn import SpawnedProcess
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.mcp_surface import CONTAINER_SOCKET

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

NIXOS_MARKER = Path("/etc/NIXOS")
# What sd_booted() checks: systemd is the init system, so units and machined exist.
SYSTEMD_BOOTED = Path("/run/systemd/system")
# Where nixos-container keeps each container's settings (stateVersion 22.05 and later).
NIXOS_CONTAINERS_ETC = Path("/etc/nixos-containers")
# nixos-container create refuses longer names: they become network interface names.
NIXOS_NAME_LIMIT = 11
NIXOS_STATE_VERSION = "24.11"
NIXOS_PACKAGES = ("bashInteractive", "coreutils", "git")

CONTAINER_STATE = Path("/state")
CONTAINER_RUN = Path(CONTAINER_SOCKET).parent
PICK_USERS = "--private-users=pick"
OWN_ROOT = "--private-users-ownership=auto"
# The Nix store is world-readable: secrets reach the agent with each exec, never
# through its container config.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# Set per exec, and NixOS manages its own.
SESSION_ONLY = frozenset({"PATH", "HOME"})


class NspawnError(HyperhiveError):
    """A container command failed, or the host cannot run nspawn containers."""


@dataclass(frozen=True)
class AgentProfile:
    """What a NixOS container's config says about its agent, besides the mounts."""

    model: str
    env: Mapping[str, str]
    mcp_config: Mapping[str, Any]


def on_nixos() -> bool:
    return NIXOS_MARKER.exists()


@dataclass(frozen=True)
class Mounts:
    """What an agent's container shows of the host, besides its own root."""

    binds: dict[str, Path]
    """Container path → host path, read-write."""
    read_only: list[Path] = field(default_factory=list)
    """Shown at the same path, read-only."""
    hidden: list[Path] = field(default_factory=list)
    """Covered by an empty tmpfs: the state root, where a read-only path holds it."""


def container_mounts(spec: ContainerSpec, read_only: Sequence[Path], state_root: Path) -> Mounts:
    """The state dir, the socket's directory (rather than the socket, so one the daemon
    re-creates is the one the agent sees), the spec's extra binds, and ``read_only``
    with the state root hidden under them."""
    binds = {str(CONTAINER_STATE): spec.state_dir, str(CONTAINER_RUN): spec.socket_dir, **spec.extra_binds}
    hidden = [state_root] if any(state_root.is_relative_to(path) for path in read_only) else []
    return Mounts(binds, list(read_only), hidden)


# -- plain systemd-nspawn ------------------------------------------------------------


def nspawn_argv(agent: str, root: Path, mounts: Mounts, command: Sequence[str], *, register: bool = True) -> list[str]:
    """The ``systemd-nspawn`` command line for ``agent``'s container.

    :param root: the container's minimal root directory (see ``make_root``); the
        host's ``/usr`` is bound over its ``usr``.
    :param command: the container's main process, run as pid 2 under nspawn's stub init.
    :param register: register with systemd-machined, which ``machinectl`` needs.
    """
    argv = ["systemd-nspawn", "--quiet", "--keep-unit", f"--machine={agent}", f"--directory={root}"]
    argv += [PICK_USERS, OWN_ROOT, "--as-pid2", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
    # No terminal of its own: agents' processes get theirs with each exec.
    argv.append("--console=pipe")
    if not register:
        argv.append("--register=no")
    argv += ["--bind-ro=/usr", *(f"--bind-ro={path}" for path in mounts.read_only)]
    argv += [f"--tmpfs={path}" for path in mounts.hidden]
    argv += [f"--bind={source}:{inside}" for inside, source in mounts.binds.items()]
    return [*argv, "--", *command]


def start_unit_argv(nspawn: Sequence[str], agent: str) -> list[str]:
    """Run an ``nspawn_argv`` as the transient service ``container@<agent>.service``."""
    return [
        "systemd-run",
        f"--unit={unit_name(agent)}",
        f"--description=hyperhive agent {agent}",
        "--service-type=notify",  # nspawn reports ready once the container runs
        "--property=Delegate=yes",
        "--property=Slice=machine.slice",
        "--property=KillMode=mixed",
        "--quiet",
        "--",
        *nspawn,
    ]


def make_root(root: Path) -> None:
    """Lay out a minimal container root: mount points, ``/usr`` links, identity files."""
    for directory in ("etc", "usr", str(CONTAINER_STATE)[1:], str(CONTAINER_RUN)[1:]):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if not (root / link).is_symlink():
            (root / link).symlink_to(f"usr/{link}")
    (root / "etc" / "os-release").write_text('ID=hyperhive-agent\nNAME="hyperhive agent"\n')
    (root / "etc" / "passwd").write_text(f"root:x:0:0:hyperhive agent:{CONTAINER_STATE}:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\n")


# -- NixOS -------------------------------------------------------------------------------


def nixos_container_argv(action: str, agent: str, *args: str) -> list[str]:
    """``nixos-container ACTION NAME ARGS...``: create, update, start, stop, destroy, run."""
    return ["nixos-container", action, agent, *args]


def render_agent_nix(
    spec: ContainerSpec, profile: AgentProfile, mounts: Mounts, packages: Sequence[str] = NIXOS_PACKAGES
) -> str:
    """The agent's NixOS container definition, the value of ``containers.<name>``.

    ``nix/`` builds declarative containers from the same shape; ``configuration.nix``
    (see ``render_configuration_nix``) feeds its ``config`` to ``nixos-container``.
    """
    bound = [(inside, source, False) for inside, source in mounts.binds.items()]
    bound += [(str(path), path, True) for path in mounts.read_only]
    binds = "".join(
        f"    {nix_string(inside)} = {{ hostPath = {nix_string(str(source))}; isReadOnly = {str(ro).lower()}; }};\n"
        for inside, source, ro in bound
    )
    variables = "".join(
        f"      {nix_string(name)} = {nix_string(value)};\n"
        for name, value in sorted(profile.env.items())
        if name not in SESSION_ONLY and not SECRET_NAME.search(name)
    )
    identity = json.dumps({"agent": spec.agent, "role": spec.role, "model": profile.model}, indent=2)
    mcp = json.dumps(profile.mcp_config, indent=2, sort_keys=True)
    return (
        f"# The container of hyperhive agent {spec.agent!r}. Generated: every rebuild rewrites it.\n"
        "{\n"
        '  privateUsers = "pick";\n'
        f"  extraFlags = [ {nix_string(OWN_ROOT)} ];\n"
        f"  tmpfs = [ {' '.join(nix_string(str(path)) for path in mounts.hidden)} ];\n"
        "  bindMounts = {\n"
        f"{binds}"
        "  };\n"
        "  config = { pkgs, ... }: {\n"
        "    boot.isContainer = true;\n"
        f"    system.stateVersion = {nix_string(NIXOS_STATE_VERSION)};\n"
        f"    environment.systemPackages = with pkgs; [ {' '.join(_nix_attr_path(p) for p in packages)} ];\n"
        "    environment.variables = {\n"
        f"{variables}"
        "    };\n"
        f'    environment.etc."hyperhive/agent.json".text = {nix_string(identity)};\n'
        f'    environment.etc."hyperhive/mcp.json".text = {nix_string(mcp)};\n'
        "  };\n"
        "}\n"
    )


def render_configuration_nix() -> str:
    """What ``nixos-container create --config-file`` imports: the ``config`` of the
    ``agent.nix`` next to it."""
    return "# Generated by hyperhive: the container's NixOS config, from agent.nix.\n(import ./agent.nix).config\n"


def nixos_host_settings(mounts: Mounts) -> dict[str, str]:
    """What ``agent.nix`` asks of the host, as settings of the container's
    ``/etc/nixos-containers/<name>.conf``: imperative containers read them from there."""
    flags = [OWN_ROOT, *(f"--bind-ro={path}" for path in mounts.read_only)]
    flags += [f"--tmpfs={path}" for path in mounts.hidden]
    flags += [f"--bind={source}:{inside}" for inside, source in mounts.binds.items()]
    # The container's unit word-splits EXTRA_NSPAWN_FLAGS.
    for flag in flags:
        if any(char.isspace() or char in '"\\$`' for char in flag):
            raise NspawnError(f"cannot pass {flag!r} to a nixos-container: move the path to one without spaces")
    return {"PRIVATE_USERS": "pick", "EXTRA_NSPAWN_FLAGS": " ".join(flags)}


def merge_env_file(text: str, settings: Mapping[str, str]) -> str:
    """``text`` (a systemd environment file) with ``settings`` replacing any earlier values."""
    kept = [line for line in text.splitlines() if line.partition("=")[0].strip() not in settings]
    return "\n".join([*kept, *(f'{key}="{value}"' for key, value in settings.items())]) + "\n"


def nix_string(text: str) -> str:
    """``text`` as a double-quoted Nix string, with nothing interpolated."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _nix_attr_path(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_'-]*(\.[A-Za-z_][A-Za-z0-9_'-]*)*", name):
        raise ValueError(f"{name!r} is not a nixpkgs attribute path")
    return name


# -- inside a running container ---------------------------------------------------------


def in_container_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``argv`` with exactly ``env``, from ``/state``: the command both kinds of exec run."""
    if not argv or "=" in argv[0]:
        raise ValueError(f"cannot run {list(argv)!r}: the program's name must be non-empty and hold no '='")
    return ["env", "-i", f"--chdir={CONTAINER_STATE}", *(f"{key}={value}" for key, value in env.items()), *argv]


def nsenter_argv(leader: int, inside: Sequence[str]) -> list[str]:
    """Run ``inside`` in every namespace of the container whose init is ``leader``,
    as its root (``--all`` includes the user namespace)."""
    return ["nsenter", f"--target={leader}", "--all", "--", *inside]


def leader_argv(agent: str) -> list[str]:
    """Ask systemd-machined for the host pid of the container's init."""
    return ["machinectl", "show", agent, "--property=Leader", "--value"]


def unit_state_argv(agent: str) -> list[str]:
    return ["systemctl", "show", "--property=LoadState,ActiveState,SubState,Result", unit_name(agent)]


def parse_unit_state(text: str) -> UnitState | None:
    """``systemctl show`` output as a ``UnitState``; ``None`` when the unit is not loaded."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if values.get("LoadState", "not-found") == "not-found":
        return None
    return UnitState(values.get("ActiveState", ""), values.get("SubState", ""), values.get("Result", ""))


def hand_over(spec: ContainerSpec, uid: int) -> None:
    """Give the agent's state dir and socket to ``uid``, its container's root on the host.

    ``pick`` chooses the uid range when the container starts, so this runs before
    each exec; it only walks the state dir when the owner changed.
    """
    if uid == 0:
        raise NspawnError(f"the container of {spec.agent!r} maps its root to host root; refusing to hand it state")
    _give_state_dir(spec.state_dir, uid)
    for path in (spec.socket_dir, spec.socket_dir / "agent.sock"):
        if path.exists() and path.stat(follow_symlinks=False).st_uid != uid:
            os.chown(path, uid, uid, follow_symlinks=False)


def root_uid(leader: int) -> int:
    """The host uid of the root of the container whose init is ``leader``."""
    return userns_base(Path(f"/proc/{leader}/uid_map").read_text())


def userns_base(uid_map: str) -> int:
    """The host uid that uid 0 of a user namespace maps to, from ``/proc/PID/uid_map``."""
    for line in uid_map.splitlines():
        inside, outside, _count = (int(field) for field in line.split())
        if inside == 0:
            return outside
    raise NspawnError("the container's user namespace does not map its root")


# -- the backend -----------------------------------------------------------------------------


class NspawnBackend(ContainerBackend):
    """Agents in systemd-nspawn containers (nixos-containers on NixOS); the daemon must be root."""

    name = "nspawn"
    isolated = True

    def __init__(
        self,
        containers_dir: Path,
        state_root: Path,
        profile: Callable[[ContainerSpec], AgentProfile],
        *,
        nixos: bool | None = None,
    ) -> None:
        """
        :param containers_dir: where the containers' roots (or NixOS configs) live.
        :param state_root: hidden in every container, even where a bound path holds it.
        :param profile: the agent's model, environment and MCP config, for ``agent.nix``.
        :param nixos: use nixos-container; default: whether this host is NixOS.
        """
        if not SYSTEMD_BOOTED.is_dir():
            raise NspawnError(
                "the nspawn backend runs each agent as a systemd unit, but systemd is not this host's init; "
                'set [hive] container_backend = "bwrap"'
            )
        self.nixos = on_nixos() if nixos is None else nixos
        required = ["nixos-container"] if self.nixos else ["systemd-nspawn", "systemd-run", "nsenter"]
        missing = [tool for tool in [*required, "systemctl", "machinectl"] if shutil.which(tool) is None]
        if missing:
            package = "the NixOS containers module" if self.nixos else "Debian's systemd-container"
            raise NspawnError(f"the nspawn backend needs {', '.join(missing)}; install {package}")
        self.containers_dir = containers_dir
        self.state_root = state_root.resolve()
        self.profile = profile
        # The hive's own programs; a NixOS container has the Nix store and its own /etc.
        self.read_only = outermost(hive_runtime_paths(), covered=[Path("/usr"), Path("/nix/store")])
        if not self.nixos:
            self.read_only += [Path("/etc", name) for name in ETC_FILES if Path("/etc", name).exists()]

    def view(self, spec: ContainerSpec) -> ContainerView:
        return ContainerView(state=CONTAINER_STATE, socket=Path(CONTAINER_SOCKET))

    def mounts(self, spec: ContainerSpec) -> Mounts:
        """What ``spec.agent``'s container shows of the host."""
        return container_mounts(spec, self.read_only, self.state_root)

    async def create(self, spec: ContainerSpec) -> None:
        if not self.nixos:
            await trio.to_thread.run_sync(make_root, self._root(spec))
            return
        if len(spec.agent) > NIXOS_NAME_LIMIT:
            raise NspawnError(
                f"agent name {spec.agent!r} is longer than the {NIXOS_NAME_LIMIT} characters nixos-container allows; "
                "choose a shorter name"
            )
        mounts = self.mounts(spec)
        config = self.containers_dir / spec.agent
        config.mkdir(parents=True, exist_ok=True, mode=0o700)
        (config / "agent.nix").write_text(render_agent_nix(spec, self.profile(spec), mounts))
        (config / "configuration.nix").write_text(render_configuration_nix())
        settings = NIXOS_CONTAINERS_ETC / f"{spec.agent}.conf"
        action = "update" if settings.exists() else "create"
        await _run(nixos_container_argv(action, spec.agent, "--config-file", str(config / "configuration.nix")))
        settings.write_text(merge_env_file(settings.read_text(), nixos_host_settings(mounts)))

    async def start(self, spec: ContainerSpec) -> None:
        state = await self._unit_state(spec)
        if state is not None and event_kind(state) is ContainerEventKind.STARTED:
            return
        if state is not None and state.active_state == "failed":
            # A failed unit stays loaded (so a reconcile still sees the crash) until reset.
            await _run(["systemctl", "reset-failed", unit_name(spec.agent)])
        log.info("starting the container of %s (%s)", spec.agent, unit_name(spec.agent))
        if self.nixos:
            await _run(nixos_container_argv("start", spec.agent))
            return
        await self.create(spec)
        nspawn = nspawn_argv(spec.agent, self._root(spec), self.mounts(spec), ["/usr/bin/sleep", "infinity"])
        await _run(start_unit_argv(nspawn, spec.agent))

    async def stop(self, spec: ContainerSpec) -> None:
        if await self._unit_state(spec) is None:
            return
        log.info("stopping the container of %s (%s)", spec.agent, unit_name(spec.agent))
        if self.nixos:
            await _run(nixos_container_argv("stop", spec.agent))
        else:
            await _run(["systemctl", "stop", unit_name(spec.agent)])

    async def destroy(self, spec: ContainerSpec, purge: bool) -> None:
        if self.nixos:
            await _run(nixos_container_argv("destroy", spec.agent))
        else:
            await self.stop(spec)
        generated = self.containers_dir / spec.agent
        if generated.exists():
            await trio.to_thread.run_sync(shutil.rmtree, generated)

    async def status(self, spec: ContainerSpec) -> ContainerStatus:
        if not self._exists(spec):
            return ContainerStatus(ContainerState.ABSENT, isolated=True)
        state = await self._unit_state(spec)
        if state is None:
            return ContainerStatus(ContainerState.STOPPED, isolated=True, detail="unit not loaded")
        running = event_kind(state) is ContainerEventKind.STARTED
        return ContainerStatus(
            ContainerState.RUNNING if running else ContainerState.STOPPED, isolated=True, detail=state.describe()
        )

    async def exec(
        self, spec: ContainerSpec, argv: Sequence[str], env: Mapping[str, str], *, pty: bool = False
    ) -> SpawnedProcess:
        leader = await self._leader(spec)
        hand_over(spec, root_uid(leader))
        inside = in_container_argv(argv, env)
        run = nixos_container_argv("run", spec.agent, "--", *inside) if self.nixos else nsenter_argv(leader, inside)
        # The host side needs a PATH to find its tools; the inside gets exactly ``env``.
        host_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return SpawnedProcess.start(run, env=host_env, cwd="/", pty=pty)

    # -- helpers -----------------------------------------------------------------------

    def _root(self, spec: ContainerSpec) -> Path:
        return self.containers_dir / spec.agent / "root"

    def _exists(self, spec: ContainerSpec) -> bool:
        if self.nixos:
            return (NIXOS_CONTAINERS_ETC / f"{spec.agent}.conf").exists()
        return self._root(spec).is_dir()

    async def _unit_state(self, spec: ContainerSpec) -> UnitState | None:
        return parse_unit_state(await _run(unit_state_argv(spec.agent)))

    async def _leader(self, spec: ContainerSpec) -> int:
        try:
            output = (await _run(leader_argv(spec.agent))).strip()
        except NspawnError as exc:
            raise NspawnError(f"container of {spec.agent!r} is not running: {exc}") from exc
        return int(output)


async def _run(argv: Sequence[str]) -> str:
    """Run a container command to completion; its stdout, or an error with its stderr."""
    result = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise NspawnError(f"`{' '.join(argv[:3])}` failed (exit {result.returncode}): {stderr[-500:]}")
    return result.stdout.decode(errors="replace")


def agent_profile(hive: Hive, spec: ContainerSpec) -> AgentProfile:
    """The agent's model, and its Claude Code environment and MCP config as seen inside."""
    return AgentProfile(
        model=hive.agents.get(spec.agent).status.model,
        env=hive.session_env(spec.agent, CONTAINER_STATE),
        mcp_config=hive.surface.mcp_config(CONTAINER_SOCKET),
    )


def make_nspawn_backend(hive: Hive) -> NspawnBackend:
    """The backend for ``[hive] container_backend = "nspawn"``."""
    return NspawnBackend(hive.paths.root / "nspawn", hive.paths.root, functools.partial(agent_profile, hive))
