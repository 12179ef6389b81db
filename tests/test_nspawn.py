"""The nspawn backend: its command lines, its NixOS config, and a real container where nspawn runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import trio

from hyperhive_core.containers import ContainerSpec, Limits, seccomp
from hyperhive_core.containers.cgroups import Hierarchy, Layout
from hyperhive_core.containers.dbus_watch import UnitState
from hyperhive_core.containers.nspawn import (
    SYSTEMD_BOOTED,
    AgentProfile,
    Mounts,
    NspawnBackend,
    NspawnError,
    agent_profile,
    container_mounts,
    hand_over,
    in_container_argv,
    join_argv,
    make_root,
    merge_env_file,
    nix_string,
    nixos_container_argv,
    nixos_host_settings,
    nsenter_argv,
    nspawn_argv,
    parse_unit_state,
    render_agent_nix,
    root_uid,
    set_limits_argv,
    start_unit_argv,
    unit_limits,
    unit_procs,
    userns_base,
)
from hyperhive_core.daemon import run_hive

SPEC = ContainerSpec(
    agent="alice",
    role="agent",
    state_dir=Path("/var/lib/hyperhive/agents/alice/state"),
    socket_dir=Path("/var/lib/hyperhive/run/alice"),
)
EMPTY = Path("/var/lib/hyperhive/nspawn/empty_home")
MOUNTS = container_mounts(SPEC, [Path("/opt/hyperhive")], Path("/var/lib/hyperhive"), EMPTY)
PROFILE = AgentProfile(
    model="haiku",
    env={
        "HOME": "/state",
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "DISABLE_TELEMETRY": "1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8123",
        "ANTHROPIC_API_KEY": "sk-secret",
        "ODD": 'say "hi" for ${USER}',
    },
    mcp_config={"mcpServers": {"hyperhive": {"type": "stdio", "command": "/opt/hyperhive/bin/python", "args": []}}},
)


def test_nspawn_argv():
    assert nspawn_argv("alice", Path("/srv/root"), MOUNTS, ["/usr/bin/sleep", "infinity"]) == [
        "systemd-nspawn",
        "--quiet",
        "--keep-unit",
        "--machine=alice",
        "--directory=/srv/root",
        "--private-users=pick",
        "--private-users-ownership=auto",
        "--as-pid2",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=pipe",
        "--private-network",
        "--bind-ro=/usr",
        "--bind-ro=/opt/hyperhive",
        "--bind=/var/lib/hyperhive/agents/alice/state:/state",
        "--bind=/var/lib/hyperhive/run/alice:/run/hyperhive",
        "--bind-ro=/var/lib/hyperhive/nspawn/empty_home:/home/agent",
        *seccomp.nspawn_flags(container_init=False),
        "--",
        "/usr/bin/sleep",
        "infinity",
    ]
    assert "--register=no" in nspawn_argv("alice", Path("/srv/root"), MOUNTS, ["true"], register=False)


def test_the_container_runs_as_its_unit():
    nspawn = nspawn_argv("alice", Path("/srv/root"), MOUNTS, ["/usr/bin/sleep", "infinity"])
    argv = start_unit_argv(nspawn, "alice")
    assert argv[:2] == ["systemd-run", "--unit=container@alice.service"]
    assert "--service-type=notify" in argv
    assert argv[argv.index("--") + 1 :] == nspawn


def test_the_units_resource_properties_are_the_agents_caps():
    nspawn = nspawn_argv("alice", Path("/srv/root"), MOUNTS, ["/usr/bin/sleep", "infinity"])
    limits = Limits(memory_max_mb=2048, memory_high_mb=1536, pids_max=512, cpu_weight=200)
    argv = start_unit_argv(nspawn, "alice", limits)
    properties = [arg.removeprefix("--property=") for arg in argv[: argv.index("--")] if arg.startswith("--property=")]
    caps = ["MemoryMax=2048M", "MemoryHigh=1536M", "MemorySwapMax=0", "TasksMax=512", "CPUWeight=200", "OOMPolicy=stop"]
    assert properties == ["Delegate=yes", "Slice=machine.slice", "KillMode=mixed", *caps]
    assert argv[argv.index("--") + 1 :] == nspawn
    uncapped = unit_limits(Limits(memory_max_mb=0, memory_high_mb=0, pids_max=0, cpu_weight=100))
    assert uncapped[:4] == ["MemoryMax=infinity", "MemoryHigh=infinity", "MemorySwapMax=infinity", "TasksMax=infinity"]
    # A nixos-container's unit gets them at run time, before it starts.
    assert set_limits_argv("alice", limits) == [
        *("systemctl", "set-property", "--runtime", "container@alice.service"),
        *caps[:5],
    ]


def test_the_payload_gets_a_sized_tmp_and_the_seccomp_deny_list():
    limits = Limits(memory_max_mb=2048, memory_high_mb=1536, pids_max=512, cpu_weight=100, tmp_size_mb=256)
    argv = nspawn_argv("alice", Path("/srv/root"), MOUNTS, ["/usr/bin/sleep", "infinity"], limits=limits)
    options = argv[: argv.index("--")]
    assert "--tmpfs=/tmp:mode=1777,size=256M" in options
    assert {f"--system-call-filter=~{name}" for name in seccomp.BLOCKED} <= set(options)
    uncapped = nspawn_argv(
        "alice", Path("/srv/root"), MOUNTS, ["true"], limits=dataclasses.replace(limits, tmp_size_mb=0)
    )
    assert not any(option.startswith("--tmpfs=/tmp") for option in uncapped)
    # A NixOS container's own systemd mounts, makes namespaces and keyrings, and stops
    # the container with reboot(): its init keeps those; every exec gets the whole filter.
    nixos = nixos_host_settings(MOUNTS, limits)["EXTRA_NSPAWN_FLAGS"].split()
    assert "--tmpfs=/tmp:mode=1777,size=256M" in nixos
    kept = {f"--system-call-filter=~{name}" for name in seccomp.CONTAINER_INIT_NEEDS}
    assert kept.isdisjoint(nixos)
    assert {f"--system-call-filter=~{name}" for name in seccomp.BLOCKED} - kept <= set(nixos)
    spec = dataclasses.replace(SPEC, limits=limits)
    assert '"--tmpfs=/tmp:mode=1777,size=256M"' in render_agent_nix(spec, PROFILE, MOUNTS)
    assert '"--system-call-filter=~ptrace"' in render_agent_nix(spec, PROFILE, MOUNTS)


def test_an_exec_joins_its_units_cgroup_or_the_payload_nspawn_keeps_there(tmp_path):
    mount = tmp_path / "cgroup"
    unit = mount / "machine.slice" / "container@alice.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").write_text("")
    layout = Layout(2, dict.fromkeys(("memory", "pids", "cpu"), Hierarchy(mount, "/")))
    assert unit_procs(layout, "/machine.slice/container@alice.service") == [unit / "cgroup.procs"]
    (unit / "payload").mkdir()
    (unit / "payload" / "cgroup.procs").write_text("")
    assert unit_procs(layout, "/machine.slice/container@alice.service") == [unit / "payload" / "cgroup.procs"]
    assert unit_procs(layout, "/machine.slice/container@gone.service") == []
    assert join_argv("alice") == ["systemctl", "show", "--property=ControlGroup", "--value", "container@alice.service"]


def test_an_oom_killed_unit_says_so():
    assert UnitState("failed", "failed", "oom-kill").describe() == (
        "OOM-killed: over its memory cap (unit failed (failed), result oom-kill)"
    )
    assert UnitState("failed", "failed", "exit-code").describe() == "unit failed (failed), result exit-code"


def test_a_read_only_path_holding_the_state_root_gets_it_hidden():
    spec = ContainerSpec("bob", "agent", Path("/src/hive/state/agents/bob/state"), Path("/src/hive/state/run/bob"))
    mounts = container_mounts(spec, [Path("/src/hive")], Path("/src/hive/state"), EMPTY)
    assert mounts.hidden == [Path("/src/hive/state")]
    argv = nspawn_argv("bob", Path("/srv/root"), mounts, ["true"])
    # nspawn mounts deeper paths after shallower ones, whatever their order here.
    assert argv.index("--bind-ro=/src/hive") < argv.index("--tmpfs=/src/hive/state")
    assert MOUNTS.hidden == []


def test_extra_binds_reach_the_container():
    spec = ContainerSpec("manager", "manager", Path("/s/state"), Path("/s/run"), {"/agents/bob/config": Path("/c")})
    mounts = container_mounts(spec, [], Path("/s"), EMPTY)
    assert "--bind=/c:/agents/bob/config" in nspawn_argv("manager", Path("/r"), mounts, [])


def test_nixos_container_commands():
    assert nixos_container_argv("create", "alice", "--config-file", "/x/configuration.nix") == [
        "nixos-container",
        "create",
        "alice",
        "--config-file",
        "/x/configuration.nix",
    ]
    assert nixos_container_argv("run", "alice", "--", "id") == ["nixos-container", "run", "alice", "--", "id"]
    for action in ("start", "stop", "destroy"):
        assert nixos_container_argv(action, "alice") == ["nixos-container", action, "alice"]


def test_commands_inside_get_exactly_their_environment():
    assert in_container_argv(["claude", "-p"], {"HOME": "/state", "A": "b c"}) == [
        "env",
        "-i",
        "--chdir=/state",
        "HOME=/state",
        "A=b c",
        "claude",
        "-p",
    ]
    with pytest.raises(ValueError, match="hold no '='"):
        in_container_argv(["X=1"], {})
    with pytest.raises(ValueError, match="non-empty"):
        in_container_argv([], {})


def test_the_generated_agent_nix():
    assert render_agent_nix(SPEC, PROFILE, MOUNTS) == textwrap.dedent(
        """\
        # The container of hyperhive agent 'alice'. Generated: every rebuild rewrites it.
        {
          privateUsers = "pick";
          privateNetwork = true;
          extraFlags = [ "--private-users-ownership=auto" FILTER];
          tmpfs = [ ];
          bindMounts = {
            "/state" = { hostPath = "/var/lib/hyperhive/agents/alice/state"; isReadOnly = false; };
            "/run/hyperhive" = { hostPath = "/var/lib/hyperhive/run/alice"; isReadOnly = false; };
            "/opt/hyperhive" = { hostPath = "/opt/hyperhive"; isReadOnly = true; };
            "/home/agent" = { hostPath = "/var/lib/hyperhive/nspawn/empty_home"; isReadOnly = true; };
          };
          config = { pkgs, ... }: {
            boot.isContainer = true;
            system.stateVersion = "24.11";
            environment.systemPackages = with pkgs; [ bashInteractive coreutils git ];
            environment.variables = {
              "ANTHROPIC_BASE_URL" = "http://127.0.0.1:8123";
              "DISABLE_TELEMETRY" = "1";
              "LANG" = "C.UTF-8";
              "ODD" = "say \\"hi\\" for \\${USER}";
            };
            environment.etc."hyperhive/agent.json".text = "{\\n  \\"agent\\": \\"alice\\",\\n  \\"role\\": \\"agent\\",\\n  \\"model\\": \\"haiku\\"\\n}";
            environment.etc."hyperhive/mcp.json".text = "{\\n  \\"mcpServers\\": {\\n    \\"hyperhive\\": {\\n      \\"args\\": [],\\n      \\"command\\": \\"/opt/hyperhive/bin/python\\",\\n      \\"type\\": \\"stdio\\"\\n    }\\n  }\\n}";
          };
        }
        """  # noqa: E501 - the generated lines are as long as they are
    ).replace("FILTER", "".join(f'"{flag}" ' for flag in seccomp.nspawn_flags(container_init=True)))


def test_secrets_never_reach_the_nix_store():
    text = render_agent_nix(SPEC, PROFILE, MOUNTS)
    assert "sk-secret" not in text
    assert "ANTHROPIC_API_KEY" not in text


def test_nix_strings_interpolate_nothing():
    assert nix_string('a "b" \\ ${c} $d\n') == '"a \\"b\\" \\\\ \\${c} $d\\n"'
    with pytest.raises(ValueError, match="attribute path"):
        render_agent_nix(SPEC, PROFILE, MOUNTS, packages=["git; rm -rf /"])


def test_host_settings_for_an_imperative_nixos_container():
    settings = nixos_host_settings(MOUNTS)
    assert settings == {
        "PRIVATE_NETWORK": "1",
        "HOST_ADDRESS": "",
        "LOCAL_ADDRESS": "",
        "PRIVATE_USERS": "pick",
        "EXTRA_NSPAWN_FLAGS": f"--private-users-ownership=auto {' '.join(seccomp.nspawn_flags(container_init=True))} "
        "--bind-ro=/opt/hyperhive "
        "--bind=/var/lib/hyperhive/agents/alice/state:/state --bind=/var/lib/hyperhive/run/alice:/run/hyperhive "
        "--bind-ro=/var/lib/hyperhive/nspawn/empty_home:/home/agent",
    }
    written_by_create = "PRIVATE_NETWORK=1\nHOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\nAUTO_START=0\n"
    merged = merge_env_file(written_by_create, settings)
    assert merged.startswith("AUTO_START=0\n")  # what create wrote, but the network we set
    assert 'PRIVATE_NETWORK="1"\nHOST_ADDRESS=""\nLOCAL_ADDRESS=""\nPRIVATE_USERS="pick"\n' in merged
    assert merge_env_file(merged, settings) == merged  # an update replaces, never repeats

    spaced = container_mounts(SPEC, [Path("/opt/my hive")], Path("/var/lib/hyperhive"), EMPTY)
    with pytest.raises(NspawnError, match="without spaces"):
        nixos_host_settings(spaced)


def test_unit_state_from_systemctl_show():
    shown = "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\n"
    assert parse_unit_state(shown) == UnitState("failed", "failed", "exit-code")
    assert parse_unit_state("LoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\n") is None


def test_the_container_root_maps_to_an_unprivileged_uid():
    assert userns_base("         0  162922496      65536\n") == 162922496
    with pytest.raises(NspawnError):
        userns_base("      1000       1000          1\n")
    with pytest.raises(NspawnError, match="host root"):
        hand_over(SPEC, 0)


async def test_the_nixos_config_describes_the_hives_agent(make_pm, make_config, tmp_path):
    pm = make_pm()
    config = make_config(pm, hive={"state_dir": str(tmp_path / "state"), "container_backend": "process"})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            hive = await nursery.start(run_hive, config, pm)
            spec = hive.container_spec("manager")
            profile = agent_profile(hive, spec)
            nursery.cancel_scope.cancel()
    assert profile.model == hive.agents.get("manager").status.model
    assert profile.mcp_config == hive.surface.mcp_config("/run/hyperhive/agent.sock")
    assert profile.env["CLAUDE_CONFIG_DIR"] == "/state/.claude"
    text = render_agent_nix(spec, profile, container_mounts(spec, [], hive.paths.root, EMPTY))
    assert nix_string(json.dumps(profile.mcp_config, indent=2, sort_keys=True)) in text
    assert f'"/state" = {{ hostPath = "{spec.state_dir}"; isReadOnly = false; }};' in text
    assert f'"/home/agent" = {{ hostPath = "{EMPTY}"; isReadOnly = true; }};' in text


def test_the_backend_needs_systemd_as_init(tmp_path):
    if SYSTEMD_BOOTED.is_dir():
        pytest.skip("systemd is this host's init")
    with pytest.raises(NspawnError, match="systemd is not this host's init"):
        NspawnBackend(tmp_path, tmp_path, lambda spec: PROFILE)


# -- a real container --------------------------------------------------------------------


async def nspawn_runs_here(root: Path) -> str | None:
    """Why systemd-nspawn cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (Debian package systemd-container)"
    probe = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", f"-D{root}", "--bind-ro=/usr", "/usr/bin/true"]
    result = await trio.run_process(probe, capture_stdout=True, capture_stderr=True, check=False)
    return None if result.returncode == 0 else f"systemd-nspawn cannot run here: {result.stderr.decode()[-300:]}"


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
async def container(tmp_path) -> tuple[ContainerSpec, Path, Mounts]:
    """An agent's spec, a minimal root and its mounts, where systemd-nspawn runs."""
    state_root = tmp_path / "hive"
    spec = ContainerSpec("hhtest", "agent", state_root / "agents/hhtest/state", state_root / "run/hhtest")
    spec.state_dir.mkdir(parents=True)
    spec.socket_dir.mkdir(parents=True)
    root = tmp_path / "root"
    make_root(root)
    reason = await nspawn_runs_here(root)
    if reason:
        pytest.skip(reason)
    empty = tmp_path / "empty_home"
    empty.mkdir(mode=0o555)
    return spec, root, container_mounts(spec, [], state_root, empty)


@pytest.mark.slow
async def test_a_real_container_runs_the_agent_as_an_unprivileged_uid(container):
    """Root inside, an unprivileged uid range outside; /state is the agent's, and the hive's files are not there."""
    spec, root, mounts = container

    async def run(*command: str) -> str:
        argv = nspawn_argv(spec.agent, root, mounts, command, register=False)
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    with trio.fail_after(60):
        uid = userns_base(await run("/usr/bin/cat", "/proc/self/uid_map"))
        assert uid >= 65536
        hand_over(spec, uid)
        script = f"id -u; echo hello > /state/note; test -e {spec.state_dir} || echo hive hidden"
        script += "; touch /home/agent/.bashrc 2>/dev/null || echo home read-only"
        assert (await run("/usr/bin/sh", "-c", script)).split("\n") == ["0", "hive hidden", "home read-only", ""]
    note = spec.state_dir / "note"
    assert note.read_text() == "hello\n"
    assert (note.stat().st_uid, spec.socket_dir.stat().st_uid) == (uid, uid)


@pytest.mark.slow
async def test_exec_enters_a_running_container_as_its_root(container):
    spec, root, mounts = container
    argv = nspawn_argv(spec.agent, root, mounts, ["/usr/bin/sleep", "infinity"], register=False)
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(30):
            # Ready once the container's init (machined's "Leader") has started the main process.
            while not (ready := [pid for pid in children(process.pid) if children(pid)]):
                await trio.sleep(0.02)
            leader = ready[0]
            uid = root_uid(leader)
            assert uid >= 65536
            hand_over(spec, uid)
            inside = in_container_argv(
                ["/usr/bin/sh", "-c", "id -u; pwd; echo $GREETING; touch /state/made-inside"],
                {"GREETING": "hi", "PATH": "/usr/bin:/bin"},
            )
            result = await trio.run_process(
                nsenter_argv(leader, inside), capture_stdout=True, capture_stderr=True, check=False
            )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().splitlines() == ["0", "/state", "hi"]
        assert (spec.state_dir / "made-inside").stat().st_uid == uid
    finally:
        # SIGTERM: nspawn takes the container down with it (SIGKILL would orphan it).
        process.terminate()
        with trio.fail_after(10):
            await process.wait()
