"""``hyperhive attach`` with its input piped in: the shell runs every line, the first included,
and attach ends with the shell once the input has ended."""

from __future__ import annotations

import subprocess

import pytest

from hyperhive_core.testing import Script, needs_claude

pytestmark = needs_claude


@pytest.fixture
def daemon(hive_daemon):
    script = Script()
    script.otherwise("ok")
    return hive_daemon(script, plugins=["web"], web={"port": 0})


def attach(daemon, agent: str, piped: bytes) -> subprocess.CompletedProcess[bytes]:
    command = [daemon.hyperhive, "-c", str(daemon.config), "attach", agent]
    return subprocess.run(command, input=piped, capture_output=True, env=daemon.env, timeout=120, check=False)


def test_piped_commands_all_run_and_attach_ends_with_the_shell(daemon):
    ran = attach(daemon, "manager", b"echo first-$((40+2))\necho second-$((1+1))\nfalse\n")
    output = ran.stdout.decode()
    # The computed values, not the echoed command lines: each command ran.
    assert "first-42" in output, output
    assert "second-2" in output, output
    assert output.index("first-42") < output.index("second-2")
    assert output.rstrip().endswith("[shell exited with status 1]"), output  # false's status, at the input's end
    assert (ran.returncode, ran.stderr) == (0, b"")


@pytest.mark.parametrize("piped", [b"", b"echo no newline at the end-$((2+3))"])
def test_an_input_that_ends_early_still_ends_the_shell(daemon, piped):
    ran = attach(daemon, "manager", piped)
    output = ran.stdout.decode()
    assert output.rstrip().endswith("[shell exited with status 0]"), output
    if piped:
        assert "no newline at the end-5" in output, output
    assert ran.returncode == 0


def test_attach_to_an_unknown_agent_says_so(daemon):
    ran = attach(daemon, "nobody", b"echo hi\n")
    assert ran.returncode == 1
    assert b"the dashboard refused to attach to 'nobody'" in ran.stderr
