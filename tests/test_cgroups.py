"""Agents' resource caps: cgroup v1 and v2 layouts, the caps' config, and real OOM kills and
fork loops in real bwrap sandboxes on this host's cgroups."""

from __future__ import annotations

import json
import os
import signal
import tomllib
from pathlib import Path

import hyperhive_crashwatch
import pytest
import trio
from test_bwrap import Hive, finish, needs_bwrap

from hyperhive_core import hookimpl, host_commands
from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.config import build_section
from hyperhive_core.configrepo import render_agent_toml
from hyperhive_core.containers import Limits
from hyperhive_core.containers import cgroups as cgroups_module
from hyperhive_core.containers.cgroups import (
    MIB,
    Cgroups,
    CgroupsUnavailable,
    ContainersSection,
    detect_layout,
    hive_cgroups,
    hive_id,
    parse_proc_cgroup,
    resolve_limits,
    weight_to_shares,
)
from hyperhive_core.containers.uids import m005_agent_uids
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.store import Store
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

# -- where the hierarchies are ---------------------------------------------------------------

# As this host mounts them: v1 controllers, and a cgroup2 tree without any (hybrid).
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/system.slice/hyperhive.service
8:pids:/system.slice/hyperhive.service
4:memory:/system.slice/hyperhive.service
1:cpu,cpuacct:/system.slice/hyperhive.service
0::/system.slice/hyperhive.service
"""


def v2_mountinfo(mount: Path) -> str:
    escaped = str(mount).replace(" ", "\\040")
    return f"29 23 0:26 / {escaped} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def cgroup2_dir(path: Path, controllers: str = "memory pids cpu", procs: str = "") -> Path:
    """A directory with a v2 cgroup's interface files, as the kernel makes them on mkdir."""
    path.mkdir(parents=True, exist_ok=True)
    files = {
        "cgroup.controllers": controllers,
        "cgroup.subtree_control": "",
        "cgroup.procs": procs,
        "memory.max": "max",
        "memory.high": "max",
        "memory.swap.max": "max",
        "memory.oom.group": "0",
        "memory.current": "0",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "pids.max": "max",
        "pids.current": "0",
        "pids.events": "max 0\n",
        "cpu.weight": "100",
    }
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_hybrid_host_uses_its_v1_controllers():
    layout = detect_layout(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert layout.version == 1
    assert layout.hierarchies["cpu"].mount == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert layout.hierarchies["memory"].own_dir == Path("/sys/fs/cgroup/memory/system.slice/hyperhive.service")
    assert layout.hierarchies["pids"].own == "/system.slice/hyperhive.service"


def test_a_pure_v2_host_and_its_mount_with_an_escaped_space(tmp_path):
    mount = cgroup2_dir(tmp_path / "cgroup two", "cpuset cpu io memory hugetlb pids rdma")
    layout = detect_layout(v2_mountinfo(mount), "0::/system.slice/hyperhive.service\n")
    assert layout.version == 2
    assert {h.own_dir for h in layout.hierarchies.values()} == {mount / "system.slice/hyperhive.service"}


@pytest.mark.parametrize(
    ("mountinfo", "controllers", "message"),
    [
        ("", "", "no cgroup hierarchy offers memory, pids and cpu"),
        ("v2", "cpu io pids", "lacks the memory controller"),
        ("split", "cpu pids", "the memory controller(s) are on cgroup v1 and the rest on v2"),
    ],
)
def test_a_host_without_usable_controllers_says_why(tmp_path, mountinfo, controllers, message):
    mount = cgroup2_dir(tmp_path / "cg", controllers)
    text = {"": "", "v2": v2_mountinfo(mount)}.get(mountinfo)
    if mountinfo == "split":
        text = v2_mountinfo(mount) + "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    with pytest.raises(CgroupsUnavailable, match=message.replace("(", r"\(").replace(")", r"\)")):
        detect_layout(text, "0::/\n")


def test_proc_cgroup_lists_each_controllers_cgroup():
    v1, v2 = parse_proc_cgroup(HYBRID_CGROUP)
    assert v1["cpuacct"] == v1["memory"] == "/system.slice/hyperhive.service"
    assert v2 == "/system.slice/hyperhive.service"


# -- the caps' config ---------------------------------------------------------------------------


def test_defaults_and_an_agents_own_caps():
    section = ContainersSection()
    defaults = Limits(memory_max_mb=2048, memory_high_mb=1536, pids_max=512, cpu_weight=100, tmp_size_mb=256)
    assert resolve_limits(section) == defaults
    own = resolve_limits(section, memory_max_mb=4096, pids_max=0, cpu_weight=50, tmp_size_mb=0)
    assert own == Limits(memory_max_mb=4096, memory_high_mb=1536, pids_max=0, cpu_weight=50, tmp_size_mb=0)
    # The hive's soft cap never lands above an agent's lower hard cap.
    assert resolve_limits(section, memory_max_mb=1024).memory_high_mb == 1024
    assert resolve_limits(section, memory_max_mb=0).memory_high_mb == 1536


def test_weight_maps_to_shares_as_systemd_maps_it():
    assert [weight_to_shares(weight) for weight in (1, 100, 200, 10_000)] == [10, 1024, 2048, 102_400]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memory_max_mb": 8}, "memory_max_mb must be 0 (no cap) or at least 32, not 8"),
        ({"memory_max_mb": -1}, "memory_max_mb must be 0 (no cap) or at least 32, not -1"),
        ({"memory_high_mb": 4096}, "memory_high_mb (4096) must not be above memory_max_mb (2048)"),
        ({"pids_max": 3}, "pids_max must be 0 (no cap) or at least 16, not 3"),
        ({"tmp_size_mb": 8}, "tmp_size_mb must be 0 (no cap) or at least 16, not 8"),
        ({"cpu_weight": 0}, "cpu_weight must be from 1 to 10000 (100 is an even share), not 0"),
        ({"cgroups": "maybe"}, "cgroups must be one of auto, required, off, not 'maybe'"),
        ({"memory_max_mb": "2G"}, "containers.memory_max_mb must be an integer, not a string ('2G')"),
    ],
)
def test_containers_section_names_the_bad_key(tmp_path, values, message):
    with pytest.raises(ConfigError) as caught:
        build_section(ContainersSection, values, "containers", tmp_path / "hyperhive.toml")
    assert message in str(caught.value)
    assert str(tmp_path / "hyperhive.toml") in str(caught.value)


def test_an_agents_bad_caps_are_named_with_the_agent(make_pm):
    pm = make_pm()
    config = AgentConfig(memory_max_mb=1024, memory_high_mb=2048, pids_max=2)
    with pytest.raises(ConfigError) as caught:
        check_agent_config(pm, "hog", config, "hyperhive.toml [agents.hog]")
    text = str(caught.value)
    assert text.startswith("hyperhive.toml [agents.hog]: agent 'hog' has an invalid config: ")
    assert "memory_high_mb (2048) must not be above memory_max_mb (1024)" in text
    assert "pids_max must be 0 (no cap) or at least 16, not 2" in text
    fine = check_agent_config(pm, "hog", AgentConfig(memory_max_mb=4096, cpu_weight=300), "x")
    assert fine.limit_overrides() == {
        "memory_max_mb": 4096,
        "memory_high_mb": None,
        "pids_max": None,
        "cpu_weight": 300,
        "tmp_size_mb": None,
    }


def test_off_runs_without_caps_and_says_so(tmp_path, caplog):
    cgroups, why = hive_cgroups(ContainersSection(cgroups="off"), tmp_path)
    assert cgroups is None
    assert why == 'no limits: [containers] cgroups = "off"'
    assert "agents run WITHOUT memory, process or CPU limits" in caplog.text


def test_required_refuses_to_start_without_cgroups(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("")
    (tmp_path / "cgroup").write_text("0::/\n")
    with pytest.raises(HyperhiveError, match=r'cgroups = "required", but no cgroup hierarchy offers'):
        hive_cgroups(
            ContainersSection(cgroups="required"), tmp_path, mountinfo=mountinfo, proc_cgroup=tmp_path / "cgroup"
        )


def test_auto_without_cgroups_warns_loudly_once(tmp_path, caplog):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("")
    (tmp_path / "cgroup").write_text("0::/\n")
    cgroups, why = hive_cgroups(ContainersSection(), tmp_path, mountinfo=mountinfo, proc_cgroup=tmp_path / "cgroup")
    assert cgroups is None
    assert why.startswith("no limits: no cgroup hierarchy offers memory, pids and cpu")
    assert caplog.text.count("NO RESOURCE LIMITS") == 1


# -- cgroup v2, on a tree laid out like a cgroup2 mount -----------------------------------------


@pytest.fixture
def v2_tree(tmp_path):
    """A cgroup2 mount with the daemon alone in ``/system.slice/hyperhive.service``, and
    the cgroups the kernel would make below it."""
    mount = cgroup2_dir(tmp_path / "cgroup", "cpuset cpu io memory pids")
    service = cgroup2_dir(mount / "system.slice/hyperhive.service", procs=f"{os.getpid()}\n")
    hive = hive_id(tmp_path / "state")
    for directory in ("daemon", "hyperhive", f"hyperhive/{hive}", f"hyperhive/{hive}/worker"):
        cgroup2_dir(service / directory)
    layout = detect_layout(v2_mountinfo(mount), "0::/system.slice/hyperhive.service\n")
    return Cgroups(layout, hive), service, service / "hyperhive" / hive


def test_v2_the_daemon_moves_into_a_leaf_and_hands_controllers_down(v2_tree):
    cgroups, service, hive = v2_tree
    cgroups.prepare()
    assert (service / "daemon/cgroup.procs").read_text() == str(os.getpid())
    for directory in (service, service / "hyperhive", hive):
        assert (directory / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cgroups.describe() == f"cgroup v2 ({hive})"


def test_v2_writes_each_cap_and_reads_usage(v2_tree):
    cgroups, _service, hive = v2_tree
    cgroups.prepare()
    cgroup = cgroups.apply("worker", Limits(memory_max_mb=64, memory_high_mb=48, pids_max=32, cpu_weight=250))
    agent = hive / "worker"
    files = {name: (agent / name).read_text() for name in ("memory.max", "memory.high", "pids.max", "cpu.weight")}
    assert files == {"memory.max": str(64 * MIB), "memory.high": str(48 * MIB), "pids.max": "32", "cpu.weight": "250"}
    assert (agent / "memory.oom.group").read_text() == "1"
    assert (agent / "memory.swap.max").read_text() == "0"  # no swap past the cap
    (agent / "memory.current").write_text(f"{30 * MIB}\n")
    (agent / "pids.current").write_text("7\n")
    (agent / "pids.events").write_text("max 3\n")
    (agent / "memory.events").write_text("low 0\nhigh 9\nmax 4\noom 1\noom_kill 1\n")
    usage = {"memory_mb": 30.0, "pids": 7, "oom_kills": 1, "memory_max_hits": 4, "pids_max_hits": 3}
    assert cgroup.usage() == usage
    # No cap at all: "max".
    cgroups.apply("worker", Limits(memory_max_mb=0, memory_high_mb=0, pids_max=0, cpu_weight=100))
    assert [(agent / name).read_text() for name in ("memory.max", "memory.high", "pids.max", "memory.swap.max")] == [
        "max"
    ] * 4


def test_v2_an_oom_kill_is_told_once_as_the_exit_cause(v2_tree):
    cgroups, _service, hive = v2_tree
    cgroups.prepare()
    cgroups.apply("worker", Limits(memory_max_mb=64, memory_high_mb=0, pids_max=32, cpu_weight=100))
    assert cgroups.exit_cause("worker") is None
    (hive / "worker/memory.events").write_text("max 12\noom 1\noom_kill 1\noom_group_kill 1\n")
    assert cgroups.exit_cause("worker") == "OOM-killed: over its memory cap of 64 MiB"
    assert cgroups.exit_cause("worker") is None
    # Without a cap of its own, the host (or the daemon's cgroup) ran out.
    cgroups.apply("worker", Limits(memory_max_mb=0, memory_high_mb=0, pids_max=32, cpu_weight=100))
    (hive / "worker/memory.events").write_text("max 0\noom 2\noom_kill 2\n")
    assert cgroups.exit_cause("worker") == "OOM-killed: out of memory (it has no memory cap of its own)"


def test_v2_a_cgroup_shared_with_other_processes_cannot_hand_controllers_down(v2_tree):
    cgroups, service, _hive = v2_tree
    (service / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")
    with pytest.raises(CgroupsUnavailable, match=r"shares its cgroup .* with 1 other process\(es\).*Delegate=yes"):
        cgroups.prepare()


def test_v2_a_cgroup_without_the_controllers_says_what_to_do(v2_tree):
    cgroups, service, _hive = v2_tree
    (service / "cgroup.controllers").write_text("cpu pids")
    with pytest.raises(CgroupsUnavailable, match="is not given the memory controller.*Delegate=yes"):
        cgroups.prepare()


# -- cgroup v1, for real, with real sandboxes ---------------------------------------------------


def host_cgroups(root: Path) -> Cgroups:
    """This host's own cgroups for a hive at ``root``, or a skip saying why there are none."""
    cgroups, why = hive_cgroups(ContainersSection(), root)
    if cgroups is None:
        pytest.skip(why)
    return cgroups


@pytest.fixture
async def capped(tmp_path):
    """A bwrap backend whose agents get cgroups on this host, run with the v1 OOM watcher."""
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    store = Store(root / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    cgroups = host_cgroups(root)
    hive = Hive(root, store, cgroups)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cgroups.watch_oom)
            yield hive, cgroups
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(30):
            await hive.close()
            await hive.backend.close()
        store.close()
    assert not any(path.exists() for path in cgroups.hive_dirs().values())


SMALL = Limits(memory_max_mb=64, memory_high_mb=48, pids_max=32, cpu_weight=100)
ROOMY = Limits(memory_max_mb=512, memory_high_mb=0, pids_max=512, cpu_weight=100)
UNCAPPED = Limits(memory_max_mb=0, memory_high_mb=0, pids_max=0, cpu_weight=100)


def test_v1_with_swap_on_caps_memory_and_swap_together_in_any_order(tmp_path, monkeypatch):
    """memory+swap may never be below memory: raising, lowering and lifting the cap each work."""
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    cgroups = host_cgroups(root)
    if cgroups.version != 1:
        pytest.skip("cgroup v1 only: v2's swap cap is its own file (memory.swap.max)")
    monkeypatch.setattr(cgroups_module, "host_swaps", lambda: True)
    cgroups.prepare()
    try:
        memory = cgroups.apply("hog", SMALL).dirs["memory"]
        if not (memory / "memory.memsw.limit_in_bytes").exists():
            pytest.skip("this kernel does not account swap (swapaccount=0)")
        for limits in (SMALL, ROOMY, SMALL, UNCAPPED, SMALL):
            cgroups.apply("hog", limits)
            hard, swap = (
                (memory / name).read_text().strip() for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            )
            assert swap == hard
            # Lifted, "-1" reads back as the largest count of pages.
            assert int(hard) == limits.memory_max_mb * MIB if limits.memory_max_mb else int(hard) > 2**62
    finally:
        trio.run(cgroups.close)


@needs_bwrap
async def test_a_sandbox_is_in_its_agents_cgroup_before_it_runs_anything(capped):
    hive, cgroups = capped
    spec = await hive.agent("hog", SMALL)
    cgroup = cgroups.get("hog")
    assert cgroup is not None
    if cgroup.version == 1:
        written = (cgroup.dirs["memory"] / "memory.limit_in_bytes").read_text().strip()
        assert written == str(64 * MIB)
        assert (cgroup.dirs["pids"] / "pids.max").read_text().strip() == "32"
        assert (cgroup.dirs["cpu"] / "cpu.shares").read_text().strip() == "1024"
    sandbox = await hive.backend.exec(spec, ["sleep", "30"], {})
    try:
        # Joined between fork and exec: bwrap is in the cgroup the moment exec returns.
        assert sandbox.pid in cgroup.processes()
        status = await hive.backend.status(spec)
        assert "memory 64 MiB (soft 48), 32 processes, cpu weight 100" in status.detail
        limits = await hive.backend.limits(spec)
        assert limits["enforced"] is True
        assert limits["via"] == f"cgroup v{cgroup.version}"
        assert (limits["memory_max_mb"], limits["pids_max"]) == (64, 32)
        assert limits["usage"]["pids"] >= 1
    finally:
        sandbox.kill()
        await sandbox.wait()
    await hive.backend.stop(spec)
    assert not any(path.exists() for path in cgroup.distinct_dirs)


@needs_bwrap
async def test_an_agent_over_its_memory_cap_is_oom_killed_whole_and_its_sibling_runs_on(capped):
    hive, cgroups = capped
    hog, calm = await hive.agent("hog", SMALL), await hive.agent("calm", ROOMY)
    neighbour = await hive.backend.exec(calm, ["sleep", "60"], {})
    idle = await hive.backend.exec(hog, ["sleep", "60"], {})
    # A line with no end: tail keeps all of it in memory, past the 64 MiB cap.
    with trio.fail_after(30):
        status, _out, err = await finish(await hive.backend.exec(hog, ["sh", "-c", "tail /dev/zero"], {}))
        # Killed by the kernel (bwrap passes on 128 + SIGKILL), or bwrap itself by the rest's kill.
        assert status in (128 + signal.SIGKILL, -signal.SIGKILL), err
        # The rest of the agent goes too: one OOM kill restarts it whole.
        assert await idle.wait() != 0
    cgroup = cgroups.get("hog")
    assert cgroup is not None
    assert cgroup.oom_kills() >= 1
    assert hive.backend.exit_cause(hog) == "OOM-killed: over its memory cap of 64 MiB"
    assert hive.backend.exit_cause(hog) is None  # told once
    assert cgroup.usage()["memory_max_hits"] > 0
    # The sibling, and its cgroup, never noticed.
    assert neighbour.returncode is None
    assert hive.backend.exit_cause(calm) is None
    assert await hive.run(calm, "echo still here") == (0, "still here\n", "")
    neighbour.kill()
    await neighbour.wait()


FORKS = """
import os, sys, time
made = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    made += 1
print(made)
"""


@needs_bwrap
async def test_a_fork_loop_stops_at_the_process_cap_and_the_sibling_still_forks(capped):
    hive, cgroups = capped
    hog, calm = await hive.agent("hog", SMALL), await hive.agent("calm", ROOMY)
    python = ["/usr/bin/python3", "-c", FORKS]
    with trio.fail_after(30):
        # The sandbox ends with the loop: its init's exit takes the sleeping children along.
        status, out, err = await finish(await hive.backend.exec(hog, python, {}))
        assert status == 0, err
        assert 0 < int(out) < 32  # bwrap, its init and python count too
        cgroup = cgroups.get("hog")
        assert cgroup is not None
        assert cgroup.usage()["pids_max_hits"] >= 1
        status, out, err = await finish(await hive.backend.exec(calm, python, {}))
        assert (status, int(out)) == (0, 100), err
    assert cgroups.get("calm").usage()["pids_max_hits"] == 0


# -- a whole hive: the real CLI on the rehearsal model, in real sandboxes ----------------------

OOM_SCENARIO = """
[[agents.hog.rules]]
when_regex = '(?s)from operator \\(text\\) ---\\n(?P<body>.*)'
# The first time only: a line with no end, which tail keeps in memory past the cap.
steps = [
  { tool = "Bash", input = { command = "test -e ate || { touch ate; tail /dev/zero; }; echo fed" } },
  { tool = "send", input = { to = "operator", body = "hog: {{result}}" } },
  { text = "ok" },
]

[[agents."*".rules]]
when_regex = '(?s)from operator \\(text\\) ---\\n(?P<body>.*)'
steps = [{ tool = "send", input = { to = "operator", body = "{{agent}} heard: {{match.body}}" } }, { text = "ok" }]
"""


class ParkManager:
    """Parks the manager before it reads its inbox: crash reports wait there, and no Claude Code starts."""

    @hookimpl
    async def before_recv(self, hive, agent):
        if agent == hive.agents.manager:
            await trio.sleep_forever()


def sandboxed_claude(sandbox: int) -> int:
    """The Claude Code process of a session's sandbox: bwrap → its init → claude."""
    (init,) = Path(f"/proc/{sandbox}/task/{sandbox}/children").read_text().split()
    (claude,) = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    return int(claude)


@pytest.mark.slow
@needs_claude
@needs_bwrap
async def test_an_agent_over_its_cap_crashes_as_oom_and_resumes_its_session(make_pm, tmp_path):
    await host_cgroups(tmp_path / "probe").close()  # skips where this host has no cgroups
    pm = make_pm(crashwatch=hyperhive_crashwatch, park=ParkManager())
    async with running_hive(
        tmp_path,
        pm,
        OOM_SCENARIO,
        agents={"hog": {"memory_max_mb": 1024, "pids_max": 256}, "calm": {}},
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 62500, "uid_range_size": 10},
    ) as hive:
        with trio.fail_after(60):
            await hive.broker.send("operator", "calm", "ping")
            assert await operator_reply(hive, "calm") == "calm heard: ping"
        calm_sandbox = hive.harnesses["calm"].session.pid
        before = await host_commands.agent(hive, "hog")
        assert before["limits"]["enforced"] is True
        assert (before["limits"]["memory_max_mb"], before["limits"]["pids_max"]) == (1024, 256)

        with trio.fail_after(120):
            await hive.broker.send("operator", "hog", "eat")
            crash = await next_event(hive, "hog", "error", lambda e: "container crashed" in e.data.get("text", ""))
            session = hive.harnesses["hog"].session
            first = session.session_id
            # The turn's retry restarts Claude Code with --resume, and this time the Bash call is fed.
            assert await operator_reply(hive, "hog") == "hog: fed"
        assert crash.data["text"].startswith("container crashed: OOM-killed: over its memory cap of 1024 MiB (")
        (report,) = [
            json.loads(m.body) for m in await hive.broker.recent_for("manager", 20) if '"container_crash"' in m.body
        ]
        assert report["agent"] == "hog"
        assert report["status"].startswith("OOM-killed: over its memory cap of 1024 MiB")
        argv = Path(f"/proc/{sandboxed_claude(session.pid)}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--resume") + 1].decode() == first == session.session_id

        after = await host_commands.agent(hive, "hog")
        assert after["limits"]["usage"]["oom_kills"] >= 1
        assert after["limits"]["usage"]["memory_mb"] > 0
        # The sibling's session never restarted, and it still answers.
        assert hive.harnesses["calm"].session.pid == calm_sandbox
        assert (await host_commands.agent(hive, "calm"))["limits"]["usage"]["oom_kills"] == 0
        status = await host_commands.status(hive)
        assert status["backend"]["limits"].startswith("cgroup v")
        print("figures:", json.dumps({"hog": after["limits"]["usage"]}))

        # New caps (an approved agent.toml, say) take effect with the rebuild.
        cgroups = hive.backend.cgroups
        await hive.rebuild("hog", AgentConfig(memory_max_mb=1536, pids_max=300))
        cgroup = cgroups.get("hog")
        hard = "memory.limit_in_bytes" if cgroup.version == 1 else "memory.max"
        assert (cgroup.dirs["memory"] / hard).read_text().strip() == str(1536 * MIB)
        assert (cgroup.dirs["pids"] / "pids.max").read_text().strip() == "300"
        # Destroying an agent removes its cgroup; stopping the daemon, the hive's.
        calm = cgroups.get("calm").distinct_dirs
        await hive.destroy("calm")
        assert not any(path.exists() for path in calm)
        hive_dirs = cgroups.hive_dirs().values()
    assert not any(path.exists() for path in hive_dirs)


def test_an_agent_toml_keeps_the_caps_its_config_sets(tmp_path):
    text = render_agent_toml(AgentConfig(memory_max_mb=4096, cpu_weight=50, tmp_size_mb=1024), [])
    assert "memory_max_mb = 4096\ncpu_weight = 50\ntmp_size_mb = 1024\n" in text
    assert "# pids_max: Process and thread cap (0: none). Default: [containers] pids_max." in text
    parsed = build_section(AgentConfig, tomllib.loads(text), "agent", tmp_path / "agent.toml")
    assert parsed.limit_overrides() == {
        "memory_max_mb": 4096,
        "memory_high_mb": None,
        "pids_max": None,
        "cpu_weight": 50,
        "tmp_size_mb": 1024,
    }
