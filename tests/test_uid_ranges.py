"""Two hives on one host never share agent uids: each claims its range in a host-wide
registry, for as long as its process lives; an overlapping hive refuses to start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from test_bwrap import needs_bwrap

from hyperhive_core.containers.cgroups import hive_id
from hyperhive_core.containers.uids import REGISTRY, UidRangeTaken, claim_uid_range
from hyperhive_core.errors import HyperhiveError
from hyperhive_core.testing import running_hive

# Clear of a real hive's (61000 up) and of the other tests' ranges.
FIRST = 62800
SCENARIO = """
[[agents.manager.rules]]
when = "hi"
steps = [{ text = "hi" }]
"""

# A hive's claim, held in a process of its own until its stdin closes (or it is killed).
CLAIMANT = """
import sys
from pathlib import Path
from hyperhive_core.containers.uids import claim_uid_range
claim = claim_uid_range(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
print("claimed", flush=True)
sys.stdin.read()
"""


def claimant(first: int, count: int, state_dir: Path, registry: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIMANT, str(first), str(count), str(state_dir), str(registry)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "claimed\n"
    return process


def end(process: subprocess.Popen[str], sig: int | None = None) -> None:
    if sig is not None:
        process.send_signal(sig)
    process.communicate(timeout=10)


# -- the registry, between processes ----------------------------------------------------


def test_an_overlapping_range_is_refused_naming_the_hive_and_the_setting(tmp_path):
    registry = tmp_path / "uid-ranges"
    other = claimant(70000, 100, tmp_path / "hive-a", registry)
    try:
        with pytest.raises(UidRangeTaken) as refused:
            claim_uid_range(70050, 100, tmp_path / "hive-b", registry)
        assert str(refused.value) == (
            f"agent uids 70050-70149 overlap 70000-70099, the uids of the running hive at {tmp_path / 'hive-a'} "
            f"(pid {other.pid}): its agents and these could touch each other's files; "
            "give this hive a range apart from it with [bwrap] uid_range_start and uid_range_size"
        )
        # Touching ranges do not overlap; a range inside the other's does.
        claim_uid_range(70100, 50, tmp_path / "hive-c", registry).release()
        claim_uid_range(69900, 100, tmp_path / "hive-c", registry).release()
        with pytest.raises(UidRangeTaken, match="overlap 70000-70099"):
            claim_uid_range(70010, 5, tmp_path / "hive-c", registry)
        with pytest.raises(
            UidRangeTaken, match=f"the state dir {tmp_path / 'hive-a'} is already running \\(pid {other.pid}\\)"
        ):
            claim_uid_range(80000, 10, tmp_path / "hive-a", registry)
    finally:
        end(other)


def test_a_hive_killed_frees_its_range_with_its_process(tmp_path):
    registry = tmp_path / "uid-ranges"
    other = claimant(70000, 100, tmp_path / "hive-a", registry)
    with pytest.raises(UidRangeTaken):
        claim_uid_range(70000, 100, tmp_path / "hive-b", registry)
    end(other, signal.SIGKILL)  # no chance to release anything
    claim = claim_uid_range(70000, 100, tmp_path / "hive-b", registry)
    # The dead hive's claim file is gone, the new one names its hive.
    assert sorted(path.name for path in registry.glob("*.claim")) == [f"{hive_id(tmp_path / 'hive-b')}.claim"]
    recorded = json.loads(claim.path.read_text())
    assert recorded == {"state_dir": str(tmp_path / "hive-b"), "pid": os.getpid(), "first": 70000, "count": 100}
    claim.release()
    claim.release()  # twice is harmless
    assert list(registry.glob("*.claim")) == []


def test_a_claim_held_but_unreadable_blocks_every_range(tmp_path):
    registry = tmp_path / "uid-ranges"
    registry.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'w'); f.write('not json'); f.flush();"
            " fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(registry / "odd.claim"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UidRangeTaken, match=r"odd.claim, but it does not say which uids: 'not json'; stop that"):
            claim_uid_range(70000, 1, tmp_path / "hive", registry)
    finally:
        end(holder)


def test_a_registry_it_cannot_write_is_a_clear_error(tmp_path):
    where = "cannot claim agent uids 70000-70009 in /proc/hyperhive-uid-ranges: "
    what = re.escape('run it as root, or set [hive] container_backend = "process" (no isolation)')
    with pytest.raises(HyperhiveError, match=f"{re.escape(where)}.*{what}"):
        claim_uid_range(70000, 10, tmp_path / "hive", Path("/proc/hyperhive-uid-ranges"))


# -- real daemons ---------------------------------------------------------------------------


def bwrap_hive(first: int) -> dict[str, dict[str, object]]:
    return {"hive": {"container_backend": "bwrap"}, "bwrap": {"uid_range_start": first, "uid_range_size": 10}}


def claims_of(state_dir: Path) -> dict[str, object] | None:
    path = REGISTRY / f"{hive_id(state_dir)}.claim"
    return json.loads(path.read_text()) if path.exists() else None


@needs_bwrap
@pytest.mark.slow
async def test_two_daemons_with_overlapping_ranges_never_run_at_once(make_pm, tmp_path):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    for path in (first, second, third):
        path.mkdir()
    async with running_hive(first, make_pm(), SCENARIO, **bwrap_hive(FIRST)):
        assert claims_of(first / "state") == {
            "state_dir": str(first / "state"),
            "pid": os.getpid(),
            "first": FIRST,
            "count": 10,
        }
        holder = re.escape(f"the running hive at {first / 'state'} (pid {os.getpid()})")
        refusal = pytest.RaisesExc(UidRangeTaken, match=f"{holder}.*uid_range_start and uid_range_size")
        with pytest.RaisesGroup(refusal, flatten_subgroups=True):
            async with running_hive(second, make_pm(), SCENARIO, **bwrap_hive(FIRST + 5)):
                pass
        assert claims_of(second / "state") is None
        # A range apart from it runs beside it.
        async with running_hive(third, make_pm(), SCENARIO, **bwrap_hive(FIRST + 10)):
            assert claims_of(third / "state") is not None
    # Both stopped: their claims went with them, and the refused range is free.
    assert claims_of(first / "state") is None
    assert claims_of(third / "state") is None
    async with running_hive(second, make_pm(), SCENARIO, **bwrap_hive(FIRST + 5)):
        assert claims_of(second / "state") is not None


@needs_bwrap
@pytest.mark.slow
async def test_a_daemon_killed_leaves_its_range_free(make_pm, tmp_path, hyperhive, clean_env):
    """``hyperhive up`` as a process of its own, killed with SIGKILL: nothing of it releases
    its claim, yet the next hive with an overlapping range starts."""
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "scenario.toml").write_text(SCENARIO)
    config = killed / "hyperhive.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [hive]
            state_dir = "{killed / "state"}"
            container_backend = "bwrap"
            plugins = []
            [bwrap]
            uid_range_start = {FIRST + 20}
            uid_range_size = 10
            [claude]
            rehearsal_scenario = "{killed / "scenario.toml"}"
            """)
    )
    daemon = await trio.lowlevel.open_process(
        [hyperhive, "--config", str(config), "up"], env=clean_env, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(60):
            while not (killed / "state" / "host.sock").exists():  # up, its claim long made
                assert daemon.returncode is None, "the daemon exited"
                await trio.sleep(0.05)
        assert (claims_of(killed / "state") or {}).get("pid") == daemon.pid
    finally:
        daemon.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await daemon.wait()
    later = tmp_path / "later"
    later.mkdir()
    async with running_hive(later, make_pm(), SCENARIO, **bwrap_hive(FIRST + 25)):
        assert claims_of(later / "state") is not None
    assert claims_of(killed / "state") is None  # removed as stale by the hive that came after
