"""Operator approvals end to end: the manager's requests through the real CLI, the operator's answers."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from test_bwrap import needs_bwrap

import hyperhive_core
from hyperhive_core import hookimpl
from hyperhive_core.approvals import ApprovalError
from hyperhive_core.broker import RecipientNotAllowed
from hyperhive_core.cli import cli
from hyperhive_core.config import option
from hyperhive_core.testing import needs_claude, next_event, operator_reply, running_hive

pytestmark = needs_claude

# The manager acts on what the operator writes; every other agent echoes it back.
SCENARIO = r"""
[[agents.manager.rules]]
when_regex = 'from operator \(text\) ---\nspawn (?P<name>\S+)'
steps = [
  { tool = "request_spawn", input = { name = "{{match.name}}", description = "the operator wants {{match.name}}" } },
  { text = "{{result}}" },
]

[[agents.manager.rules]]
when_regex = 'from operator \(text\) ---\ndraft (?P<name>\S+)'
steps = [{ tool = "request_spawn_draft", input = { name = "{{match.name}}" } }, { text = "{{result}}" }]

[[agents.manager.rules]]
when_regex = 'hive event: draft_created\nagent: (?P<name>\S+)\nconfig_repo: (?P<repo>\S+)'
[[agents.manager.rules.steps]]
tool = "Bash"
input.description = "commit the draft's config"
input.command = "cd {{match.repo}} && echo 'model = \"sonnet\"' > agent.toml && git commit --quiet -am 'on sonnet'"
[[agents.manager.rules.steps]]
tool = "request_spawn_commit"
input = { name = "{{match.name}}", commit_ref = "main" }
[[agents.manager.rules.steps]]
text = "{{result}}"

[[agents.manager.rules]]
when_regex = 'from operator \(text\) ---\napply (?P<name>\S+) (?P<ref>\S+)'
[[agents.manager.rules.steps]]
tool = "request_apply_commit"
input = { name = "{{match.name}}", commit_ref = "{{match.ref}}", description = "as the operator asked" }
[[agents.manager.rules.steps]]
text = "{{result}}"

[[agents.manager.rules]]
when_regex = 'from operator \(text\) ---\ndestroy (?P<name>\S+)'
steps = [{ tool = "request_destroy", input = { name = "{{match.name}}", purge = false } }, { text = "{{result}}" }]

# Each refused request's error is the next step's {{result}}; the test reads them all.
[[agents.manager.rules]]
when = "from operator (text) ---\nattack"
steps = [
  { tool = "request_spawn_draft", input = { name = "../../etc" } },
  { tool = "request_spawn", input = { name = "/tmp/evil", description = "x" } },
  { tool = "request_apply_commit", input = { name = "scout", description = "x", commit_ref = "--upload-pack=touch C" }},
  { tool = "request_apply_commit", input = { name = "scout", description = "x", commit_ref = "../../../etc/passwd" } },
  { tool = "request_apply_commit", input = { name = "scout", description = "x", commit_ref = "/etc/passwd" } },
  { tool = "request_spawn_commit", input = { name = "scout", commit_ref = "main" } },
  { text = "done" },
]

[[agents.manager.rules]]
when = "hive event: approval_resolved"
steps = [{ tool = "send", input = { to = "operator", body = "manager read: {{prompt}}" } }, { text = "ok" }]

[[agents.manager.rules]]
when = "hive event:"
steps = [{ text = "noted" }]

[[agents."*".rules]]
when_regex = '(?s)from operator \(text\) ---\n(?P<body>.*)'
steps = [{ tool = "send", input = { to = "operator", body = "{{agent}} heard: {{match.body}}" } }, { text = "ok" }]

[[agents."*".rules]]
when_regex = '(?s)from (?P<sender>\S+) \(text\) ---\n(?P<body>.*)'
steps = [{ text = "got {{match.body}} from {{match.sender}}" }]
"""


def git(repo: Path, *args: str) -> str:
    """git as the manager runs it in a config repo."""
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    argv = ["git", "-C", str(repo), "-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(repo: Path, text: str, message: str = "change") -> str:
    (repo / "agent.toml").write_text(text)
    git(repo, "commit", "--quiet", "-am", message)
    return git(repo, "rev-parse", "HEAD")


async def told_operator(hive, sender: str, wanted) -> str:
    """Wait for a message from ``sender`` to the operator whose body ``wanted`` accepts; return it."""
    seen = 0
    while True:
        for message in await hive.broker.recent_for("operator", 50):
            if message.sender == sender and wanted(message.body):
                return message.body
        seen = (await next_event(hive, sender, "message_sent", after=seen)).id


async def requested(hive, agent: str, after: int = 0):
    """The approval the manager's request created, once its event is out."""
    event = await next_event(hive, agent, "approval_requested", after=after)
    return await hive.approvals.get(event.data["id"])


async def test_an_approved_spawn_starts_an_agent_that_answers(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.broker.send("operator", "manager", "spawn scout")
        with trio.fail_after(60):
            approval = await requested(hive, "scout")
        assert (approval.kind, approval.status, approval.requested_by) == ("spawn", "pending", "manager")
        assert approval.description == "the operator wants scout"
        assert '+instructions = ""' in approval.diff  # the template it will get
        assert "scout" not in hive.agents
        assert [a.id for a in await hive.approvals.list("pending")] == [approval.id]

        approved = await hive.approvals.approve(approval.id, "welcome")
        assert (approved.status, approved.note) == ("approved", "welcome")
        assert hive.agents.get("scout").role == "agent"
        await hive.broker.send("operator", "scout", "ping")
        with trio.fail_after(60):
            assert await operator_reply(hive, "scout") == "scout heard: ping"
            read = await operator_reply(hive, "manager")
        assert "hive event: approval_resolved" in read
        assert f"id: {approval.id}" in read
        assert "status: approved" in read
        assert "note: welcome" in read
        with pytest.raises(ApprovalError, match="already approved"):
            await hive.approvals.deny(approval.id, "too late")


@pytest.mark.slow
async def test_two_step_spawn_runs_the_committed_model_and_survives_a_restart(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.broker.send("operator", "manager", "draft scribe")
        with trio.fail_after(60):
            approval = await requested(hive, "scribe")
        proposed = hive.repos.proposed("scribe")
        assert hive.paths.agent_state("scribe").is_dir()
        assert [(d.name, d.created_by, d.pending) for d in await hive.approvals.drafts()] == [
            ("scribe", "manager", approval.id)
        ]
        assert approval.kind == "spawn_commit"
        assert approval.fetched_sha == git(proposed, "rev-parse", "HEAD")  # the manager's own commit
        assert git(proposed, "log", "-1", "--format=%s") == "on sonnet"
        assert approval.diff.startswith("diff --git a/agent.toml b/agent.toml\nnew file mode")
        assert '+model = "sonnet"' in approval.diff
        # The manager sees the repo: bound in its container (here, with no isolation, the host path).
        assert hive.container_spec("manager").extra_binds == {"/agents/scribe/config": proposed}

        await hive.approvals.approve(approval.id)
        assert await hive.approvals.drafts() == []
        assert hive.agents.get("scribe").status.model == "sonnet"
        mark = hive.rehearsal.request_count
        await hive.broker.send("operator", "scribe", "hello")
        with trio.fail_after(60):
            request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "scribe", after=mark)
        assert request.body["model"] == "claude-sonnet-5-5"
        assert (await hive.agents.stored())["scribe"]["applied_sha"] == approval.fetched_sha
        assert (hive.repos.applied("scribe") / "agent.toml").read_text() == 'model = "sonnet"\n'

    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        assert hive.agents.get("scribe").config.model == "sonnet"
        assert (await hive.agents.stored())["scribe"]["origin"] == "applied"


async def test_an_applied_commit_takes_effect_and_later_commits_do_not(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.spawn("scout")  # the operator's direct spawn
        await hive.spawn("ranger")
        assert "ranger" not in hive.agents.peers("scout")
        with pytest.raises(RecipientNotAllowed, match="'scout' may not message 'ranger'"):
            await hive.broker.send("scout", "ranger", "psst")

        proposed = hive.repos.proposed("scout")
        wanted = commit(proposed, 'allowed_recipients = ["ranger"]\n', "scout may talk to ranger")
        await hive.broker.send("operator", "manager", "apply scout main")
        with trio.fail_after(60):
            approval = await requested(hive, "scout")
        assert approval.fetched_sha == wanted
        assert approval.commit_ref == "main"
        assert '+allowed_recipients = ["ranger"]' in approval.diff
        commit(proposed, 'allowed_recipients = []\nmodel = "opus"\n', "moved on")  # the branch moves after asking

        await hive.approvals.approve(approval.id)
        assert hive.agents.peers("scout") == ["operator", "manager", "ranger"]
        assert hive.agents.get("scout").status.model != "opus"
        assert (await hive.agents.stored())["scout"]["applied_sha"] == wanted
        await hive.broker.send("scout", "ranger", "psst")
        with trio.fail_after(60):
            end = await next_event(hive, "ranger", "turn_end")
        assert end.data["exit"] == "ok"


async def test_a_denial_reaches_the_manager_with_its_note(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.broker.send("operator", "manager", "spawn scout")
        with trio.fail_after(60):
            approval = await requested(hive, "scout")
        with pytest.raises(ApprovalError, match="note must not be empty"):
            await hive.approvals.deny(approval.id, "  ")
        denied = await hive.approvals.deny(approval.id, "not now: the budget is spent")
        assert (denied.status, denied.note) == ("denied", "not now: the budget is spent")
        assert denied.resolved_at >= denied.requested_at
        with trio.fail_after(60):
            read = await operator_reply(hive, "manager")
        assert "status: denied\nnote: not now: the budget is spent" in read
        assert "scout" not in hive.agents
        assert not hive.repos.proposed("scout").exists()


class Greeting:
    """A plugin with an agent.toml section it validates."""

    @dataclass
    class Section:
        words: list[str] = option([], help="Greetings.")

    @hookimpl
    def register_agent_sections(self, register):
        register("greeting", self.Section)

    @hookimpl
    def validate_agent_config(self, agent, config):
        section = config.section("greeting")
        if section and "rude" in section.words:
            return ["greeting: 'rude' is not a greeting"]
        return None


async def test_an_invalid_config_cannot_be_approved_and_a_second_request_waits(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(greeting=Greeting()), SCENARIO) as hive:
        await hive.spawn("scout")
        proposed = hive.repos.proposed("scout")
        assert "Sections the hive's plugins read: [greeting]" in (proposed / "agent.toml").read_text()
        commit(proposed, '[greeting]\nwords = ["hi", "rude"]\n')
        await hive.broker.send("operator", "manager", "apply scout main")
        with trio.fail_after(60):
            approval = await requested(hive, "scout")
            answer = await next_event(hive, "manager", "turn_end")
        assert approval.problems == [
            f"scout's agent.toml at {approval.fetched_sha[:12]}: agent 'scout' has an invalid config: "
            "greeting: 'rude' is not a greeting"
        ]
        told = [e.data["content"] for e in await hive.events.history("manager") if e.type == "tool_result"]
        assert "Its config is invalid, so it can only be denied: scout's agent.toml" in told[-1]
        with pytest.raises(ApprovalError, match="cannot be approved: .*'rude' is not a greeting"):
            await hive.approvals.approve(approval.id)
        assert (await hive.approvals.get(approval.id)).status == "pending"

        commit(proposed, '[greeting]\nwords = ["hi"]\n')
        with pytest.raises(ApprovalError, match=f"approval {approval.id} \\(apply_commit of scout\\) is still waiting"):
            await hive.approvals.request_apply_commit("manager", "scout", "main", "fixed")
        await hive.approvals.deny(approval.id, "fix the greeting")
        fixed = await hive.approvals.request_apply_commit("manager", "scout", "main", "fixed")
        assert fixed.problems == []
        await hive.approvals.approve(fixed.id)
        assert hive.agents.get("scout").config.section("greeting").words == ["hi"]
        with pytest.raises(ApprovalError, match="configured in the operator's hyperhive.toml"):
            await hive.approvals.request_apply_commit("manager", "manager", "main", "me")
        assert answer.data["exit"] == "ok"


async def test_names_refs_and_paths_from_the_manager_are_refused(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO.replace("touch C", f"touch {tmp_path / 'canary'}")) as hive:
        await hive.spawn("scout")
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "run" not in p.parts)
        await hive.broker.send("operator", "manager", "attack")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
        results = [e.data for e in await hive.events.history("manager") if e.type == "tool_result"]
        assert all(result["is_error"] for result in results)
        contents = [result["content"] for result in results]
        assert "invalid agent name '../../etc'" in contents[0]
        assert "invalid agent name '/tmp/evil'" in contents[1]
        assert "starts with '-', which git would read as an option" in contents[2]
        assert "contains '..'" in contents[3]
        assert "starts with '/'" in contents[4]
        assert "'scout' is not a draft" in contents[5]
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "run" not in p.parts)
        assert not (tmp_path / "canary").exists()
        assert await hive.approvals.list() == []
        # Only the manager's own session files, its HOME (the process backend's is a plain
        # directory, where the CLI keeps its caches) and the hive's scratch space changed.
        allowed = [Path("state/agents/manager/state"), Path("state/agents/manager/home"), Path("state/tmp")]
        assert [p for p in after if p not in before and not any(p.is_relative_to(a) for a in allowed)] == []


def plant(proposed: Path, canary: Path) -> None:
    """A hook and fsmonitor that touch ``canary``, if git ever ran in the repo."""
    hook = proposed / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {canary}\n")
    hook.chmod(0o755)
    with (proposed / ".git" / "config").open("a") as config:
        config.write(f'[core]\n\tfsmonitor = "touch {canary}"\n\tsshCommand = "touch {canary}"\n')


async def test_a_hostile_config_repo_runs_nothing_on_the_host(make_pm, tmp_path):
    canary = tmp_path / "canary"
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.spawn("scout")
        proposed = hive.repos.proposed("scout")
        wanted = commit(proposed, 'instructions = "map the docs"\n')
        plant(proposed, canary)
        await hive.broker.send("operator", "manager", "apply scout main")
        with trio.fail_after(60):
            approval = await requested(hive, "scout")
        assert approval.fetched_sha == wanted
        await hive.approvals.approve(approval.id)
        assert hive.agents.get("scout").config.instructions == "map the docs"

        # A symlinked .git aimed at another repo on the host is refused outright.
        os.rename(proposed / ".git", tmp_path / "real.git")
        (proposed / ".git").symlink_to(tmp_path / "real.git")
        commit(proposed, 'instructions = "from elsewhere"\n')
        await hive.broker.send("operator", "manager", "apply scout main")
        with trio.fail_after(60):
            result = await next_event(hive, "manager", "tool_result", lambda e: "config repo" in e.data["content"])
        assert result.data["is_error"]
        assert ".git is a symlink" in result.data["content"]
        assert not canary.exists()


async def test_an_approved_destroy_cancels_the_agents_other_requests(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.spawn("scout")
        commit(hive.repos.proposed("scout"), 'model = "sonnet"\n')
        apply = await hive.approvals.request_apply_commit("manager", "scout", "main", "sonnet")
        await hive.broker.send("operator", "manager", "destroy scout")
        with trio.fail_after(60):
            event = await next_event(hive, "scout", "approval_requested", lambda e: e.data["kind"] == "destroy")
        destroy = await hive.approvals.get(event.data["id"])
        assert (destroy.purge, destroy.description) == (False, "destroy it, keeping its state")
        assert (await hive.approvals.approve(destroy.id)).status == "approved"
        assert list(await hive.kept_state()) == ["scout"]
        with pytest.raises(ApprovalError, match="'scout' is destroyed already, its state kept; ask with purge"):
            await hive.approvals.request_destroy("manager", "scout", False)
        cancelled = await hive.approvals.get(apply.id)
        assert (cancelled.status, cancelled.note) == ("cancelled", "scout was destroyed")
        with trio.fail_after(60):
            await told_operator(hive, "manager", lambda body: "status: cancelled" in body)


async def test_hook_on_approval_resolved(make_pm, tmp_path):
    seen = []

    class Watch:
        @hookimpl
        async def on_approval_resolved(self, hive, approval):
            inbox = await hive.broker.recent_for("manager", 5)
            seen.append((approval.id, approval.status, approval.note, [json.loads(m.body)["event"] for m in inbox]))

    async with running_hive(tmp_path, make_pm(watch=Watch()), SCENARIO) as hive:
        request = await hive.approvals.request_spawn("manager", "scout", "a scout for the docs")
        await hive.approvals.deny(request.id, "not today")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
    assert seen == [(request.id, "denied", "not today", ["approval_resolved"])]


async def test_the_operators_cli_lists_shows_approves_and_denies(make_pm, tmp_path, clean_env):
    config = tmp_path / "cli.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')

    def run(*args: str):
        return CliRunner().invoke(cli, ["--config", str(config), *args])

    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.spawn("scout")
        commit(hive.repos.proposed("scout"), 'model = "sonnet"\n')
        apply = await hive.approvals.request_apply_commit("manager", "scout", "main", "scout on sonnet")
        spawn = await hive.approvals.request_spawn("manager", "ranger", "a ranger")

        listed = await trio.to_thread.run_sync(run, "approvals")
        assert listed.exit_code == 0, listed.output
        lines = listed.output.splitlines()
        assert lines[0].split() == [f"#{spawn.id}", "pending", "spawn", "ranger", "a", "ranger"]
        assert f"{apply.fetched_sha[:12]}  scout on sonnet" in lines[1]
        shown = await trio.to_thread.run_sync(run, "approvals", str(apply.id))
        assert '+model = "sonnet"' in shown.output
        assert "requested by manager, ref main" in shown.output

        denied = await trio.to_thread.run_sync(run, "deny", str(spawn.id), "--note", "one is enough")
        assert denied.output == f"denied #{spawn.id}: spawn ranger\n"
        approved = await trio.to_thread.run_sync(run, "approve", str(apply.id))
        assert approved.output == f"approved #{apply.id}: apply_commit scout\n"
        again = await trio.to_thread.run_sync(run, "approve", str(apply.id))
        assert again.exit_code == 1
        assert f"approval {apply.id} is already approved" in again.output
        assert (await trio.to_thread.run_sync(run, "approvals")).output == "no pending approvals\n"
        everything = json.loads((await trio.to_thread.run_sync(run, "approvals", "--all", "--json")).output)
        assert [(a["id"], a["status"], a["note"]) for a in everything] == [
            (spawn.id, "denied", "one is enough"),
            (apply.id, "approved", ""),
        ]


async def run_in(hive, agent: str, script: str) -> str:
    """``sh -c script`` in ``agent``'s container, as the agent; its stdout."""
    process = await hive.backend.exec(hive.container_spec(agent), ["/bin/sh", "-c", script], {})
    output = b""
    while chunk := await process.stdout.receive_some():
        output += chunk
    await process.wait()
    return output.decode()


@needs_bwrap
@pytest.mark.slow
async def test_in_bwrap_the_manager_commits_in_its_container_and_the_draft_runs_from_it(make_pm, tmp_path):
    sandboxes = {"container_backend": "bwrap"}
    uids = {"uid_range_start": 61800, "uid_range_size": 50}  # clear of a real hive's and test_bwrap's
    async with running_hive(tmp_path, make_pm(), SCENARIO, hive=sandboxes, bwrap=uids) as hive:
        await hive.broker.send("operator", "manager", "draft scribe")
        with trio.fail_after(90):
            approval = await requested(hive, "scribe")
        # The manager's own Bash wrote and committed at /agents/scribe/config, as its own uid
        # (so git run as root would refuse the repo; the hive never runs git there).
        assert hive.repos.proposed("scribe").stat().st_uid == await hive.backend.uids.lookup("manager")
        applied = hive.repos.applied("scribe")
        assert await hive.repos.git.run(applied, "log", "-1", "--format=%s", approval.fetched_sha) == "on sonnet\n"
        assert '+model = "sonnet"' in approval.diff
        await hive.approvals.approve(approval.id)
        mark = hive.rehearsal.request_count
        await hive.broker.send("operator", "scribe", "hello")
        with trio.fail_after(90):
            request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "scribe", after=mark)
        assert request.body["model"] == "claude-sonnet-5-5"
        assert (await run_in(hive, "scribe", "test -e /agents && echo visible || echo absent")) == "absent\n"
        assert (await run_in(hive, "manager", "ls /agents")) == "scribe\n"
        # Purged, its repo leaves the manager's view; the manager's next turn runs without it.
        await hive.destroy("scribe", purge=True)
        await hive.broker.send("operator", "manager", "still there?")
        with trio.fail_after(90):
            await told_operator(hive, "manager", lambda body: body == "manager heard: still there?")
        assert (await run_in(hive, "manager", "ls -A /agents 2>&1 || true")).startswith("ls: cannot access")


async def test_the_demo_manager_requests_a_spawn_and_hears_the_answer(make_pm, tmp_path):
    demo = (Path(hyperhive_core.__file__).parent / "scenarios" / "demo.toml").read_text()
    async with running_hive(tmp_path, make_pm(), demo) as hive:
        await hive.broker.send("operator", "manager", "please spawn scout to read the docs")
        with trio.fail_after(60):
            approval = await requested(hive, "scout")
            told = await operator_reply(hive, "manager")
        assert approval.description == "The operator asked: please spawn scout to read the docs"
        assert told.startswith(f"I asked to spawn scout: approval {approval.id} (spawn scout) is waiting")
        await hive.approvals.approve(approval.id)
        with trio.fail_after(60):
            await told_operator(hive, "manager", lambda body: body.startswith("Your answer"))
        assert (await hive.broker.recent_from("manager", 1))[0].body == (
            f"Your answer to request {approval.id} (spawn scout) reached me: approved."
        )


class Strict:
    """Rejects every model once switched on: a config that was valid when requested is not when approved."""

    def __init__(self):
        self.on = False

    @hookimpl
    def validate_agent_config(self, agent, config):
        return [f"{agent}: no models today"] if self.on and config.model else None


async def test_a_failed_approval_says_why_and_changes_nothing(make_pm, tmp_path):
    strict = Strict()
    async with running_hive(tmp_path, make_pm(strict=strict), SCENARIO) as hive:
        await hive.spawn("scout")
        before = (await hive.agents.stored())["scout"]["applied_sha"]
        with pytest.raises(ApprovalError, match=f"'main' is {before[:12]}, which is what scout runs already"):
            await hive.approvals.request_apply_commit("manager", "scout", "main", "nothing new")
        commit(hive.repos.proposed("scout"), 'model = "sonnet"\n')
        approval = await hive.approvals.request_apply_commit("manager", "scout", "main", "sonnet")
        assert approval.problems == []
        strict.on = True
        failed = await hive.approvals.approve(approval.id, "go")
        assert failed.status == "failed"
        assert failed.error.endswith("agent 'scout' has an invalid config: scout: no models today")
        assert (await hive.agents.stored())["scout"]["applied_sha"] == before
        assert hive.agents.get("scout").config.model is None
        with trio.fail_after(60):
            read = await operator_reply(hive, "manager")
        assert "status: failed\n" in read
        assert "note: go\nerror: " in read


async def test_a_draft_is_listed_until_purged_and_then_its_request_is_cancelled(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.approvals.request_spawn_draft("manager", "scribe")
        with pytest.raises(ApprovalError, match="'scribe' is a draft: commit its config in .* request_spawn_commit"):
            await hive.approvals.request_spawn("manager", "scribe", "again")
        with pytest.raises(ApprovalError, match="'scribe' is a draft"):
            await hive.spawn("scribe")
        commit(hive.repos.proposed("scribe"), 'instructions = "write"\n')
        request = await hive.approvals.request_spawn_commit("manager", "scribe", "HEAD")
        with pytest.raises(Exception, match="'scribe' is a draft, with nothing running; discard it with --purge"):
            await hive.destroy("scribe")
        await hive.destroy("scribe", purge=True)
        assert await hive.approvals.drafts() == []
        assert not hive.paths.agent_dir("scribe").exists()
        assert not hive.repos.applied("scribe").exists()
        cancelled = await hive.approvals.get(request.id)
        assert (cancelled.status, cancelled.note) == ("cancelled", "scribe was destroyed")
