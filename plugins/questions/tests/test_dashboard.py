"""Questions on the real dashboard: the M1ND H4S QU3STI0NS section in Chromium, and POST /api/answer-question."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import hyperhive_questions
import hyperhive_web
import pytest
import trio
from hyperhive_web import dashboard_of

from hyperhive_core.testing import call_tool, dashboard_page, needs_claude, next_event, running_hive

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "questions"


def post(url: str, token: str, body: object) -> tuple[int, dict]:
    """A POST as a script sends it: JSON, and the operator token as a bearer token."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
async def hive(make_pm, tmp_path, asking_manager):
    pm = make_pm(web=hyperhive_web, questions=hyperhive_questions)
    async with running_hive(tmp_path, pm, asking_manager, web={"port": 0}) as running:
        yield running


async def test_hook_dashboard_panels(hive):
    """The section is always on the host page (so its script is), marked empty while nothing is pending."""
    url, token = f"{dashboard_of(hive).url}/-/web/panels/questions", dashboard_of(hive).token
    empty = await trio.to_thread.run_sync(get_json, url, token)
    assert (empty["placement"], empty["order"]) == ("top", 10)
    assert 'class="empty questions-none"' in empty["html"]
    await call_tool(hive, "manager", "ask_operator", question="<b>bold</b> & co?", options=["a <i>", "b"])
    shown = (await trio.to_thread.run_sync(get_json, url, token))["html"]
    assert "questions-none" not in shown
    assert "◆ M1ND H4S QU3STI0NS ◆" in shown
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co?" in shown  # escaped, never markup
    assert '<option value="a &lt;i&gt;">a &lt;i&gt;</option>' in shown
    assert 'data-body=\'{"id": 1, "cancel": true}\'' in shown


async def test_the_panel_escapes_a_hostile_question(hive):
    url, token = f"{dashboard_of(hive).url}/-/web/panels/questions", dashboard_of(hive).token
    hostile = "<script>alert(1)</script>"
    await call_tool(hive, "manager", "ask_operator", question=hostile, options=[hostile, "fine"])
    shown = (await trio.to_thread.run_sync(get_json, url, token))["html"]
    assert "<script>" not in shown
    assert (
        '<option value="&lt;script&gt;alert(1)&lt;/script&gt;">&lt;script&gt;alert(1)&lt;/script&gt;</option>' in shown
    )


async def test_answer_question_over_http(hive):
    url, token = f"{dashboard_of(hive).url}/api/answer-question", dashboard_of(hive).token
    first, _ = await call_tool(hive, "manager", "ask_operator", question="Ship it?", options=["yes", "no"])
    second, _ = await call_tool(hive, "manager", "ask_operator", question="Why?")
    first_id, second_id = int(first.split()[1]), int(second.split()[1])

    def exchange(body):
        return trio.to_thread.run_sync(post, url, token, body)

    assert await exchange({"id": first_id, "answer": "maybe"}) == (
        400,
        {"error": f"question {first_id} takes one of 'yes', 'no'; 'maybe' is not one of them"},
    )
    assert await exchange({"id": 99, "answer": "yes"}) == (
        400,
        {"error": "there is no question 99; `hyperhive questions` lists the pending ones"},
    )
    bad_body = (400, {"error": 'send a JSON object like {"id": 3, "answer": "yes"}, or {"id": 3, "cancel": true}'})
    assert await exchange(b"not json") == bad_body
    assert await exchange({"answer": "yes"}) == bad_body
    assert await exchange({"id": first_id}) == (
        400,
        {"error": 'give the "answer", or "cancel": true to withdraw the question'},
    )
    status, answered = await exchange({"id": first_id, "answer": "yes"})
    assert (status, answered["status"], answered["answer"]) == (200, "answered", "yes")
    status, cancelled = await exchange({"id": second_id, "cancel": True})
    assert (status, cancelled["status"], cancelled["answer"]) == (200, "cancelled", "[cancelled]")
    status, again = await exchange({"id": second_id, "answer": "because"})
    assert status == 400
    assert again["error"].startswith(f"question {second_id} is already cancelled")
    refused = await trio.to_thread.run_sync(post, url, "wrong-token", {"id": first_id, "answer": "no"})
    assert refused[0] == 401


@needs_claude
@pytest.mark.slow
async def test_the_operator_answers_on_the_dashboard_and_the_manager_reads_it(hive):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (web's test extra)")

    async def manager_asks() -> None:
        await hive.broker.send("operator", "manager", "please ask me something")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")

    async def ask_directly() -> int:
        text, is_error = await call_tool(hive, "manager", "ask_operator", question="Anything else?", ttl_seconds=600)
        assert not is_error, text
        return int(text.split()[1])

    def browse(url: str, token: str) -> dict:
        from playwright.sync_api import expect

        errors: list[str] = []
        seen: dict = {}
        with dashboard_page(url, token, errors) as page:
            page.wait_for_selector("#link.live")
            panel = page.locator("#panel-questions")
            seen["hidden_at_first"] = panel.count() == 1 and not panel.is_visible()

            trio.from_thread.run(manager_asks)  # arrives live: the section shows at the top
            panel.locator("select[name=answer]").wait_for()
            seen["title"] = panel.locator("h2").get_attribute("aria-label")
            seen["options"] = panel.locator("select[name=answer] option").all_inner_texts()
            free_text = trio.from_thread.run(ask_directly)
            draft = panel.locator(f'[data-question="{free_text}"] textarea')
            draft.fill("half-written")
            expect(panel.locator("time[data-countdown]").first).to_contain_text(":")  # the clock ticks
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            panel.screenshot(path=str(ARTIFACTS / "pending.png"))

            panel.locator("select[name=answer]").select_option("mauve")
            panel.get_by_role("button", name="send the answer to question 1").click()
            page.get_by_text("answered question 1; the manager has it").wait_for()
            panel.locator('[data-question="1"]').wait_for(state="detached")
            seen["draft_kept"] = draft.input_value()

            cancel = panel.get_by_role("button", name=f"cancel question {free_text}")
            cancel.click()
            seen["armed"] = cancel.inner_text()
            cancel.click()
            panel.wait_for(state="hidden")
            page.screenshot(path=str(ARTIFACTS / "answered.png"), full_page=True)
        return {"errors": errors, **seen}

    with trio.fail_after(120):
        shown = await trio.to_thread.run_sync(browse, dashboard_of(hive).url, dashboard_of(hive).token)
        reply = await next_event(hive, "manager", "message_sent", lambda e: e.data["to"] == "operator")
    assert reply.data["preview"] == "you chose mauve for 1"
    assert shown == {
        "errors": [],
        "hidden_at_first": True,
        "title": "questions from the manager that wait for your answer",
        "options": ["choose…", "amber", "mauve"],
        "draft_kept": "half-written",
        "armed": "sure? CANC3L",
    }
    resolved = [e.data for e in await hive.events.history("manager") if e.type == "questions.resolved"]
    assert [(r["id"], r["status"]) for r in resolved] == [(1, "answered"), (2, "cancelled")]
