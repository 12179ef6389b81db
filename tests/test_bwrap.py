"""The bwrap backend, against real bubblewrap: each isolation property, proved from inside and out."""

from __future__ import annotations

import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hyperhive_core.claude import BUNDLED_CLI
from hyperhive_core.containers import ContainerSpec, ContainerState, Limits, landlock
from hyperhive_core.containers.bwrap import SANDBOX_PATH, BwrapBackend, BwrapSection, Sandbox, hive_runtime_paths
from hyperhive_core.containers.cgroups import Cgroups
from hyperhive_core.containers.uids import AgentUids, UidRangeExhausted, m005_agent_uids
from hyperhive_core.errors import ConfigError
from hyperhive_core.store import Store

REPO = Path(__file__).resolve().parent.parent
# The top of the default range: a real hive on this machine allocates from 61000 up.
TEST_UIDS = 61900


def why_bwrap_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the bwrap backend needs root: it runs each agent as its own host uid"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap; `make test` does it)"
    probe = subprocess.run(
        [
            *("bwrap", "--unshare-user", "--unshare-pid", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib"),
            *("--symlink", "usr/lib64", "/lib64", "--", "/usr/bin/true"),
        ],
        user=TEST_UIDS,
        group=TEST_UIDS,
        extra_groups=[],
        capture_output=True,
    )
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here: {probe.stderr.decode().strip()}"
    return None


SKIP_REASON = why_bwrap_cannot_run()
needs_bwrap = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


class Hive:
    """A state root, a store and a bwrap backend, with agents whose sockets listen."""

    def __init__(self, root: Path, store: Store, cgroups: Cgroups | None = None, **section: object) -> None:
        self.root = root
        config = BwrapSection(uid_range_start=TEST_UIDS, uid_range_size=50, stop_timeout_seconds=1.0, **section)
        self.uids = AgentUids(store, config.uid_range_start, config.uid_range_size)
        self.backend = BwrapBackend(config, self.uids, root, cgroups)
        self.specs: list[ContainerSpec] = []
        self.listeners: list[socket.socket] = []

    async def agent(self, name: str, limits: Limits | None = None) -> ContainerSpec:
        state, run = self.root / "agents" / name / "state", self.root / "run" / name
        spec = ContainerSpec(name, "agent", state, run, limits=limits)
        await self.backend.start(spec)
        spec.socket_dir.mkdir(parents=True, mode=0o700)
        # As the daemon opens it: root's, private.
        self.listeners.append(listen(spec.socket_dir / "agent.sock"))
        (spec.socket_dir / "agent.sock").chmod(0o600)
        self.specs.append(spec)
        return spec

    async def uid(self, name: str) -> int:
        uid = await self.uids.lookup(name)
        assert uid is not None
        return uid

    async def run(self, spec: ContainerSpec, script: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """``sh -c script`` in a new sandbox of ``spec``: exit status, stdout, stderr."""
        return await finish(await self.backend.exec(spec, ["sh", "-c", script], env or {}))

    async def close(self) -> None:
        for spec in self.specs:
            await self.backend.stop(spec)
        for listener in self.listeners:
            listener.close()


def listen(path: Path | str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    return listener


async def finish(sandbox: Sandbox) -> tuple[int, str, str]:
    output = {}

    async def drain(name: str, stream: trio.abc.ReceiveStream) -> None:
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        await stream.aclose()
        output[name] = data.decode()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, "out", sandbox.stdout)
            nursery.start_soon(drain, "err", sandbox.stderr)
        return await sandbox.wait(), output["out"], output["err"]


@pytest.fixture
async def hive(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    store = Store(root / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    hive = Hive(root, store)
    try:
        yield hive
    finally:
        await hive.close()
        store.close()


def unique_sleep() -> str:
    """A ``sleep`` argument no other process on the host has, to find it from outside."""
    return f"{1000 + random.random():.9f}"


def host_pids(marker: str) -> list[int]:
    """Host pids of the processes running ``sleep marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


async def wait_for_pids(marker: str, count: int = 1) -> list[int]:
    with trio.fail_after(10):
        while len(pids := host_pids(marker)) < count:
            await trio.sleep(0.02)
    return pids


def host_ids(pid: int, field: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return [int(value) for value in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def as_uid(uid: int, code: str) -> str:
    """Run Python as ``uid`` on the host itself, outside any sandbox."""
    result = subprocess.run(
        ["/usr/bin/python3", "-c", code], user=uid, group=uid, extra_groups=[], capture_output=True, text=True
    )
    return result.stdout.strip()


ATTEMPT = """
def attempt(fn, *args):
    try:
        fn(*args)
        return "ok"
    except OSError as exc:
        return type(exc).__name__
"""


# -- identity -----------------------------------------------------------------


@needs_bwrap
async def test_each_agent_runs_as_its_own_unprivileged_host_uid(hive):
    alice, bob = await hive.agent("alice"), await hive.agent("bob")
    alice_uid, bob_uid = await hive.uid("alice"), await hive.uid("bob")
    assert alice_uid != bob_uid
    assert {alice_uid, bob_uid} <= set(range(TEST_UIDS, TEST_UIDS + 50))
    marker = unique_sleep()
    sandbox = await hive.backend.exec(alice, ["sleep", marker], {})
    [command] = await wait_for_pids(marker)
    processes = [sandbox.pid, *map(int, Path(f"/proc/{sandbox.pid}/task/{sandbox.pid}/children").read_text().split())]
    for pid in [*processes, command]:  # the outer bwrap, the sandbox's init, the command
        assert host_ids(pid, "Uid") == [alice_uid] * 4
        assert host_ids(pid, "Gid") == [alice_uid] * 4
        assert host_ids(pid, "Groups") == []
    assert (await hive.run(bob, "id -u; id -un; echo $HOME"))[1].split() == [str(bob_uid), "bob", "/home/agent"]
    sandbox.kill()
    await sandbox.wait()


@needs_bwrap
async def test_create_gives_the_state_dir_to_the_agent_alone(hive, tmp_path):
    spec = ContainerSpec("alice", "agent", hive.root / "agents" / "alice" / "state", hive.root / "run" / "alice")
    assert (await hive.backend.status(spec)).state is ContainerState.ABSENT
    # A tree from an earlier owner (the process backend ran as root), with a symlink out of it.
    (spec.state_dir / ".claude").mkdir(parents=True)
    (spec.state_dir / ".claude" / "settings.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (spec.state_dir / "escape").symlink_to(outside)

    await hive.backend.create(spec)
    await hive.backend.create(spec)  # idempotent
    uid = await hive.uid("alice")
    for path in [spec.state_dir, spec.state_dir / ".claude", spec.state_dir / ".claude" / "settings.json"]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, uid)
    assert spec.state_dir.stat().st_mode & 0o777 == 0o700
    assert outside.stat().st_uid == 0  # the symlink was not followed
    status = await hive.backend.status(spec)
    assert (status.state, status.isolated) == (ContainerState.STOPPED, True)


# -- what an agent can reach ---------------------------------------------------


@needs_bwrap
async def test_an_agent_cannot_reach_another_agents_state_or_socket(hive):
    alice, bob = await hive.agent("alice"), await hive.agent("bob")
    assert (await hive.run(bob, "echo bob-secret > /state/secret"))[0] == 0
    bob_secret = bob.state_dir / "secret"
    bob_socket = bob.socket_dir / "agent.sock"

    _, out, _ = await hive.run(
        alice, f"ls -A /state; cat {bob_secret} || echo no-secret; test -e {bob_socket} || echo no-socket"
    )
    assert out.split() == ["no-secret", "no-socket"]

    # Outside any sandbox, alice's uid cannot get there either: the state root stays
    # private, and she may only pass through the directories above her own binds.
    probe = ATTEMPT + (
        f"import os, socket\n"
        f"print(attempt(os.listdir, {str(hive.root)!r}), attempt(open, {str(bob_secret)!r}),"
        f" attempt(socket.socket(socket.AF_UNIX).connect, {str(bob_socket)!r}))"
    )
    assert as_uid(await hive.uid("alice"), probe).split() == ["PermissionError"] * 3
    assert hive.root.stat().st_mode & 0o007 == 0  # nothing for other users


@needs_bwrap
async def test_an_agent_reaches_its_own_socket_and_state(hive):
    alice = await hive.agent("alice")
    probe = (
        ATTEMPT + "import socket; print(attempt(socket.socket(socket.AF_UNIX).connect, '/run/hyperhive/agent.sock'))"
    )
    rc, out, err = await hive.run(alice, f"echo kept > /state/note && python3 -c {shlex.quote(probe)}")
    assert (rc, out.strip(), err) == (0, "ok", "")
    assert (alice.state_dir / "note").read_text() == "kept\n"
    owned = (alice.socket_dir / "agent.sock").stat()
    assert (owned.st_uid, owned.st_mode & 0o777) == (await hive.uid("alice"), 0o600)  # exec gave it to her
    assert hive.backend.view(alice).socket == Path("/run/hyperhive/agent.sock")


@needs_bwrap
async def test_host_paths_are_read_only(hive):
    alice = await hive.agent("alice")
    canaries = [REPO / f"canary-{os.getpid()}", Path("/etc/canary"), Path("/usr/canary"), Path("/canary")]
    script = "".join(f"touch {path} 2>/dev/null && echo wrote {path}; " for path in canaries)
    _, out, _ = await hive.run(alice, script + "touch /state/ok /tmp/ok && echo own-dirs-ok")
    assert out.split() == ["own-dirs-ok"]
    assert not any(path.exists() for path in canaries)


@needs_bwrap
async def test_home_is_empty_and_no_dotfile_can_be_planted_there(hive):
    """HOME is not the state dir: Claude Code's Bash tool sources ~/.bashrc, ~/.profile, … before each command."""
    alice = await hive.agent("alice")
    dotfiles = [".bashrc", ".profile", ".bash_profile", ".gitconfig", ".ssh/config"]
    script = "".join(f"touch ~/{name} 2>/dev/null && echo wrote {name}; " for name in dotfiles)
    script += "mkdir ~/.ssh 2>/dev/null && echo made .ssh; chmod 777 ~ 2>/dev/null && echo chmod; "
    # Programs that look the home up in passwd (ssh does) find the same directory.
    script += "echo $HOME; getent passwd alice | cut -d: -f6; ls -A ~ | wc -l"
    rc, out, err = await hive.run(alice, script)
    assert (rc, err) == (0, "")
    assert out.split() == ["/home/agent", "/home/agent", "0"]  # empty, and nothing could be written
    assert not any(name.startswith(".") for name in os.listdir(alice.state_dir))


@needs_bwrap
async def test_no_host_socket_no_dbus_no_abstract_sockets(hive):
    alice = await hive.agent("alice")
    host_listener = listen(hive.root / "host.sock")
    name = f"hyperhive-test-{os.getpid()}-{random.randrange(10**9)}"
    abstract_listener = listen("\0" + name)
    try:
        probe = ATTEMPT + (
            "import os, socket\n"
            "inner = socket.socket(socket.AF_UNIX); inner.bind('\\0inner'); inner.listen()\n"
            "print(sorted(os.listdir('/run')), sorted(os.listdir('/run/hyperhive')),"
            f" os.path.exists({str(hive.root / 'host.sock')!r}), os.path.exists('/run/dbus/system_bus_socket'),"
            f" attempt(socket.socket(socket.AF_UNIX).connect, '\\0{name}'),"
            " attempt(socket.socket(socket.AF_UNIX).connect, '\\0inner'))"
        )
        rc, out, err = await hive.run(alice, f"python3 -c {shlex.quote(probe)}")
        assert (rc, err) == (0, "")
        # Abstract sockets belong to the network namespace: the host's is not in the sandbox's
        # own (and Landlock would refuse it anyway); the sandbox's own works.
        assert out.strip() == "['hyperhive'] ['agent.sock'] False False ConnectionRefusedError ok"
    finally:
        host_listener.close()
        abstract_listener.close()


@needs_bwrap
async def test_without_landlock_scoping_the_sandbox_loses_the_network(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(landlock, "abi_version", lambda: 5)
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    store = Store(root / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    with caplog.at_level(logging.WARNING):
        hive = Hive(root, store)
    assert "own network namespace" in caplog.text
    name = f"hyperhive-test-{os.getpid()}-{random.randrange(10**9)}"
    abstract_listener = listen("\0" + name)
    try:
        alice = await hive.agent("alice")
        probe = ATTEMPT + (
            "import socket\n"
            f"print(attempt(socket.socket(socket.AF_UNIX).connect, '\\0{name}'),"
            " [interface for _, interface in socket.if_nameindex()])"
        )
        rc, out, err = await hive.run(alice, f"python3 -c {shlex.quote(probe)}")
        assert (rc, err) == (0, "")
        assert out.strip() == "ConnectionRefusedError ['lo']"
    finally:
        abstract_listener.close()
        await hive.close()
        store.close()


@needs_bwrap
async def test_a_state_root_inside_a_bound_path_is_hidden(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    store = Store(root / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    (tmp_path / "shared.txt").write_text("visible")
    tmp_path.chmod(0o755)
    hive = Hive(root, store, ro_paths=[tmp_path])
    try:
        alice = await hive.agent("alice")
        _, out, _ = await hive.run(alice, f"cat {tmp_path}/shared.txt; echo; ls -A {root}; echo end")
        assert out.split() == ["visible", "end"]
    finally:
        await hive.close()
        store.close()


@needs_bwrap
async def test_tmp_is_private_to_each_sandbox(hive):
    alice = await hive.agent("alice")
    marker = f"hyperhive-tmp-{os.getpid()}-{random.randrange(10**9)}"
    # The hive's own tree is bound read-only at its host path, which may lie in /tmp.
    bound = {Path(path).parts[2] for path in hive_runtime_paths() if Path(path).parts[1:2] == ("tmp",)}
    rc, out, _ = await hive.run(alice, f"touch /tmp/{marker} && ls /tmp")
    assert (rc, set(out.split()) - bound) == (0, {marker})
    assert not Path("/tmp", marker).exists()
    assert set((await hive.run(alice, "ls -A /tmp"))[1].split()) - bound == set()


TMP_CAPPED = Limits(memory_max_mb=0, memory_high_mb=0, pids_max=0, cpu_weight=100, tmp_size_mb=16)


@needs_bwrap
async def test_tmp_and_shm_are_capped_and_dev_is_read_only(hive):
    """Each tmpfs is RAM the host gives; by default the kernel's half of it, each."""
    alice = await hive.agent("alice", TMP_CAPPED)
    script = (
        "for dir in /tmp /var/tmp /dev/shm; do"
        " head -c 12M /dev/zero > $dir/fits && echo $dir fits;"
        " head -c 8M /dev/zero > $dir/more 2>/dev/null || echo $dir full; rm -f $dir/fits $dir/more; done;"
        " touch /dev/planted 2>/dev/null || echo dev read-only;"
        " df --output=size -k /tmp /dev/shm | tail -n +2"
    )
    rc, out, err = await hive.run(alice, script)
    assert (rc, err) == (0, "")
    assert [line.strip() for line in out.splitlines()] == [
        *("/tmp fits", "/tmp full", "/var/tmp fits", "/var/tmp full", "/dev/shm fits", "/dev/shm full"),
        "dev read-only",
        *(str(16 * 1024), str(16 * 1024)),  # KiB
    ]
    # The write past the cap is ENOSPC, what programs expect of a full disk.
    probe = "open('/tmp/big', 'wb').write(bytes(17 << 20))"
    _, _, err = await hive.run(alice, f"python3 -c {shlex.quote(probe)}")
    assert err.strip().endswith("OSError: [Errno 28] No space left on device")


@needs_bwrap
async def test_path_is_fixed_and_never_the_daemons(hive, monkeypatch):
    odd = "/odd/daemon/bin:/tmp/planted:.:"
    monkeypatch.setenv("PATH", odd)  # what the daemon was started with
    alice = await hive.agent("alice")
    rc, out, err = await hive.run(alice, "echo $PATH; command -v python; command -v hyperhive", env={"PATH": odd})
    assert (rc, err) == (0, "")
    path, python, hyperhive = out.split()
    assert path == SANDBOX_PATH
    assert path.split(":")[:3] == ["/usr/local/bin", "/usr/bin", "/bin"]
    assert (python, hyperhive) == (f"{Path(sys.executable).parent}/python", f"{Path(sys.executable).parent}/hyperhive")
    assert str(BUNDLED_CLI.parent) in path.split(":")  # `claude` by name, where it is installed


# -- lifecycle -------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("how", ["sandbox.kill()", "bwrap itself dies"])
async def test_processes_die_with_the_sandbox(hive, how):
    alice = await hive.agent("alice")
    marker = unique_sleep()
    sandbox = await hive.backend.exec(alice, ["sh", "-c", f"sleep {marker} & sleep {marker}"], {})
    await wait_for_pids(marker, count=2)  # the background sleep and the foreground one
    if how == "sandbox.kill()":
        sandbox.kill()
    else:
        os.kill(sandbox.pid, signal.SIGKILL)
    assert await sandbox.wait() != 0
    with trio.fail_after(5):
        while host_pids(marker):
            await trio.sleep(0.02)


@needs_bwrap
async def test_stop_asks_politely_then_kills_every_sandbox(hive):
    alice = await hive.agent("alice")
    polite = await hive.backend.exec(alice, ["sh", "-c", f"trap 'exit 7' TERM; sleep {unique_sleep()} & wait"], {})
    stubborn_marker = unique_sleep()
    stubborn = await hive.backend.exec(alice, ["sh", "-c", f"trap '' TERM; sleep {stubborn_marker}"], {})
    await wait_for_pids(stubborn_marker)
    assert (await hive.backend.status(alice)).detail.startswith(f"uid {TEST_UIDS}, 2 sandboxes, no limits")
    with trio.fail_after(10):
        await hive.backend.stop(alice)
    assert polite.returncode == 7
    assert stubborn.returncode == 128 + signal.SIGKILL
    assert not host_pids(stubborn_marker)
    assert (await hive.backend.status(alice)).state is ContainerState.STOPPED
    with pytest.raises(RuntimeError, match="not running"):
        await hive.backend.exec(alice, ["true"], {})


@needs_bwrap
async def test_destroy_with_purge_frees_the_uid(hive):
    alice = await hive.agent("alice")
    uid = await hive.uid("alice")
    await hive.backend.destroy(alice, purge=False)
    assert (await hive.backend.status(alice)).state is ContainerState.STOPPED
    await hive.backend.destroy(alice, purge=True)
    assert (await hive.backend.status(alice)).state is ContainerState.ABSENT
    assert await hive.uids.allocate("carol") == uid


@needs_bwrap
async def test_exec_needs_the_agents_socket(hive):
    spec = ContainerSpec("alice", "agent", hive.root / "agents" / "alice" / "state", hive.root / "run" / "alice")
    await hive.backend.start(spec)
    with pytest.raises(RuntimeError, match="open 'alice'"):
        await hive.backend.exec(spec, ["true"], {})
    await hive.backend.stop(spec)


# -- what runs inside ------------------------------------------------------------


@needs_bwrap
async def test_a_pty_shell_echoes_and_resizes(hive):
    alice = await hive.agent("alice")
    shell = await hive.backend.exec(alice, ["bash", "--norc", "--noprofile", "-i"], {"PS1": "$ "}, pty=True)
    seen = b""

    async def expect(text: bytes) -> None:
        nonlocal seen
        with trio.fail_after(10):
            while text not in seen:
                chunk = await shell.stdout.receive_some()
                assert chunk, f"shell ended before {text!r}: {seen!r}"
                seen += chunk

    await shell.stdin.send_all(b"echo h''i\n")
    await expect(b"hi\r\n")
    shell.resize(40, 132)
    await shell.stdin.send_all(b"stty size\n")
    await expect(b"40 132\r\n")
    await shell.stdin.send_all(b"exit 3\n")
    assert await shell.wait() == 3


@needs_bwrap
async def test_the_pinned_cli_node_and_the_hives_python_run_inside(hive):
    alice = await hive.agent("alice")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout
    assert (await hive.run(alice, "node --version"))[1] == node
    python = f"{REPO}/.venv/bin/python -c 'import hyperhive_core.relay; print(\"relay importable\")'"
    assert (await hive.run(alice, python))[1] == "relay importable\n"
    if not os.access(BUNDLED_CLI, os.X_OK):
        pytest.skip("the pinned Claude Code CLI is not installed (make install)")
    rc, out, err = await hive.run(alice, f"{BUNDLED_CLI} --version")
    assert (rc, err) == (0, "")
    assert out.endswith("(Claude Code)\n")


@needs_bwrap
@pytest.mark.slow
async def test_a_sandbox_outlives_trios_idle_worker_threads(hive):
    # trio retires an idle worker thread after 10 s; had bwrap been forked from one,
    # --die-with-parent would kill the sandbox then.
    alice = await hive.agent("alice")
    sandbox = await hive.backend.exec(alice, ["sleep", "11"], {})
    assert (await finish(sandbox))[0] == 0


# -- uids and config -------------------------------------------------------------


async def test_uids_are_distinct_stable_and_skip_host_accounts(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.migrate({"core": [m005_agent_uids]})
    try:
        uids = AgentUids(store, 65534, 3)  # 65534 is nobody's
        assert await uids.allocate("alice") == 65535
        assert await uids.allocate("bob") == 65536
        assert await AgentUids(store, 65534, 3).allocate("alice") == 65535  # recorded
        with pytest.raises(UidRangeExhausted, match="uid_range_size"):
            await uids.allocate("carol")
        await uids.release("alice")
        assert await uids.lookup("alice") is None
        assert await uids.allocate("carol") == 65535
    finally:
        store.close()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"uid_range_start": 0}, "uid_range_start must be 1000 or more"),
        ({"uid_range_size": 0}, "uid_range_size must be"),
        ({"ro_paths": [Path("relative")]}, "not an absolute path"),
        ({"ro_paths": [Path("/nonexistent/hyperhive")]}, "not an absolute path to something that exists"),
        ({"stop_timeout_seconds": 0.0}, "must be positive"),
        ({"ro_paths": [Path("/home")]}, "would cover the agents' read-only HOME, /home/agent"),
    ],
)
def test_bwrap_section_checks_its_values(values, message):
    with pytest.raises(ConfigError, match=message):
        BwrapSection(**values)
