"""The allow-list with the real Claude Code CLI: scripted Bash calls, a canary that must survive.

Last, the plants: code written where a later command runs it, in real bwrap.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import trio
from hyperhive_allowlist import plugin

from hyperhive_core import Hive, hookimpl
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

pytestmark = [needs_claude, pytest.mark.slow]

# Each would delete the canary (or write where it must not) if it ran.
ATTEMPTS = [
    "git status && rm -rf canary",
    "git status; rm -rf canary",
    "git status\nrm -rf canary",
    "echo $(rm -rf canary)",
    "echo `rm -rf canary`",
    "bash -c 'rm -rf canary'",
    "python3 -c 'import shutil; shutil.rmtree(\"canary\")'",
    "echo 'rm -rf canary' | bash",
    "find . -name canary -exec rm -rf {} +",
    "git -c alias.x='!rm -rf canary' x",
    "env rm -rf canary",
    "/bin/rm -rf canary",
    "timeout 5 rm -rf canary",
    "X=1 rm -rf canary",
    "echo '{\"disableAllHooks\": true}' > .claude/settings.json",
]
PATTERNS = ["git *", "echo *", "bash *", "python3 *", "find *", "touch *", "ls *", "rm -rf victim"]


def scenario(commands: list[str], monitor: tuple[str, ...] = (), report: bool = False) -> str:
    """The worker runs each command with the Bash tool, then each of ``monitor`` with the Monitor tool.

    :param report: then send the last tool result to the operator (through the hive's MCP tools).
    """
    calls = [("Bash", command) for command in commands] + [("Monitor", command) for command in monitor]
    steps = [
        f'{{ tool = "{tool}", input = {{ command = {json.dumps(command)}, description = "x" }} }}'
        for tool, command in calls
    ]
    if report:
        steps.append('{ tool = "send", input = { to = "operator", body = "I was told: {{result}}" } }')
    return "[[agents.worker.rules]]\nsteps = [\n  " + ",\n  ".join([*steps, '{ text = "done" }']) + "\n]\n"


async def run_turn(hive, state: Path) -> dict[str, dict]:
    """Send the worker one message; return, per Bash command, its tool result and any denial."""
    await hive.broker.send("operator", "worker", "go")
    with trio.fail_after(120):
        await next_event(hive, "worker", "turn_end")
    events = await hive.events.history("worker")
    uses = [event.data for event in events if event.type == "tool_use"]
    commands = {use["id"]: use["input"]["command"] for use in uses if "command" in use["input"]}
    outcome: dict[str, dict] = {command: {} for command in commands.values()}
    for event in events:
        command = commands.get(event.data.get("tool_use_id"))
        if command and event.type == "tool_result":
            outcome[command]["result"] = event.data
        elif command and event.type == "permission_denied":
            outcome[command]["denied"] = event.data["reason"]
    return outcome


def worker_state(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agents" / "worker" / "state"


async def test_git_status_then_rm_is_denied_and_x_survives(make_pm, tmp_path):
    denials = []

    class Telemetry:
        @hookimpl
        def on_turn_end(self, hive, agent, turn):
            denials.extend(turn.result.permission_denials)

    agents = {"worker": {"allowlist": {"bash": ["git *"]}}}
    pm = make_pm(allowlist=plugin, telemetry=Telemetry())
    turn = scenario(["git status && rm -rf x"], report=True)
    async with running_hive(tmp_path, pm, turn, agents=agents) as hive:
        state = worker_state(tmp_path)
        (state / "x").mkdir()
        # A settings file in the agent's home must not switch the hook off.
        (state / ".claude").mkdir()
        settings = {"disableAllHooks": True, "permissions": {"allow": ["Bash"]}}
        (state / ".claude" / "settings.json").write_text(json.dumps(settings))
        outcome = await run_turn(hive, state)
        with trio.fail_after(10):
            report = await operator_reply(hive, "worker")
    assert (state / "x").is_dir()
    command = "git status && rm -rf x"
    seen = outcome[command]
    assert seen["result"]["is_error"]
    assert seen["denied"] == seen["result"]["content"]
    assert "hyperhive allow-list: part 2 (`rm -rf x`): `rm -rf x` matches none of the allowed" in seen["denied"]
    assert "Allowed commands: `git *`" in seen["denied"]
    assert [denial["tool_input"]["command"] for denial in denials] == [command]  # what telemetry counts
    assert report == f"I was told: {seen['denied']}"  # the agent read the reason, and its MCP tools still work


async def test_only_the_hook_stands_between_the_agent_and_the_canary(make_pm, tmp_path):
    """Claude Code's own rules are opened up (plain Bash allowed): the hook alone must stop every attempt."""

    class OpenClaudeCodeRules:
        @hookimpl(trylast=True)
        def configure_session(self, hive, agent, options):
            options.allowed_tools.append("Bash")

    outside = Path("/var/tmp") / f"hyperhive-allowlist-{uuid.uuid4().hex}"  # outside the agent's dirs
    monitored = "rm -rf canary; echo gone"  # the Monitor tool runs shell commands too
    attempts = [*ATTEMPTS, f"echo pwned > {outside}", monitored]
    legitimate = ["touch made && ls", "rm -rf victim"]
    agents = {"worker": {"allowlist": {"bash": PATTERNS}}}
    pm = make_pm(allowlist=plugin, opener=OpenClaudeCodeRules())
    turn = scenario([*attempts[:-1], *legitimate], monitor=(monitored,))
    async with running_hive(tmp_path, pm, turn, agents=agents) as hive:
        state = worker_state(tmp_path)
        (state / "canary").write_text("still here")
        (state / "victim").mkdir()
        outcome = await run_turn(hive, state)
    assert (state / "canary").read_text() == "still here"
    assert not (state / ".claude" / "settings.json").exists()
    assert not outside.exists()
    for command in attempts:
        assert "hyperhive allow-list: " in outcome[command].get("denied", ""), command
    # the legitimate commands ran: the canary survived because of the denials
    assert (state / "made").exists()
    assert not (state / "victim").exists()
    for command in legitimate:
        assert "denied" not in outcome[command]
        assert not outcome[command]["result"]["is_error"], outcome[command]


needs_bwrap = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None, reason="the bwrap backend needs root and bubblewrap"
)


class ProbeTheHook:
    """Make the allow-list hook record who runs it and where, then run it unchanged."""

    @hookimpl(trylast=True)
    def configure_session(self, hive, agent, options):
        for entry in options.settings["hooks"]["PreToolUse"]:
            for hook in entry["hooks"]:
                probe = "{ id -u; readlink /proc/self/ns/pid; } > /state/hook-probe"
                hook["command"] = f"{probe}; {hook['command']}"


@needs_bwrap
async def test_the_hook_runs_inside_the_bwrap_sandbox(make_pm, tmp_path):
    agents = {"worker": {"allowlist": {"bash": ["git *", "touch *"]}}}
    pm = make_pm(allowlist=plugin, probe=ProbeTheHook())
    commands = ["git status && rm -rf canary", "touch /state/made"]
    async with running_hive(
        tmp_path,
        pm,
        scenario(commands),
        agents=agents,
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 61950, "uid_range_size": 40},
    ) as hive:
        state = worker_state(tmp_path)
        (state / "canary").mkdir()
        outcome = await run_turn(hive, state)
        uid = await hive.backend.uids.lookup("worker")
    assert (state / "canary").is_dir()
    assert (state / "made").exists()
    assert "`rm -rf canary` matches none of the allowed patterns" in outcome[commands[0]]["denied"]
    probe_uid, pid_namespace = (state / "hook-probe").read_text().split()
    assert int(probe_uid) == uid  # the agent's own unprivileged uid, not the daemon's
    assert pid_namespace != os.readlink("/proc/self/ns/pid")  # a sandbox's namespace


# -- plants: code written where a later command runs it ---------------------------------
#
# A ~/.bashrc (Claude Code's Bash tool sources it, and ~/.profile and ~/.bash_profile,
# before each command) and a .git/config whose core.fsmonitor the next `git status`
# runs. Three layers stop them, each shown here: the allow-list refuses the writes,
# HOME is read-only and not the state dir, and git ignores the repository's
# code-running settings.

BWRAP = {"hive": {"container_backend": "bwrap"}, "bwrap": {"uid_range_start": 62100, "uid_range_size": 40}}
LOG = "git -C /state/repo log -1"
RUN = "format:touch /state/canary-{}"
# Each would plant code that a later command runs (it writes the canary) if it got through.
PLANTS = {
    "bashrc": f"{LOG} --format='{RUN.format('bashrc')}' --output=/state/.bashrc",
    "home-bashrc": f"{LOG} --format='{RUN.format('home-bashrc')}' --output=/home/agent/.bashrc",
    "profile": f"{LOG} --format='{RUN.format('profile')}' --outp=/state/.profile",
    "bash-profile": f"{LOG} --format='{RUN.format('bash-profile')}' -o /state/.bash_profile",
    "abbreviated": f"{LOG} --format='{RUN.format('abbreviated')}' --ou /home/agent/.profile",
    "format-patch": "git -C /state/repo format-patch -1 -o /state/repo/.git/hooks",
    "fsmonitor": f"{LOG} --format='format:[core]%n%x09fsmonitor = touch /state/canary-fsmonitor'"
    " --output=/state/repo/.git/config",
    "sort": "sort -o /state/.bashrc /state/payload",
}
REASONS = {
    "bashrc": "`--output` writes to `/state/.bashrc`, inside `.bashrc`: hidden files",
    "home-bashrc": "`--output` writes to `/home/agent/.bashrc`, outside what the agent may write",
    "profile": "`--outp` (`--output`) writes to `/state/.profile`",
    "bash-profile": "`-o` writes to `/state/.bash_profile`",
    "abbreviated": "`--ou` (`--output`) writes to `/home/agent/.profile`",
    "format-patch": "`-o` writes to `/state/repo/.git/hooks`, inside `.git`",
    "fsmonitor": "`--output` writes to `/state/repo/.git/config`, inside `.git`",
    "sort": "`-o` writes to `/state/.bashrc`",
}
# Then commands that would run what was planted: git reads the repository's config,
# and every Bash call sources the rc files.
AFTER = ["git -C /state/repo status --short", f"{LOG} --format=%s --output=/state/log.txt"]


async def make_repo(hive: Hive, state: Path) -> None:
    """A repository with a commit in the agent's state dir, owned by the agent's uid."""
    repo = state / "repo"
    repo.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}
    script = "git init -q -b main && git config user.name agent && git config user.email agent@hyperhive.invalid"
    script += " && git commit -q --allow-empty -m first"
    subprocess.run(script, shell=True, cwd=repo, env=env, check=True, timeout=30)
    (state / "payload").write_text("touch /state/canary-sort\n")
    uid = await hive.backend.uids.lookup("worker")
    for directory, dirs, files in os.walk(state):
        for name in [directory, *(os.path.join(directory, entry) for entry in dirs + files)]:
            os.chown(name, uid, uid, follow_symlinks=False)


def canaries(state: Path) -> list[str]:
    return sorted(path.name for path in state.glob("canary-*"))


@needs_bwrap
async def test_the_allow_list_refuses_every_plant(make_pm, tmp_path):
    agents = {"worker": {"allowlist": {"bash": ["git *", "sort *"]}}}
    commands = [*PLANTS.values(), *AFTER]
    async with running_hive(tmp_path, make_pm(allowlist=plugin), scenario(commands), agents=agents, **BWRAP) as hive:
        state = worker_state(tmp_path)
        await make_repo(hive, state)
        outcome = await run_turn(hive, state)
    for name, command in PLANTS.items():
        assert REASONS[name] in outcome[command].get("denied", ""), (name, outcome[command])
    for command in AFTER:  # the Bash tool still works, and the legitimate write landed
        assert "denied" not in outcome[command]
        assert not outcome[command]["result"]["is_error"], outcome[command]
    assert (state / "log.txt").read_text() == "first\n"
    assert canaries(state) == []
    assert not any((state / name).exists() for name in (".bashrc", ".profile", ".bash_profile"))
    assert "fsmonitor" not in (state / "repo" / ".git" / "config").read_text()


@needs_bwrap
async def test_without_an_allow_list_home_and_git_still_run_nothing_planted(make_pm, tmp_path):
    """No allow-list: the agent writes what it likes in its state dir, yet nothing it plants runs."""
    # Python does the writing: Claude Code itself asks before a shell redirection outside the
    # project, and a hook-less agent has nobody to ask; its own rules are not under test here.
    plant_rc = "python3 -c " + shlex.quote(
        "import errno, os\n"
        "for name in ('.bashrc', '.profile', '.bash_profile'):\n"
        "    try:\n"
        "        open(os.path.expanduser('~/' + name), 'a').write('touch /state/canary-' + name + '\\n')\n"
        "    except OSError as exc:\n"
        "        print(name, errno.errorcode[exc.errno])\n"
    )
    plant_git = "python3 -c " + shlex.quote(
        "import os\n"
        "open('/state/repo/.git/config', 'a').write("
        "'[core]\\n\\tfsmonitor = \"touch /state/canary-fsmonitor; false\"\\n'"
        "'[core]\\n\\thooksPath = /state/hooks\\n')\n"
        "os.makedirs('/state/hooks')\n"
        "open('/state/hooks/pre-commit', 'w').write('#!/bin/sh\\ntouch /state/canary-hook\\n')\n"
        "os.chmod('/state/hooks/pre-commit', 0o755)\n"
    )
    commands = [
        "echo $HOME; ls -A ~ | wc -l",
        plant_rc,
        plant_git,
        "git -C /state/repo status --short && git -C /state/repo commit -q --allow-empty -m second",
        "touch /state/ran-after",  # the next call would have sourced the rc files
    ]
    async with running_hive(tmp_path, make_pm(), scenario(commands), agents={"worker": {}}, **BWRAP) as hive:
        state = worker_state(tmp_path)
        await make_repo(hive, state)
        outcome = await run_turn(hive, state)
    assert outcome[commands[0]]["result"]["content"].split() == ["/home/agent", "0"]
    refused = outcome[plant_rc]["result"]["content"].split()
    assert refused == [".bashrc", "EROFS", ".profile", "EROFS", ".bash_profile", "EROFS"]  # HOME is read-only
    assert not outcome[plant_git]["result"]["is_error"], outcome[plant_git]  # the repository's config is its own
    assert "fsmonitor" in (state / "repo" / ".git" / "config").read_text()
    assert not outcome[commands[3]]["result"]["is_error"], outcome[commands[3]]
    assert (state / "ran-after").exists()
    assert canaries(state) == []


@needs_bwrap
async def test_a_session_from_before_resumes(make_pm, tmp_path, monkeypatch):
    """Agents whose CLI ran with HOME=/state have their transcripts in /state/.claude: they resume."""
    turns = '[[agents.worker.rules]]\nsteps = [{ text = "heard: {{prompt}}" }]\n'
    real = Hive.session_env

    def before(self: Hive, name: str, state: Path) -> dict[str, str]:
        env = real(self, name, state)
        del env["CLAUDE_CONFIG_DIR"]
        return {**env, "HOME": str(state)}  # as it was

    with monkeypatch.context() as patched:
        patched.setattr(Hive, "session_env", before)
        async with running_hive(tmp_path, make_pm(), turns, agents={"worker": {}}, **BWRAP) as hive:
            await hive.broker.send("operator", "worker", "the first message")
            with trio.fail_after(120):
                await next_event(hive, "worker", "turn_end")
            first = hive.harnesses["worker"].session.session_id
    state = worker_state(tmp_path)
    # Claude Code keeps transcripts in $CLAUDE_CONFIG_DIR/projects, which was /state/.claude then.
    assert [path.name for path in (state / ".claude" / "projects").glob("*/*.jsonl")] == [f"{first}.jsonl"]
    assert not (state / ".claude" / ".claude.json").exists()  # it was $HOME/.claude.json then

    async with running_hive(tmp_path, make_pm(), turns, agents={"worker": {}}, **BWRAP) as hive:
        await hive.broker.send("operator", "worker", "the second message")
        with trio.fail_after(120):
            await next_event(hive, "worker", "turn_end")
        session = hive.harnesses["worker"].session
        request = await hive.rehearsal.wait_for_request(lambda r: "the second message" in json.dumps(r.body))
    assert session.session_id == first
    assert "the first message" in json.dumps(request.body)  # the model saw the conversation so far
