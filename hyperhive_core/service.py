"""``hyperhive install-service``: the daemon as a hardened systemd service, outside NixOS.

The hardening is data, ``HARDENING``, shared with the NixOS module through
``nix/hardening.json`` (a test keeps the file equal to it), so the unit written
here and the one NixOS builds cannot drift. docs/operations.md explains each
setting left out, and why.

The CLI imports this module to list the command, so the plugins and the container
backends load inside the functions that use them.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from hyperhive_core.config import toml_value
from hyperhive_core.errors import HyperhiveError

DEFAULT_UNIT_PATH = Path("/etc/systemd/system/hyperhive.service")
DEFAULT_CONFIG_PATH = Path("/etc/hyperhive/hyperhive.toml")
DEFAULT_STATE_DIR = Path("/var/lib/hyperhive")
DEFAULT_ADMIN_GROUP = "hive-admin"
DEFAULT_BACKEND = "bwrap"
# The admin group may pass through the state dir to the host socket, never list it.
STATE_DIR_MODE = 0o710
# Beside the config: the daemon's secrets, as environment variables.
ENV_FILE = "hyperhive.env"
# The process backend needs no privilege, so it runs as this dedicated user.
SERVICE_USER = "hyperhive"
# What ProtectHome=yes hides from the service.
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))

HARDENING: dict[str, Any] = {
    # Every backend: how systemd runs the daemon, and the hardening. Left out on
    # purpose (docs/operations.md): ProtectKernelTunables, ProtectKernelLogs,
    # ProtectProc and ProcSubset cover parts of /proc, and the kernel then refuses
    # bwrap's fresh /proc in its user namespace; ProtectHostname forbids the
    # sethostname bwrap does in its own UTS namespace; RestrictNamespaces and
    # SystemCallFilter would forbid the namespaces and mounts sandboxes are made of;
    # MemoryDenyWriteExecute breaks the Claude CLI's JIT.
    "service": {
        "Type": "exec",
        "Restart": "on-failure",
        "RestartSec": "5s",
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
        "NoNewPrivileges": True,
        "ProtectKernelModules": True,
        "RestrictSUIDSGID": True,
        "RestrictRealtime": True,
        "LockPersonality": True,
        "SystemCallArchitectures": "native",
        # Netlink: bwrap brings up a sandbox's loopback when it has a network of its own.
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"],
    },
    # Who runs the daemon, by container backend: root where the backend must switch
    # uids or manage containers, else a dedicated user with no capabilities.
    "backends": {
        "bwrap": {
            "User": "root",
            # The daemon gives each agent a cgroup with its caps, in the unit's own
            # subtree: systemd hands that over (Delegate) and it must stay writable.
            "Delegate": True,
            "ProtectControlGroups": False,
            # Measured: the bwrap tests pass with exactly these (setpriv --bounding-set).
            # Switch to agent uids, hand them their state, signal and inspect their
            # sandboxes; read and rewrite files agents own (compaction, purge).
            "CapabilityBoundingSet": [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_DAC_READ_SEARCH",
                "CAP_FOWNER",
                "CAP_KILL",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_SYS_PTRACE",
            ],
            # The host-wide registry of agent uid ranges (containers/uids.py), writable
            # under ProtectSystem=strict. Kept across stops: each claim dies with its daemon.
            "RuntimeDirectory": "hyperhive/uid-ranges",
            "RuntimeDirectoryMode": "0700",
            "RuntimeDirectoryPreserve": True,
        },
        # nsenter, machinectl and nixos-container need more than bwrap does, and
        # no host here can measure how much: the bounding set stays whole.
        # An exec joins its container unit's cgroup, so the unit's caps cover it.
        "nspawn": {"User": "root", "ProtectControlGroups": False},
        "process": {
            "User": SERVICE_USER,
            "Group": SERVICE_USER,
            "CapabilityBoundingSet": "",
            "ProtectControlGroups": True,
        },
    },
}

UnitValue = str | bool | list[str]
# Characters that need no quoting in a systemd unit, nor escaping of specifiers.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._+@:-]+")


class ServiceError(HyperhiveError):
    """The service cannot be installed as asked."""


@dataclass(frozen=True)
class ServicePlan:
    """What the unit runs, and with which of the config's settings."""

    executable: Path
    config_path: Path
    state_dir: Path
    admin_group: str
    backend: str
    visible_home: Path | None = None
    """A path under a home directory the daemon runs from: homes become read-only, not hidden."""

    @property
    def user(self) -> str:
        return HARDENING["backends"][self.backend]["User"]


def hardening_json() -> str:
    """``HARDENING`` as the text of ``nix/hardening.json``."""
    return json.dumps(HARDENING, indent=2) + "\n"


def service_settings(plan: ServicePlan) -> dict[str, UnitValue]:
    """The unit's ``[Service]`` section: how to run the daemon, then the hardening."""
    settings: dict[str, UnitValue] = {
        "ExecStart": f"{plan.executable} --config {plan.config_path} up",
        # Credentials (ANTHROPIC_API_KEY=...) stay out of the world-readable unit.
        "EnvironmentFile": f"-{plan.config_path.parent / ENV_FILE}",
        **HARDENING["backends"][plan.backend],
        **HARDENING["service"],
        "ReadWritePaths": [str(plan.state_dir)],
    }
    if plan.visible_home is not None:
        settings["ProtectHome"] = "read-only"
    if plan.admin_group and plan.user != "root":
        settings["SupplementaryGroups"] = plan.admin_group  # to give the host socket to the group
    return settings


def render_unit(plan: ServicePlan) -> str:
    """The text of ``hyperhive.service``."""
    notes = ["# Written by `hyperhive install-service`; see docs/operations.md."]
    if plan.visible_home is not None:
        notes.append(f"# ProtectHome=read-only rather than yes: hyperhive runs from {plan.visible_home}.")
    lines = [
        *notes,
        "[Unit]",
        "Description=hyperhive: a swarm of Claude Code agents",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        *(f"{key}={unit_value(value)}" for key, value in service_settings(plan).items()),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def unit_value(value: UnitValue) -> str:
    """A setting's value as systemd writes it: ``yes``/``no``, lists space-separated."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(value)
    return value


def sample_config(plan: ServicePlan) -> str:
    """``hyperhive init``'s config, with the settings the unit depends on filled in."""
    from hyperhive_core.boot import config_schemas
    from hyperhive_core.config import render_default_config
    from hyperhive_core.plugins import make_plugin_manager

    text = render_default_config(config_schemas(make_plugin_manager(None)))
    return set_hive_keys(
        text,
        {"state_dir": plan.state_dir, "admin_group": plan.admin_group, "container_backend": plan.backend},
    )


def set_hive_keys(text: str, values: dict[str, Any]) -> str:
    """Uncomment and set ``values``' keys in the ``[hive]`` table of a rendered default config."""
    lines, values = text.splitlines(), dict(values)
    section = ""
    for index, line in enumerate(lines):
        if line.startswith("["):
            section = line
            continue
        key = line.removeprefix("# ").partition(" =")[0]
        if section == "[hive]" and line.startswith("# ") and key in values:
            lines[index] = f"{key} = {toml_value(values.pop(key))}"
    if values:
        raise AssertionError(f"the default config has no [hive] keys {sorted(values)}")
    return "\n".join(lines) + "\n"


# -- deciding what to install ------------------------------------------------------------


def plan_service(
    config_path: Path, state_dir: Path | None, admin_group: str | None, backend: str | None
) -> tuple[ServicePlan, bool]:
    """The plan for the options given or, if ``config_path`` exists, for what it says.

    :return: the plan, and whether the config exists (and so is kept).
    :raises ServiceError: an option contradicts the existing config, or a path
        the service needs is one it cannot use.
    """
    config_path = config_path.absolute()
    asked = {
        "state_dir": state_dir.absolute() if state_dir else None,
        "admin_group": admin_group,
        "container_backend": backend,
    }
    exists = config_path.exists()
    if exists:
        from hyperhive_core.boot import boot

        hive = boot(config_path).config.hive
        chosen = {
            "state_dir": hive.state_dir,
            "admin_group": hive.admin_group,
            "container_backend": hive.container_backend,
        }
    else:
        defaults = {
            "state_dir": DEFAULT_STATE_DIR,
            "admin_group": DEFAULT_ADMIN_GROUP,
            "container_backend": DEFAULT_BACKEND,
        }
        chosen = {key: defaults[key] if value is None else value for key, value in asked.items()}
    backend = chosen["container_backend"]
    if backend not in HARDENING["backends"]:
        raise ServiceError(
            f"there is no service profile for container backend {backend!r}; "
            f"install-service knows {', '.join(sorted(HARDENING['backends']))}"
        )
    if chosen["state_dir"] is None:
        if HARDENING["backends"][backend]["User"] != "root":
            raise ServiceError(
                f"{config_path} leaves [hive] state_dir unset, so the {SERVICE_USER!r} user would keep its state "
                f"in its home; set state_dir = {toml_value(DEFAULT_STATE_DIR)} in [hive]"
            )
        chosen["state_dir"] = DEFAULT_STATE_DIR  # the daemon's own default, as root
    for key, value in asked.items():
        if value is not None and value != chosen[key]:
            raise ServiceError(
                f"{config_path} has [hive] {key} = {toml_value(chosen[key])}, but the option asks for "
                f"{toml_value(value)}; the unit follows the existing config: edit it, or drop the option"
            )
    plan = ServicePlan(
        executable=hyperhive_executable(),
        config_path=config_path,
        state_dir=Path(chosen["state_dir"]).absolute(),
        admin_group=chosen["admin_group"],
        backend=backend,
    )
    return check_paths(plan), exists


def hyperhive_executable() -> Path:
    """The ``hyperhive`` command of this installation, by absolute path."""
    beside = Path(sys.executable).absolute().with_name("hyperhive")
    if beside.exists():
        return beside
    raise ServiceError(
        f"no hyperhive command next to {sys.executable}; run install-service with the hyperhive "
        "of the installation the service should run"
    )


def check_paths(plan: ServicePlan) -> ServicePlan:
    """Refuse paths a unit cannot hold plainly, or that ProtectHome would hide or freeze;
    return the plan with ``visible_home`` set when hyperhive runs from a home directory."""
    from hyperhive_core.containers.bwrap import hive_runtime_paths

    named = {
        "the hyperhive command": plan.executable,
        "the config": plan.config_path,
        "the state dir": plan.state_dir,
    }
    for what, path in named.items():
        if not _PLAIN_PATH.fullmatch(str(path)):
            raise ServiceError(f"{what} is at {str(path)!r}; choose a path of letters, digits and / . _ + @ : -")
    for what, example in (("the config", DEFAULT_CONFIG_PATH), ("the state dir", DEFAULT_STATE_DIR)):
        home = _home_of(named[what])
        if home is not None:
            raise ServiceError(
                f"{what} is at {named[what]}, under {home}, which the service cannot use (ProtectHome); "
                f"choose one outside home directories, like {example}"
            )
    runtime = [plan.executable, *hive_runtime_paths(), Path(sys.executable).resolve()]
    return replace(plan, visible_home=next((path for path in runtime if _home_of(path)), None))


def _home_of(path: Path) -> Path | None:
    return next((home for home in HOME_DIRS if path.is_relative_to(home)), None)


# -- writing it --------------------------------------------------------------------------


def install(plan: ServicePlan, unit_path: Path, *, write_config: bool, force: bool) -> list[str]:
    """Write the unit, the sample config (when ``write_config``) and the state dir.

    :return: what was done, one line each.
    :raises ServiceError: the unit exists and ``force`` is not set, or a file
        cannot be written.
    """
    if unit_path.exists() and not force:
        raise ServiceError(f"{unit_path} already exists; pass --force to overwrite it")
    done = []
    if write_config:
        _write(plan.config_path, sample_config(plan), 0o644)
        done.append(f"wrote {plan.config_path}")
    else:
        done.append(f"kept {plan.config_path}; the unit follows its [hive] settings")
    _write(unit_path, render_unit(plan), 0o644)
    done.append(f"wrote {unit_path}")
    if not plan.state_dir.exists():
        # ProtectSystem=strict: the daemon cannot create it itself.
        plan.state_dir.mkdir(parents=True, mode=0o700)
        uid = pwd.getpwnam(plan.user).pw_uid if _user_exists(plan.user) else -1
        gid = grp.getgrnam(plan.admin_group).gr_gid if _group_exists(plan.admin_group) else -1
        os.chown(plan.state_dir, uid, gid)
        if gid != -1:
            plan.state_dir.chmod(STATE_DIR_MODE)
        done.append(f"created {plan.state_dir}")
    return done


def next_steps(plan: ServicePlan) -> list[str]:
    """What the operator still has to do, as shell commands."""
    steps = []
    if plan.admin_group and not _group_exists(plan.admin_group):
        steps += [
            f"groupadd --system {plan.admin_group}",
            f"chgrp {plan.admin_group} {plan.state_dir} && chmod {STATE_DIR_MODE:o} {plan.state_dir}",
        ]
    if plan.user != "root" and not _user_exists(plan.user):
        groups = f" --groups {plan.admin_group}" if plan.admin_group else ""
        steps += [
            f"useradd --system --user-group{groups} --home-dir {plan.state_dir} --shell /usr/sbin/nologin {plan.user}",
            f"chown {plan.user} {plan.state_dir}",
        ]
    env_file = plan.config_path.parent / ENV_FILE
    steps += [
        f"install -m 0600 /dev/null {env_file}  # then add ANTHROPIC_API_KEY=... to it",
        "systemctl daemon-reload",
        "systemctl enable --now hyperhive",
    ]
    if plan.admin_group:
        steps.append(f"usermod --append --groups {plan.admin_group} YOU  # to use the hyperhive CLI")
    return steps


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text)
        partial.chmod(mode)
        partial.replace(path)
    except PermissionError:
        partial.unlink(missing_ok=True)
        raise ServiceError(
            f"permission denied writing {path}; run install-service as root, or choose "
            "--unit-path and --config-path you can write (and copy them into place)"
        ) from None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@click.command(name="install-service")
@click.option(
    "--unit-path", type=click.Path(path_type=Path), default=DEFAULT_UNIT_PATH, show_default=True, help="Unit to write."
)
@click.option(
    "--config-path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    help="Config the service reads; written from `hyperhive init` if missing, else kept and followed.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help=f"[hive] state_dir for a new config. Default: {DEFAULT_STATE_DIR}.",
)
@click.option(
    "--admin-group", help=f"Group that may use the host socket, for a new config. Default: {DEFAULT_ADMIN_GROUP}."
)
@click.option(
    "--backend",
    type=click.Choice(sorted(HARDENING["backends"])),
    help=f"Container backend, for a new config. Default: {DEFAULT_BACKEND}.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing unit (an existing config is always kept).")
@click.option("--dry-run", "--stdout", "dry_run", is_flag=True, help="Print the unit and config; write nothing.")
def install_service(
    *,
    unit_path: Path,
    config_path: Path,
    state_dir: Path | None,
    admin_group: str | None,
    backend: str | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Write a hardened systemd unit for the daemon, and a sample config (outside NixOS)."""
    plan, config_exists = plan_service(config_path, state_dir, admin_group, backend)
    if dry_run:
        click.echo(f"# {unit_path}\n{render_unit(plan)}")
        if not config_exists:
            click.echo(f"# {plan.config_path}\n{sample_config(plan)}", nl=False)
        return
    for line in install(plan, unit_path.absolute(), write_config=not config_exists, force=force):
        click.echo(line)
    click.echo("next:")
    for step in next_steps(plan):
        click.echo(f"  {step}")
