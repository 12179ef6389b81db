"""Notes compaction: the real Claude Code CLI against the rehearsal model, real files, real sqlite."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import hyperhive_compaction
import hyperhive_web
import pytest
import trio
from hyperhive_compaction import records, web
from hyperhive_compaction.compactor import COMPACTOR, judge
from hyperhive_compaction.notes import Backups, NotesError, read_notes, write_notes
from hyperhive_compaction.session import SessionResult, compaction_argv, parse_result
from hyperhive_web import dashboard_of

from hyperhive_core import ConfigError, HyperhiveError, root_cause
from hyperhive_core.testing import dashboard_page, host_request, needs_claude, next_event, running_hive, wait_until

LONG_NOTES = "# notes\n" + "".join(f"- fact {i}: the build runs with make test\n" for i in range(40))
SHORT_NOTES = "# notes\n- facts 0-39: the build runs with make test\n"


def notes_path(tmp_path: Path, agent: str = "worker") -> Path:
    return tmp_path / "state" / "agents" / agent / "state" / "notes.md"


def scenario(tmp_path: Path, compacted: str) -> str:
    """The worker writes long notes in its own turn; the compaction session rewrites them."""
    notes = notes_path(tmp_path)
    return f"""
[[agents.worker.rules]]
when = "compact these notes"
steps = [
  {{ tool = "Read", input = {{ file_path = "{notes}" }} }},
  {{ tool = "Write", input = {{ file_path = "{notes}", content = {json.dumps(compacted)} }} }},
  {{ text = "merged the repeated facts" }},
]

[[agents.worker.rules]]
when = "from operator"
steps = [
  {{ tool = "Write", input = {{ file_path = "{notes}", content = {json.dumps(LONG_NOTES)} }} }},
  {{ text = "noted" }},
]
"""


def compaction_config(**overrides) -> dict:
    return {"compaction": {"threshold_bytes": 200, **overrides}}


# -- the pieces, on their own ------------------------------------------------------------


def test_judge_keeps_only_a_smaller_non_empty_result():
    ok = SessionResult(True, "done")
    assert judge(ok, b"long notes", b"short") is None
    assert judge(ok, b"long notes", b"  \n") == "the result was empty"
    assert "not smaller" in judge(ok, b"notes", b"longer notes")
    assert "not smaller" in judge(ok, b"notes", b"notes")
    assert "no longer a regular file" in judge(ok, b"notes", None)
    assert judge(SessionResult(False, "the session failed (api_error): boom"), b"long", b"s") == (
        "the session failed (api_error): boom"
    )


def test_the_session_may_only_touch_the_notes_file():
    argv = compaction_argv(Path("/cli/claude"), PurePosixPath("/state/notes.md"), PurePosixPath("/state/.w"), "haiku")
    assert argv[:3] == ["env", "--chdir=/state/.w", "/cli/claude"]
    assert argv[argv.index("--tools") + 1] == "Read,Edit,Write"
    assert argv[argv.index("--allowedTools") + 1] == (
        "Read(//state/notes.md),Edit(//state/notes.md),Write(//state/notes.md)"
    )
    assert argv[argv.index("--setting-sources") + 1] == ""
    assert "--strict-mcp-config" in argv
    assert "compact these notes, keep every durable fact" in argv[argv.index("-p") + 1]
    assert "/state/notes.md" in argv[argv.index("-p") + 1]


def test_parse_result():
    assert parse_result(b'{"is_error": false, "result": "merged", "total_cost_usd": 0.5}', b"", 0) == (
        SessionResult(True, "merged", 0.5)
    )
    failed = parse_result(b'{"is_error": true, "terminal_reason": "api_error", "result": "API Error"}', b"", 1)
    assert not failed.ok
    assert failed.detail == "the session failed (api_error): API Error"
    crashed = parse_result(b"", b"line 1\nError: no such option --bogus\n", 1)
    assert crashed == SessionResult(False, "Claude Code exited with status 1: line 1 | Error: no such option --bogus")


def test_notes_symlinks_are_never_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    notes = tmp_path / "notes.md"
    notes.symlink_to(secret)
    assert read_notes(notes) is None
    write_notes(notes, b"restored notes")
    assert secret.read_text() == "root's secret"
    assert not notes.is_symlink()
    assert notes.read_bytes() == b"restored notes"


def test_write_notes_keeps_the_file_in_place(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("a much longer text than what comes back")
    inode = notes.stat().st_ino
    write_notes(notes, b"short")
    assert notes.read_bytes() == b"short"
    assert notes.stat().st_ino == inode


def test_write_notes_refuses_what_is_not_a_file(tmp_path):
    notes = tmp_path / "notes.md"
    notes.mkdir()
    with pytest.raises(NotesError, match="cannot restore .*notes.md: .*move it away and restore the backup"):
        write_notes(notes, b"notes")


def test_backups_keep_the_newest(tmp_path):
    backups = Backups(tmp_path / "backups", keep=2)
    for run_id in range(1, 5):
        backups.save(f"version {run_id}".encode(), run_id)
    kept = backups.list()
    assert [path.read_text() for path in kept] == ["version 3", "version 4"]
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in kept)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"threshold_bytes": 0}, "[compaction] threshold_bytes must be at least 1, not 0"),
        ({"keep_backups": 0}, "[compaction] keep_backups must be at least 1, not 0"),
        ({"timeout_seconds": 0}, "[compaction] timeout_seconds must be positive, not 0"),
        ({"model": "big model"}, "[compaction] model 'big model' is not a model name"),
        ({"model": "--dangerously-skip-permissions"}, "is not a model name"),
        ({"threshold_bytes": "lots"}, "compaction.threshold_bytes"),
        ({"treshold_bytes": 10}, "unknown key compaction.treshold_bytes"),
    ],
)
def test_config_errors_name_the_key(make_pm, make_config, section, message):
    with pytest.raises(ConfigError) as caught:
        make_config(make_pm(compaction=hyperhive_compaction), compaction=section)
    assert message in str(caught.value)


def test_config_defaults(make_pm, make_config):
    section = make_config(make_pm(compaction=hyperhive_compaction)).section("compaction")
    assert (section.threshold_bytes, section.model, section.keep_backups) == (32768, None, 5)


async def test_an_unknown_compaction_model_stops_the_start(make_pm, tmp_path):
    pm = make_pm(compaction=hyperhive_compaction)
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - the daemon's nurseries wrap it
        async with running_hive(tmp_path, pm, scenario(tmp_path, SHORT_NOTES), compaction={"model": "nonesuch"}):
            pass
    assert isinstance(root_cause(caught.value), HyperhiveError)
    assert "unknown model 'nonesuch'" in str(root_cause(caught.value))
    assert "[claude] extra_models" in str(root_cause(caught.value))


async def test_a_purged_agent_leaves_no_runs_behind(make_pm, tmp_path):
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(tmp_path, pm, scenario(tmp_path, SHORT_NOTES), agents={"worker": {}}) as hive:
        await hive.spawn("scout")
        for agent in ("worker", "scout"):
            await hive.store.write(lambda db, agent=agent: records.start_run(db, agent, "forced", "haiku", 10))
        await hive.destroy("scout", purge=True)
        agents = await hive.store.read(lambda db: [row["agent"] for row in db.table(records.TABLE).rows])
        assert agents == ["worker"]


# -- with the real CLI ------------------------------------------------------------------------


@needs_claude
@pytest.mark.slow
async def test_notes_past_the_threshold_are_compacted(make_pm, tmp_path):
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(
        tmp_path, pm, scenario(tmp_path, SHORT_NOTES), agents={"worker": {}}, **compaction_config()
    ) as hive:
        await hive.broker.send("operator", "worker", "remember the build command")
        with trio.fail_after(60):
            badge = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "compacting")
            done = await next_event(hive, "worker", "note", lambda e: "compacted" in e.data["text"], after=badge.id)
            idle = await next_event(hive, "worker", "state_change", after=badge.id)
        assert badge.data["detail"] == f"notes.md: {len(LONG_NOTES)} bytes"
        assert done.data["text"] == f"notes.md compacted: {len(LONG_NOTES)} → {len(SHORT_NOTES)} bytes"
        assert idle.data["state"] == "idle"
        assert hive.agents.get("worker").status.state.value == "idle"
        assert notes_path(tmp_path).read_text() == SHORT_NOTES
        [run] = await hive.stash[COMPACTOR].last("worker")
        assert (run["outcome"], run["trigger"], run["before_bytes"], run["after_bytes"]) == (
            "ok",
            "threshold",
            len(LONG_NOTES),
            len(SHORT_NOTES),
        )
        assert run["reason"] == "merged the repeated facts"
        assert run["cost_usd"] > 0
        assert Path(run["backup"]).read_text() == LONG_NOTES
        # The session saw only its prompt, from the agent's own rehearsal endpoint.
        session = [r for r in hive.rehearsal.requests if r.rule and "compact these notes" in str(r.body["messages"])]
        assert {tool["name"] for tool in session[0].body["tools"]} == {"Read", "Edit", "Write"}


@needs_claude
@pytest.mark.slow
@pytest.mark.parametrize(
    ("compacted", "reason"),
    [
        (LONG_NOTES + "- one more fact\n", "is not smaller than the original"),
        ("", "the result was empty"),
    ],
)
async def test_a_bad_compaction_is_undone(make_pm, tmp_path, compacted, reason):
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(
        tmp_path, pm, scenario(tmp_path, compacted), agents={"worker": {}}, **compaction_config()
    ) as hive:
        await hive.broker.send("operator", "worker", "remember the build command")
        with trio.fail_after(60):
            error = await next_event(hive, "worker", "error", lambda e: "compaction undone" in e.data["text"])
        assert reason in error.data["text"]
        assert notes_path(tmp_path).read_text() == LONG_NOTES
        [run] = await hive.stash[COMPACTOR].last("worker")
        assert run["outcome"] == "restored"
        assert reason in run["reason"]
        # Undone: the threshold does not try again on every turn.
        assert await hive.stash[COMPACTOR]._cooling_down("worker")


@needs_claude
@pytest.mark.slow
async def test_blank_notes_past_the_threshold_are_reported_not_a_crash(make_pm, tmp_path):
    notes = notes_path(tmp_path)
    notes.parent.mkdir(parents=True)
    notes.write_text(" \n" * 200)
    quiet = '[[agents.worker.rules]]\nsteps = [{ text = "ok" }]\n'
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(tmp_path, pm, quiet, agents={"worker": {}}, **compaction_config()) as hive:
        await hive.broker.send("operator", "worker", "hello")
        with trio.fail_after(60):
            error = await next_event(hive, "worker", "error")
        assert error.data["text"] == f"notes compaction: worker has no notes to compact: {notes} is missing or empty"
        assert await hive.stash[COMPACTOR].last("worker") == []


@needs_claude
@pytest.mark.slow
async def test_forced_compaction_from_the_command_line(make_pm, tmp_path, hyperhive, clean_env):
    """`hyperhive compact-notes` runs one below the threshold; errors say what to do."""
    notes = notes_path(tmp_path)
    notes.parent.mkdir(parents=True)
    notes.write_text(LONG_NOTES)
    pm = make_pm(compaction=hyperhive_compaction)
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')
    env = {**clean_env, "HYPERHIVE_CONFIG": str(config), "HYPERHIVE_LOAD_PLUGINS": "compaction"}
    async with running_hive(
        tmp_path, pm, scenario(tmp_path, SHORT_NOTES), agents={"worker": {}}, **compaction_config(threshold_bytes=99999)
    ) as hive:

        def cli(*args):
            return subprocess.run([hyperhive, *args], env=env, capture_output=True, text=True, timeout=60)

        with trio.fail_after(60):
            done = await trio.to_thread.run_sync(cli, "compact-notes", "worker")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"worker: notes.md compacted, {len(LONG_NOTES)} → {len(SHORT_NOTES)} bytes"
        assert notes.read_text() == SHORT_NOTES
        with trio.fail_after(30):
            missing = await trio.to_thread.run_sync(cli, "compact-notes", "nobody")
            notes.unlink()
            empty = await trio.to_thread.run_sync(cli, "compact-notes", "worker")
        assert missing.returncode == 1
        assert "no agent named 'nobody'" in missing.stderr
        assert "worker has no notes to compact" in empty.stderr
        [run] = await hive.stash[COMPACTOR].last("worker")
        assert run["trigger"] == "forced"
        listed = await host_request(hive, "compactions", agent="worker")
        assert [entry["id"] for entry in listed] == [run["id"]]


@needs_claude
@pytest.mark.slow
async def test_a_forced_compaction_waits_for_the_turn(make_pm, tmp_path):
    """Asked for mid-turn, it runs once the turn has ended, never alongside it."""
    notes = notes_path(tmp_path)
    slow_turn = scenario(tmp_path, SHORT_NOTES).replace('{ text = "noted" }', '{ text = "noted", delay = 1.5 }')
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(
        tmp_path, pm, slow_turn, agents={"worker": {}}, **compaction_config(threshold_bytes=99999)
    ) as hive:
        await hive.broker.send("operator", "worker", "remember the build command")
        with trio.fail_after(60):
            await hive.rehearsal.wait_for_request(lambda r: r.agent == "worker" and r.step == 1)
            queued = await hive.stash[COMPACTOR].request("worker")
            assert queued == {"agent": "worker", "queued": True}
            end = await next_event(hive, "worker", "turn_end")
            badge = await next_event(hive, "worker", "state_change", lambda e: e.data["state"] == "compacting")
            await next_event(hive, "worker", "note", lambda e: "compacted" in e.data["text"], after=badge.id)
        assert badge.id > end.id
        assert notes.read_text() == SHORT_NOTES
        [run] = await hive.stash[COMPACTOR].last("worker")
        assert (run["trigger"], run["outcome"]) == ("forced", "ok")


@needs_claude
@pytest.mark.slow
async def test_a_turn_waits_for_a_forced_compaction(make_pm, tmp_path):
    notes = notes_path(tmp_path)
    notes.parent.mkdir(parents=True)
    notes.write_text(LONG_NOTES)
    slow_session = scenario(tmp_path, SHORT_NOTES).replace(
        '{ text = "merged the repeated facts" }', '{ text = "merged the repeated facts", delay = 1.5 }'
    )
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(
        tmp_path, pm, slow_session, agents={"worker": {}}, **compaction_config(threshold_bytes=99999)
    ) as hive:
        runs = []

        async def force():
            runs.append(await hive.stash[COMPACTOR].request("worker"))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(force)
                await hive.rehearsal.wait_for_request(lambda r: r.agent == "worker" and r.step == 2)
                await hive.broker.send("operator", "worker", "remember the build command")
                start = await next_event(hive, "worker", "turn_start")
                waiting = await next_event(hive, "worker", "state_change", after=start.id)
                resumed = await next_event(hive, "worker", "state_change", after=waiting.id)
            await next_event(hive, "worker", "turn_end")
        assert (waiting.data["state"], waiting.data["detail"]) == (
            "compacting",
            "the turn waits for the notes compaction",
        )
        assert (resumed.data["state"], resumed.data["detail"]) == ("thinking", "1 message(s)")
        assert runs[0]["outcome"] == "ok"
        session_end = max(r.time for r in hive.rehearsal.requests if r.rule == "agents.worker.rules[0]")
        turn_begin = min(r.time for r in hive.rehearsal.requests if r.rule == "agents.worker.rules[1]")
        assert turn_begin > session_end + 1.0  # after the delayed answer, not alongside it


HOSTILE = "<script>alert(1)</script>"


def page_html(url: str, token: str) -> str:
    """A dashboard page as a script fetches it, with the operator token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@needs_claude
@pytest.mark.slow
async def test_the_slash_command_starts_one_and_the_panels_show_it(make_pm, tmp_path):
    notes = notes_path(tmp_path)
    notes.parent.mkdir(parents=True)
    notes.write_text(LONG_NOTES)
    pm = make_pm(web=hyperhive_web, compaction=hyperhive_compaction)
    async with running_hive(
        tmp_path,
        pm,
        scenario(tmp_path, SHORT_NOTES),
        agents={"worker": {}},
        web={"port": 0},
        **compaction_config(threshold_bytes=99999),
    ) as hive:
        dashboard = dashboard_of(hive)

        async def page(path: str) -> str:
            with trio.fail_after(30):
                return await trio.to_thread.run_sync(page_html, f"{dashboard.url}{path}", dashboard.token)

        before = await page("/agent/worker/")
        assert "last compaction: no compaction yet" in before
        threshold = "compacted once it grows past 99999 bytes (the threshold)"
        assert f"notes.md is {len(LONG_NOTES)} bytes; {threshold}" in before
        assert 'data-api="/-/compaction/agents/worker/compact"' in before
        with pytest.raises(HyperhiveError, match="/compact-notes takes no arguments"):
            await web.compact_notes_command(hive, "worker", "now please")
        answer = await web.compact_notes_command(hive, "worker", "")
        assert answer == f"worker: compacting notes.md ({len(LONG_NOTES)} bytes); the live log tells how it went"
        with pytest.raises(HyperhiveError, match="worker is already compacting its notes"):
            await web.compact_notes_command(hive, "worker", "")
        with trio.fail_after(60):
            started = await next_event(hive, "worker", "compaction.started")
            finished = await next_event(hive, "worker", "compaction.finished", after=started.id)
        assert (started.data["trigger"], started.data["before_bytes"]) == ("forced", len(LONG_NOTES))
        assert (finished.data["outcome"], finished.data["after_bytes"]) == ("ok", len(SHORT_NOTES))
        after = await page("/agent/worker/")
        assert f"{len(LONG_NOTES)} → {len(SHORT_NOTES)} bytes" in after
        assert [path.name for path in (await web.agent_panel(hive, "worker")).scripts if path.exists()] == [
            "compaction.js"
        ]
        host = await page("/")
        assert "notes.md is compacted once it grows past 99999 bytes (the threshold)." in host
        assert '<th scope="row">worker</th>' in host
        assert f"{len(LONG_NOTES)} → {len(SHORT_NOTES)} bytes" in host
        assert '<th scope="row">manager</th><td>-</td><td>no compaction yet</td>' in host

        # What a run recorded (its trigger, why it was undone) is shown as text, never as markup.
        def hostile_run(db):
            run_id = records.start_run(db, "manager", HOSTILE, "haiku", 10)
            records.finish_run(db, run_id, outcome=records.RESTORED, reason=HOSTILE)

        await hive.store.write(hostile_run)
        host = await page("/")
        escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
        assert f'<span class="error">restored</span>, {escaped}, ' in host
        assert f"</time>: {escaped}</td>" in host
        assert HOSTILE not in host


def test_no_daemon_is_a_clear_error(tmp_path, hyperhive, clean_env):
    config = tmp_path / "hyperhive.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')
    env = {**clean_env, "HYPERHIVE_CONFIG": str(config), "HYPERHIVE_LOAD_PLUGINS": "compaction"}
    done = subprocess.run([hyperhive, "compact-notes", "worker"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "the hive is not running" in done.stderr
    assert "hyperhive up" in done.stderr


# -- on the real dashboard ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "compaction"


def post(url: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def press_compact(url: str, token: str, done_text: str) -> dict:
    """Log in, press the panel's button on the worker's page, wait until the panel shows ``done_text``."""

    errors = []
    with dashboard_page(url, token, errors, timeout_ms=30_000) as page:
        page.goto(f"{url}/agent/worker/")
        panel = page.locator("#panel-compaction")
        before = panel.inner_text()
        wait_until(page, "() => window.hyperhive && window.hyperhive.live")
        panel.get_by_role("button", name="compact the notes now").click()
        # compaction.finished re-renders the panel with the run.
        wait_until(page, "text => document.querySelector('#panel-compaction').textContent.includes(text)", done_text)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#panel-compaction").screenshot(path=str(ARTIFACTS / "agent-panel.png"))
        after = page.locator("#panel-compaction").inner_text()
    return {"before": before, "after": after, "errors": errors}


@needs_claude
@pytest.mark.slow
async def test_slash_command_and_panel_button(make_pm, tmp_path):
    notes = notes_path(tmp_path)
    notes.parent.mkdir(parents=True)
    notes.write_text(LONG_NOTES)
    pm = make_pm(web=hyperhive_web, compaction=hyperhive_compaction)
    async with running_hive(
        tmp_path,
        pm,
        scenario(tmp_path, SHORT_NOTES),
        agents={"worker": {}},
        web={"port": 0},
        **compaction_config(threshold_bytes=99999),
    ) as hive:
        dashboard = dashboard_of(hive)
        url, token = dashboard.url, dashboard.token
        slash = f"{url}/-/web/agents/worker/slash"
        status, answer = await trio.to_thread.run_sync(post, slash, token, {"line": "/compact-notes"})
        assert status == 200, answer
        assert answer == {
            "command": "compact-notes",
            "text": f"worker: compacting notes.md ({len(LONG_NOTES)} bytes); the live log tells how it went",
        }
        with trio.fail_after(60):
            await next_event(hive, "worker", "compaction.finished")
        assert notes.read_text() == SHORT_NOTES
        notes.unlink()
        status, answer = await trio.to_thread.run_sync(post, slash, token, {"line": "/compact-notes"})
        assert (status, answer) == (400, {"error": f"worker has no notes to compact: {notes} is missing or empty"})

        if shutil.which("chromium") is None:
            pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
        pytest.importorskip("playwright", reason="pip install playwright (web's test extra)")
        notes.write_text(LONG_NOTES)
        with trio.fail_after(90):
            shown = await trio.to_thread.run_sync(press_compact, url, token, f"notes.md is {len(SHORT_NOTES)} bytes")
    assert shown["errors"] == []
    assert f"notes.md is {len(LONG_NOTES)} bytes" in shown["before"]
    assert f"{len(LONG_NOTES)} → {len(SHORT_NOTES)} bytes" in shown["after"]
    assert f"notes.md is {len(SHORT_NOTES)} bytes" in shown["after"]
