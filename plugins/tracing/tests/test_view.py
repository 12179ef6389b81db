"""The trace view on the real dashboard: the JSON, the pages, the panels, and the waterfall in Chromium."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import hyperhive_tracing
import hyperhive_web
import pytest
import trio
from hyperhive_tracing.store import SpanRecord, recent_traces, save_spans, trace_spans
from hyperhive_tracing.view import publish_turn_link
from hyperhive_web import dashboard_of

from hyperhive_core.testing import Script, needs_claude, next_event, running_hive, wait_until

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "tracing"
MS = 1_000_000
WORK = "a" * 32  # the operator's request, finished
LATER = "b" * 32  # a second piece of work, still open
HOSTILE = "<script>alert(1)</script>"
SPAN = {  # a readable name for each span id
    "root": "1000000000000001",
    "m_turn": "1000000000000002",
    "m_model": "1000000000000003",
    "m_send": "1000000000000004",
    "w_turn": "1000000000000005",
    "w_bash": "1000000000000006",
    "w_read": "1000000000000007",
    "m_question": "1000000000000008",
    "m_approval": "1000000000000009",
    "scout": "100000000000000a",
    "later_root": "200000000000000b",
    "later_turn": "200000000000000c",
}
NAME_OF = {span_id: name for name, span_id in SPAN.items()}


def spans(base_ns: int) -> list[SpanRecord]:
    """The operator asks the manager; it asks the worker (which runs Bash and Read), asks the
    operator a question and waits on an approval that overlaps it; a scout's turn whose parent
    was never stored; and a later trace whose turn is still running, linked to the first."""

    def span(name: str, parent: str | None, kind: str, agent: str, start: int, end: int | None, **more: Any):
        trace = LATER if name.startswith("later") else WORK
        return SpanRecord(
            span_id=SPAN[name],
            trace_id=trace,
            parent_id=SPAN.get(parent or "", "ffffffffffffffff" if parent else None),
            name=more.pop("label", f"{kind} {agent}"),
            kind=kind,
            agent=agent,
            host="",
            start_ns=base_ns + start * MS,
            end_ns=None if end is None else base_ns + end * MS,
            status="open" if end is None else more.pop("status", "ok"),
            waits_on_person=kind in ("question", "approval"),
            **more,
        )

    return [
        span("root", None, "message", "operator", 0, 5, label="message operator→manager"),
        span("m_turn", "root", "turn", "manager", 100, 5000,
             attributes={"turn_key": "1", "exit": "ok"},
             links=[{"trace_id": LATER, "span_id": SPAN["later_turn"]}]),
        span("m_model", "m_turn", "model", "manager", 150, 900, label="model claude-sonnet", cost_usd=0.02,
             input_tokens=1200, output_tokens=300),
        span("m_send", "m_turn", "send", "manager", 1000, 1010, label="send manager→worker"),
        span("w_turn", "m_send", "turn", "worker", 1100, 9000, cost_usd=0.05, input_tokens=800, output_tokens=90),
        span("w_bash", "w_turn", "tool", "worker", 1200, 2000, label="tool Bash", status="error",
             attributes={"command": HOSTILE}),
        span("w_read", "w_turn", "tool", "worker", 2100, 8800, label="tool Read"),
        span("m_question", "m_turn", "question", "manager", 1500, 4000, label="question"),
        span("m_approval", "m_turn", "approval", "manager", 3000, 4500, label="approval spawn scout"),
        span("scout", "missing", "turn", "scout", 2000, 3000),
        span("later_root", None, "message", "operator", 50_000, 50_001, label="message operator→worker"),
        span("later_turn", "later_root", "turn", "worker", 50_100, None,
             links=[{"trace_id": WORK, "span_id": SPAN["w_read"]}]),
    ]  # fmt: skip


ROWS = ["root", "m_turn", "m_model", "m_send", "w_turn", "w_bash", "w_read", "m_question", "m_approval", "scout"]
DEPTHS = [0, 1, 2, 2, 3, 4, 4, 2, 2, 1]
CRITICAL = ["root", "m_turn", "m_send", "w_turn", "w_read"]


def get(url: str, token: str | None) -> tuple[int, str, str]:
    """A GET as a script sends it: the operator token as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
async def hive(make_pm, tmp_path):
    pm = make_pm(web=hyperhive_web, tracing=hyperhive_tracing)
    script = Script()
    script.otherwise("ok")
    async with running_hive(tmp_path, pm, script, agents={"worker": {}}, web={"port": 0}) as running:
        await save_spans(running, spans(time.time_ns() - 60_000 * MS))
        yield running


async def fetch(hive, path: str, token: str | None = "") -> tuple[int, str, str]:
    dashboard = dashboard_of(hive)
    return await trio.to_thread.run_sync(get, f"{dashboard.url}{path}", dashboard.token if token == "" else token)


async def test_the_trace_as_json(hive):
    status, kind, body = await fetch(hive, f"/-/tracing/api/trace/{WORK}")
    assert (status, kind) == (200, "application/json")
    trace = json.loads(body)
    assert [NAME_OF[span["span_id"]] for span in trace["spans"]] == ROWS
    assert [span["depth"] for span in trace["spans"]] == DEPTHS
    assert [NAME_OF[span_id] for span_id in trace["critical_path"]] == CRITICAL
    assert [span["orphan"] for span in trace["spans"]] == [name == "scout" for name in ROWS]
    assert trace["duration_ns"] == 9000 * MS
    assert trace["person_wait_ns"] == 3000 * MS  # 1.5 s to 4.5 s: the question and the approval overlap
    assert round(trace["total_cost_usd"], 6) == 0.07
    assert {agent: round(cost, 6) for agent, cost in trace["cost_by_agent"].items()} == {
        "manager": 0.02,
        "worker": 0.05,
    }
    assert [(NAME_OF[b["span_id"]], round(b["cost_usd"], 6)) for b in trace["branches"]] == [
        ("m_turn", 0.07),
        ("scout", 0.0),
    ]
    assert not trace["open"]

    later = json.loads((await fetch(hive, f"/-/tracing/api/trace/{LATER}"))[2])
    assert later["open"]
    assert later["spans"][1]["end_ns"] is None
    assert later["spans"][1]["drawn_end_ns"] > later["spans"][1]["start_ns"]  # drawn to now

    status, _, body = await fetch(hive, "/-/tracing/api/traces?limit=1")
    assert status == 200
    assert [(t["trace_id"], t["open"]) for t in json.loads(body)["traces"]] == [(LATER, True)]
    status, _, body = await fetch(hive, "/-/tracing/api/traces?agent=scout")
    assert [t["trace_id"] for t in json.loads(body)["traces"]] == [WORK]


async def test_what_a_wrong_request_is_told(hive):
    status, _, body = await fetch(hive, "/-/tracing/api/trace/nope")
    assert (status, json.loads(body)) == (
        400,
        {"error": "'nope' is not a trace id: a trace id is 32 lowercase hex digits, as /-/tracing/ lists them"},
    )
    status, _, body = await fetch(hive, f"/-/tracing/api/trace/{'c' * 32}")
    assert status == 404
    assert json.loads(body)["error"] == (
        f"no trace {'c' * 32} is stored (it may be older than [tracing] retention); /-/tracing/ lists them"
    )
    for limit in ("0", "501", "ten"):
        status, _, body = await fetch(hive, f"/-/tracing/api/traces?limit={limit}")
        assert (status, json.loads(body)) == (
            400,
            {"error": f"limit must be a whole number from 1 to 500, not {limit!r}"},
        )
    status, kind, body = await fetch(hive, f"/-/tracing/trace/{'c' * 32}")
    assert (status, kind) == (404, "text/html; charset=utf-8")
    assert "/-/tracing/ lists them" in body
    status, kind, body = await fetch(hive, "/-/tracing/trace/NOPE")
    assert (status, kind) == (400, "text/html; charset=utf-8")
    assert "&#39;NOPE&#39; is not a trace id" in body
    status, kind, body = await fetch(hive, "/-/tracing/?limit=-1")
    assert (status, kind) == (400, "text/html; charset=utf-8")
    assert "limit must be a whole number from 1 to 500, not &#39;-1&#39;" in body
    status, _, body = await fetch(hive, "/-/tracing/static/evil.js")
    assert (status, json.loads(body)) == (404, {"error": "no tracing asset 'evil.js'; there are trace.js, tracing.css"})
    status, kind, _ = await fetch(hive, "/-/tracing/static/trace.js")
    assert (status, kind.split(";")[0]) == (200, "text/javascript")
    assert (await fetch(hive, f"/-/tracing/api/trace/{WORK}", token=None))[0] == 401
    assert (await fetch(hive, "/-/tracing/", token=None))[0] == 401


async def test_the_page_escapes_what_spans_carry(hive):
    status, _, body = await fetch(hive, f"/-/tracing/trace/{WORK}")
    assert status == 200
    assert HOSTILE not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script" not in body.replace('<script src="/-/tracing/static/trace.js" defer></script>', "")


async def test_hook_dashboard_panels_recent_traces(hive):
    status, _, body = await fetch(hive, "/-/web/panels/tracing")
    assert status == 200
    html = json.loads(body)["html"]
    assert "◆ TR4C3S ◆" in html
    assert html.index("message operator→worker") < html.index("message operator→manager")  # newest first
    assert f'href="/-/tracing/trace/{WORK}"' in html
    assert "$0.0700" in html


async def test_hook_agent_panels_lists_the_agents_traces(hive):
    await save_spans(
        hive,
        [
            SpanRecord(
                span_id="300000000000000d",
                trace_id="d" * 32,
                parent_id=None,
                name="message operator→manager",
                kind="message",
                agent="operator",
                host="",
                start_ns=time.time_ns(),
                end_ns=time.time_ns(),
                status="ok",
            )
        ],
    )
    html = json.loads((await fetch(hive, "/-/web/agents/worker/panels/tracing"))[2])["html"]
    assert f"/-/tracing/trace/{WORK}" in html
    assert f"/-/tracing/trace/{LATER}" in html
    assert "d" * 32 not in html  # the worker took no part in it
    assert 'href="/-/tracing/?agent=worker"' in html


def look_at_the_waterfall(page: Any, base: str) -> dict[str, Any]:
    """The host page's panel, the trace page at a desktop's width and a phone's, a tap on a span."""
    seen: dict[str, Any] = {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    panel = page.locator("#panel-tracing")
    panel.wait_for()
    seen["panel"] = list(
        zip(
            panel.locator(".tracing-head a").all_inner_texts(),
            panel.locator(".tracing-head .badge").all_inner_texts(),
            panel.locator(".tracing-facts .cost").all_inner_texts(),
            strict=True,
        )
    )
    panel.screenshot(path=str(ARTIFACTS / "panel.png"))
    panel.locator(f'a[href="/-/tracing/trace/{WORK}"]').click()
    page.wait_for_selector(".wf-rows")
    seen["rows"] = page.eval_on_selector_all(
        ".wf-row",
        """rows => rows.map(row => ({
            id: row.dataset.span,
            indent: parseFloat(getComputedStyle(row.querySelector('.wf-label')).paddingLeft),
            critical: row.classList.contains('critical'),
            person: row.classList.contains('person'),
            orphan: row.classList.contains('orphan'),
            left: row.querySelector('.wf-bar').getBoundingClientRect().left,
            width: row.querySelector('.wf-bar').getBoundingClientRect().width,
        }))""",
    )
    seen["lane"] = page.eval_on_selector_all(
        ".wf-lane .wf-bar",
        "bars => bars.map(bar => [bar.getBoundingClientRect().left, bar.getBoundingClientRect().right])",
    )
    seen["figures"] = {
        key: page.locator(f'[data-figure="{key}"]').inner_text()
        for key in ("duration", "cost", "person-wait", "critical-path", "total-cost", "state")
    }
    seen["branches"] = page.locator(".trace-costs.branches tbody tr").all_inner_texts()
    page.screenshot(path=str(ARTIFACTS / "trace-desktop.png"), full_page=True)

    page.locator(f"#span-{SPAN['w_bash']} .wf-label").click()
    detail = page.locator(f"#detail-{SPAN['w_bash']}")
    detail.wait_for(state="visible")
    seen["detail"] = detail.inner_text()
    seen["address"] = page.evaluate("location.hash")
    page.screenshot(path=str(ARTIFACTS / "trace-detail.png"))
    page.locator(f"#span-{SPAN['m_turn']} .wf-label").click()
    seen["one_open"] = page.eval_on_selector_all(".wf-detail", "ds => ds.filter(d => !d.hidden).length")
    # The link to a span of the later trace opens that trace at that span.
    page.locator(f"#detail-{SPAN['m_turn']} a[href*='{LATER}']").click()
    page.wait_for_selector(f"#detail-{SPAN['later_turn']}:not([hidden])")
    seen["linked"] = page.locator(f"#detail-{SPAN['later_turn']}").inner_text()

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/-/tracing/trace/{WORK}#span-{SPAN['w_read']}")
    page.wait_for_selector(f"#detail-{SPAN['w_read']}:not([hidden])")
    wait_until(page, "() => document.fonts.status === 'loaded'")
    seen["phone"] = page.evaluate(
        """() => {
            const box = document.querySelector('.waterfall');
            return {
                page: document.documentElement.scrollWidth,
                view: window.innerWidth,
                box_scrolls: box.scrollWidth > box.clientWidth,
                box_fits: box.getBoundingClientRect().right <= window.innerWidth,
            };
        }"""
    )
    page.screenshot(path=str(ARTIFACTS / "trace-phone.png"), full_page=True)
    page.goto(f"{base}/-/tracing/")
    page.wait_for_selector(".tracing-list")
    seen["phone_list"] = page.evaluate("() => document.documentElement.scrollWidth")
    page.screenshot(path=str(ARTIFACTS / "list-phone.png"), full_page=True)
    page.goto(f"{base}/")
    page.wait_for_selector("#panel-tracing")
    seen["phone_host"] = page.evaluate("() => document.documentElement.scrollWidth")
    return seen


async def test_the_waterfall_in_chromium(hive, chromium):
    errors: list[str] = []
    page = await chromium.dashboard(hive, "/", errors)
    seen = await chromium.run(look_at_the_waterfall, page, dashboard_of(hive).url)

    assert seen["panel"] == [
        ("message operator→worker", "open", "$0.0000"),
        ("message operator→manager", "finished", "$0.0700"),
    ]
    rows = seen["rows"]
    assert [NAME_OF[row["id"]] for row in rows] == ROWS
    indents = [row["indent"] for row in rows]
    assert [round((indent - indents[0]) / 12) for indent in indents] == DEPTHS  # 12 px a level
    assert [NAME_OF[row["id"]] for row in rows if row["critical"]] == CRITICAL
    assert [NAME_OF[row["id"]] for row in rows if row["person"]] == ["m_question", "m_approval"]
    assert [NAME_OF[row["id"]] for row in rows if row["orphan"]] == ["scout"]
    by_name = {NAME_OF[row["id"]]: row for row in rows}
    # One time axis: the worker's turn starts after the send and ends last, the widest after the root's turn.
    assert by_name["m_send"]["left"] < by_name["w_turn"]["left"] < by_name["w_bash"]["left"]
    assert by_name["w_turn"]["left"] + by_name["w_turn"]["width"] == pytest.approx(
        max(row["left"] + row["width"] for row in rows), abs=1
    )
    # The person's time is one stretch on the axis: from the question's start to the approval's end.
    question, approval = by_name["m_question"], by_name["m_approval"]
    assert seen["lane"] == [
        [pytest.approx(question["left"], abs=1), pytest.approx(approval["left"] + approval["width"], abs=1)]
    ]
    assert seen["figures"] == {
        "duration": "9.0s",
        "cost": "$0.0700",
        "person-wait": "3.0s (33%)",
        "critical-path": "message operator→manager → turn manager → send manager→worker → turn worker → tool Read",
        "total-cost": "$0.0700",
        "state": "finished",
    }
    assert seen["branches"] == [
        "turn manager\tmanager, worker\t2000 / 390\t$0.0700",
        "turn scout\tscout\t0 / 0\t$0.0000",
    ]
    assert "command\n<script>alert(1)</script>" in seen["detail"]  # shown as text
    assert "error" in seen["detail"]
    assert seen["address"] == f"#span-{SPAN['w_bash']}"
    assert seen["one_open"] == 1
    assert "turn worker" in seen["linked"]
    assert seen["phone"] == {"page": 390, "view": 390, "box_scrolls": True, "box_fits": True}
    assert seen["phone_list"] == 390
    assert seen["phone_host"] <= 390
    assert errors == []


def read_the_tail(page: Any) -> list[dict[str, str]]:
    page.wait_for_selector("#link.live")
    wait_until(page, "() => document.querySelector('#tail .ev a[href^=\"/-/tracing/\"]')")
    page.locator("#tail").screenshot(path=str(ARTIFACTS / "tail-link.png"))
    return page.eval_on_selector_all(
        "#tail .ev a", "links => links.map(a => ({href: a.getAttribute('href'), text: a.closest('.ev').innerText}))"
    )


async def test_a_turn_in_the_tail_links_to_its_trace(hive, chromium):
    publish_turn_link(hive, "worker", LATER, SPAN["later_turn"])
    # Only a path on the dashboard becomes a link.
    hive.events.publish("worker", "tracing.turn", text="elsewhere", link={"href": "//evil.example/", "label": "x"})
    errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = await chromium.dashboard(hive, "/agent/worker/", errors)
    links = await chromium.run(read_the_tail, page)
    assert [link["href"] for link in links] == [f"/-/tracing/trace/{LATER}#span-{SPAN['later_turn']}"]
    assert "trace bbbbbbbb" in links[0]["text"]

    def follow() -> str:
        page.locator("#tail .ev a").click()
        page.wait_for_selector(f"#detail-{SPAN['later_turn']}:not([hidden])")
        return page.locator(f"#detail-{SPAN['later_turn']}").inner_text()

    assert "turn worker" in await chromium.run(follow)

    def on_a_phone() -> dict[str, int]:
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(page.url.split("/-/")[0] + "/agent/worker/")
        panel = page.locator("#panel-tracing")
        panel.wait_for()
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(ARTIFACTS / "agent-panel-phone.png"))
        return page.evaluate(
            "() => { const p = document.querySelector('#panel-tracing'); return [p.scrollWidth, p.clientWidth]; }"
        )

    width, fits = await chromium.run(on_a_phone)
    assert width <= fits <= 390
    assert errors == []


CONVERSATION = """
[[agents.manager.rules]]
when = "from operator"
steps = [
  { tool = "send", input = { to = "worker", body = "please report" } },
  { text = "asked the worker" },
]

[[agents.worker.rules]]
when = "please report"
steps = [
  { tool = "Read", input = { file_path = "/etc/hostname" } },
  { text = "done" },
]
"""


def follow_the_tail(page: Any) -> dict[str, Any]:
    """From the worker's tail to its turn's trace: the waterfall as the conversation drew it."""
    page.wait_for_selector('#tail .ev a[href^="/-/tracing/trace/"]')
    page.locator('#tail .ev a[href^="/-/tracing/trace/"]').first.click()
    page.wait_for_selector(".wf-detail:not([hidden])")  # the link opens the worker's turn
    page.screenshot(path=str(ARTIFACTS / "conversation.png"), full_page=True)
    return {
        "opened": page.locator(".wf-detail:not([hidden]) header strong").inner_text(),
        "rows": page.eval_on_selector_all(
            ".wf-row",
            """rows => rows.map(row => [
                row.querySelector('.wf-name').textContent,
                Number(row.dataset.depth),
                row.classList.contains('critical'),
            ])""",
        ),
    }


@needs_claude
@pytest.mark.slow
async def test_a_conversation_from_the_tail_to_its_waterfall(make_pm, tmp_path, chromium):
    pm = make_pm(web=hyperhive_web, tracing=hyperhive_tracing)
    async with running_hive(tmp_path, pm, CONVERSATION, agents={"worker": {}}, web={"port": 0}) as hive:
        await hive.broker.send("operator", "manager", "how is the worker?")
        with trio.fail_after(90):
            await next_event(hive, "worker", "turn_end")
            while not (traces := await recent_traces(hive, 5)) or traces[0].open:
                await trio.sleep(0.1)  # the spans are written just after the turn ends
        errors: list[str] = []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page = await chromium.dashboard(hive, "/agent/worker/", errors)
        seen = await chromium.run(follow_the_tail, page)

    assert seen["opened"] == "turn worker"
    rows = {name: (depth, critical) for name, depth, critical in seen["rows"]}
    assert seen["rows"][0] == ["message operator→manager", 0, True]
    assert rows["turn manager"][0] == 1
    assert rows["send manager→worker"][0] == 2
    assert rows["turn worker"] == (3, True)  # the worker's turn continues the send, and ends last
    assert rows["tool Read"][0] == 4
    assert errors == []


async def test_an_open_trace_and_the_panel_follow_the_work(hive, chromium):
    errors: list[str] = []
    turn = SPAN["later_turn"]
    page = await chromium.dashboard(hive, f"/-/tracing/trace/{LATER}#span-{turn}", errors)

    def opened() -> dict[str, Any]:
        page.wait_for_selector(f"#detail-{turn}:not([hidden])")
        return {
            "state": page.locator('[data-figure="state"]').inner_text(),
            "parent": page.locator(f"#detail-{turn} a[href='#span-{SPAN['later_root']}']").inner_text(),
        }

    assert await chromium.run(opened) == {"state": "open", "parent": "message operator→worker"}
    running = next(span for span in await trace_spans(hive, LATER) if span.span_id == turn)
    await save_spans(hive, [replace(running, end_ns=running.start_ns + 2000 * MS, status="ok")])

    def finished() -> dict[str, Any]:
        wait_until(page, "() => document.querySelector('[data-figure=\"state\"]').textContent === 'finished'")
        return {
            "duration": page.locator('[data-figure="duration"]').inner_text(),
            "still_shown": page.locator(f"#detail-{turn}").is_visible(),
        }

    assert await chromium.run(finished) == {"duration": "2.1s", "still_shown": True}  # from the root

    host = await chromium.dashboard(hive, "/", errors)
    await chromium.run(lambda: host.wait_for_selector("#link.live"))
    fresh = "e" * 32
    now = time.time_ns()
    await save_spans(
        hive,
        [
            SpanRecord(
                "400000000000000e", fresh, None, "message operator→scout", "message", "operator", "", now, now, "ok"
            )
        ],
    )
    publish_turn_link(hive, "worker", fresh, "400000000000000e")
    await chromium.run(
        wait_until,
        host,
        "() => document.querySelector('#panel-tracing a[href=\"/-/tracing/trace/' + 'e'.repeat(32) + '\"]')",
    )
    assert errors == []
