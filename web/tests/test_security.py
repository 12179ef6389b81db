"""Who may use the dashboard: login, sessions, CSRF, Origin, Host, websockets, and agents' own code."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import textwrap
from typing import Any
from urllib.parse import quote, urlsplit

import hyperhive_questions
import hyperhive_web
import pytest
import trio
from hyperhive_web import dashboard_of
from test_auth import HOSTILE_NEXT, NOBODY
from webkit import Http, browser_session, dashboard_hive, fork_as, operator

from hyperhive_core.testing import needs_claude

pytestmark = needs_claude

INJECTION = "--dangerously-skip-permissions"
OTHER_PORT = "http://127.0.0.1:9"  # an agent's own web server on this host: same site, other origin


async def test_without_a_session_api_calls_get_401_and_pages_go_to_login(hive):
    anonymous = Http(dashboard_of(hive).url)
    with trio.fail_after(10):
        api = await anonymous.get("/api/state")
        agent_api = await anonymous.get("/api/agents/worker/inbox")
        stream = await anonymous.get("/api/events")
        post = await anonymous.post("/api/spawn", {"name": "intruder"}, headers={"Origin": dashboard_of(hive).url})
        page = await anonymous.get("/agent/worker/")
        home = await anonymous.get("/")
    for reply in (api, agent_api, stream, post):
        assert reply.status == 401
        assert "log in first" in reply.json()["error"]
    assert (page.status, page.headers["location"]) == (303, "/login?next=/agent/worker/")
    assert home.status == 303
    assert "intruder" not in hive.agents


async def test_login_trades_the_token_for_a_strict_httponly_cookie(hive):
    anonymous = Http(dashboard_of(hive).url)
    with trio.fail_after(10):
        wrong = await anonymous.get("/login?token=guess")
        right = await anonymous.get(f"/login?token={dashboard_of(hive).token}&next=/agent/worker/")
        offsite = await anonymous.get(f"/login?token={dashboard_of(hive).token}&next=//evil.example/")
        form = await anonymous.get("/login")
    assert wrong.status == 401
    assert "not this hive" in wrong.body.decode()
    assert right.status == 303
    assert right.headers["location"] == "/agent/worker/"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"hyperhive_session_{dashboard_of(hive).port}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert offsite.headers["location"] == "/"
    assert form.status == 200
    assert 'name="token"' in form.body.decode()


async def test_the_token_file_is_private(hive):
    path = hive.paths.root / "web" / "operator-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == dashboard_of(hive).token
    assert len(dashboard_of(hive).token) >= 40


async def test_state_changes_need_the_csrf_token_and_the_dashboards_own_origin(hive):
    browser, csrf = await browser_session(hive)
    body = {"body": "hello"}
    with trio.fail_after(20):
        no_csrf = await browser.post("/api/agents/worker/messages", body)
        wrong_csrf = await browser.post("/api/agents/worker/messages", body, headers={"X-CSRF-Token": "0" * 64})
        cross_origin = await browser.post(
            "/api/agents/worker/messages",
            body,
            headers={"X-CSRF-Token": csrf, "Origin": OTHER_PORT, "Sec-Fetch-Site": "same-site"},
        )
        same_site = await browser.post(
            "/api/agents/worker/messages", body, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"}
        )
        unmarked = await browser.post(
            "/api/agents/worker/messages",
            body,
            headers={"X-CSRF-Token": csrf, "Origin": None, "Sec-Fetch-Site": None},
        )
        ok = await browser.post("/api/agents/worker/messages", body, headers={"X-CSRF-Token": csrf})
    assert no_csrf.status == wrong_csrf.status == 403
    assert "X-CSRF-Token" in no_csrf.json()["error"]
    assert cross_origin.status == 403
    assert "cross-origin request from http://127.0.0.1:9 refused" in cross_origin.json()["error"]
    assert same_site.status == 403
    assert unmarked.status == 403
    assert ok.status == 200, ok.body
    assert [m.body for m in await hive.broker.recent_for("worker")] == ["hello"]


async def test_reads_from_another_origin_are_refused_too(hive):
    browser, _ = await browser_session(hive)
    with trio.fail_after(10):
        stream = await browser.get("/api/events", headers={"Origin": OTHER_PORT})
        fetched = await browser.get("/api/agents/worker/inbox", headers={"Sec-Fetch-Site": "cross-site"})
        typed = await browser.get("/api/state", headers={"Origin": None, "Sec-Fetch-Site": "none"})
    assert stream.status == fetched.status == 403
    assert typed.status == 200


async def test_a_foreign_host_is_refused_even_with_the_token(hive):
    http = operator(hive)
    with trio.fail_after(10):
        rebinding = await http.get("/api/state", headers={"Host": f"attacker.example:{dashboard_of(hive).port}"})
        login = await Http(dashboard_of(hive).url).get(
            f"/login?token={dashboard_of(hive).token}", headers={"Host": "attacker.example"}
        )
        localhost = await http.get("/api/state", headers={"Host": f"localhost:{dashboard_of(hive).port}"})
    assert rebinding.status == login.status == 403
    assert "does not answer to host 'attacker.example" in rebinding.json()["error"]
    assert localhost.status == 200


async def test_allowed_hosts_extends_the_host_list(tmp_path, web_pm):
    async with dashboard_hive(tmp_path, web_pm, web={"allowed_hosts": ["hive.lan"]}) as hive:
        with trio.fail_after(10):
            reply = await operator(hive).get("/api/state", headers={"Host": "hive.lan"})
    assert reply.status == 200


async def test_a_wrong_bearer_token_is_refused(hive):
    with trio.fail_after(10):
        reply = await Http(dashboard_of(hive).url, {"Authorization": "Bearer nope"}).get("/api/state")
    assert reply.status == 401


async def test_security_headers(hive):
    with trio.fail_after(10):
        reply = await operator(hive).get("/api/state")
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert "script-src 'self';" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["cache-control"] == "no-store"


async def test_a_websocket_from_a_foreign_origin_is_refused(hive):
    browser, csrf = await browser_session(hive)
    path = "/-/web/agents/worker/terminal?csrf="
    with trio.fail_after(20):
        foreign = await browser.websocket_handshake(path + csrf, {"Origin": OTHER_PORT})
        no_csrf = await browser.websocket_handshake(path + "wrong")
        no_session = await Http(dashboard_of(hive).url).websocket_handshake(
            path + csrf, {"Origin": dashboard_of(hive).url}
        )
        ours = await browser.websocket_handshake(path + csrf)
    assert (foreign, no_csrf, no_session) == (403, 403, 401)
    assert ours == 101


# -- code inside an agent's sandbox ---------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import json, sys, urllib.error, urllib.request
    base, token_path = sys.argv[1], sys.argv[2]
    results = {}
    def call(name, path, method="GET", data=None, headers={}):
        request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request) as reply:
                results[name] = [reply.status, reply.read().decode()[:200]]
        except urllib.error.HTTPError as error:
            results[name] = [error.code, error.read().decode()[:200]]
        except urllib.error.URLError as error:
            results[name] = ["unreachable", str(error.reason)]
    call("state", "/api/state")
    call("worker_inbox", "/api/agents/worker/inbox")
    call("worker_page", "/agent/worker/")
    call("approve", "/api/approvals/1/approve", "POST", b"{}",
         {"Content-Type": "application/json", "Origin": base, "Sec-Fetch-Site": "same-origin"})
    call("guessed_login", "/login?token=guess")
    try:
        open(token_path).read()
        results["token_file"] = "read"
    except OSError as error:
        results["token_file"] = type(error).__name__
    print(json.dumps(results))
    """
)


@pytest.mark.slow
async def test_code_in_an_agents_sandbox_cannot_approve_or_read_another_agents_data(tmp_path, web_pm):
    if os.geteuid() != 0:
        pytest.skip("the bwrap backend needs root: it runs each agent as its own host uid")
    # Uids of their own, clear of a real hive's on this machine (61000 up) and of tests/test_bwrap.py's.
    bwrap = {"uid_range_start": 61960, "uid_range_size": 20}
    async with dashboard_hive(tmp_path, web_pm, hive={"container_backend": "bwrap"}, bwrap=bwrap) as hive:
        assert hive.backend.name == "bwrap"
        token_path = str(hive.paths.root / "web" / "operator-token")
        spec = hive.container_spec("worker")
        env = hive.session_env("worker", hive.backend.view(spec).state)
        argv = [sys.executable, "-I", "-c", PROBE, dashboard_of(hive).url, token_path]
        with trio.fail_after(60):
            process = await hive.backend.exec(spec, argv, env)
            output = b""
            while chunk := await process.stdout.receive_some():
                output += chunk
            errors = await process.stderr.receive_some() if process.stderr else b""
            assert await process.wait() == 0, errors
    results = json.loads(output)
    # The sandbox's network is its own: the host's loopback, and the dashboard on it, do not exist there.
    for name in ("state", "worker_inbox", "worker_page", "approve", "guessed_login"):
        assert results[name] == ["unreachable", "[Errno 111] Connection refused"], results
    assert results["token_file"] in ("FileNotFoundError", "PermissionError")


# -- request bodies -----------------------------------------------------------------------------

# Every route that reads a JSON body: the dashboard's own, and a plugin's (the questions plugin's contract route).
JSON_ROUTES = [
    "/api/approvals/1/approve",
    "/api/approvals/1/deny",
    "/api/agents/worker/messages",
    "/api/agents/worker/model",
    "/api/spawn",
    "/api/agents/worker/destroy",
    "/-/web/agents/worker/slash",
    "/api/answer-question",
]


@pytest.fixture
async def questions_hive(tmp_path, make_pm):
    async with dashboard_hive(tmp_path, make_pm(web=hyperhive_web, questions=hyperhive_questions)) as hive:
        yield hive


async def test_json_nested_too_deep_is_a_400_on_every_route_that_reads_json(questions_hive):
    hive = questions_hive
    browser, csrf = await browser_session(hive)
    deep = b"[" * 100_000 + b"]" * 100_000
    shallow_but_over = b'{"body": ' + b"[" * 65 + b"]" * 65 + b"}"
    json_header = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    with trio.fail_after(60):
        replies = {
            (route, len(body)): await browser.request("POST", route, body=body, headers=json_header)
            for route in JSON_ROUTES
            for body in (deep, shallow_but_over)
        }
    for (route, size), reply in replies.items():
        assert reply.status == 400, (route, size, reply.body)
        assert reply.json()["error"].startswith("the JSON body nests deeper than 64 levels"), (route, reply.body)
    assert [m.body for m in await hive.broker.recent_for("worker")] == []  # nothing half-done
    assert "worker" in hive.agents


async def test_a_body_over_4_mib_is_refused_with_413(hive):
    """Refused on its Content-Length, before the body is read: so the client sends none, and reads the answer."""
    browser, csrf = await browser_session(hive)
    cookie, web = browser.headers["Cookie"], dashboard_of(hive)
    head = (
        f"POST /api/agents/worker/messages HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\nCookie: {cookie}\r\n"
        f"Origin: {web.url}\r\nX-CSRF-Token: {csrf}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {4 * 1024 * 1024 + 1}\r\n\r\n"
    )
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", dashboard_of(hive).port)
        async with stream:
            await stream.send_all(head.encode())
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = await stream.receive_some(65536)
                assert chunk, answer
                answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"413", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert await hive.broker.recent_for("worker") == []


# -- model names ------------------------------------------------------------------------------------


async def test_the_dashboard_refuses_a_model_that_is_not_one(hive):
    browser, csrf = await browser_session(hive)
    headers = {"X-CSRF-Token": csrf}
    with trio.fail_after(20):
        route = await browser.post("/api/agents/worker/model", {"model": INJECTION}, headers=headers)
        slash = await browser.post("/-/web/agents/worker/slash", {"line": f"/model {INJECTION}"}, headers=headers)
        unknown = await browser.post("/-/web/agents/worker/slash", {"line": "/model gpt-4o"}, headers=headers)
        fine = await browser.post("/-/web/agents/worker/slash", {"line": "/model opus"}, headers=headers)
    for reply in (route, slash):
        assert reply.status == 400, reply.body
        assert f"model name '{INJECTION}' is not valid" in reply.json()["error"]
    assert unknown.status == 400
    assert (
        'To run another model, allow it in hyperhive.toml: [claude] extra_models = ["gpt-4o"]'
        in (unknown.json()["error"])
    )
    assert fine.status == 200, fine.body
    assert hive.agents.get("worker").status.model == "opus"
    assert (await hive.agents.stored())["worker"]["model_override"] == "opus"


# -- wrong tokens ----------------------------------------------------------------------------------------


async def test_wrong_tokens_get_429_with_retry_after_and_the_right_one_works_after(tmp_path, web_pm):
    # 12 a minute: a burst of 12, then one back every 5 s.
    async with dashboard_hive(tmp_path, web_pm, web={"token_failures_per_minute": 12}) as hive:
        anonymous = Http(dashboard_of(hive).url)
        right_bearer = operator(hive)
        with trio.fail_after(60):
            wrong = []
            while len(wrong) < 50 and (not wrong or wrong[-1].status == 401):
                wrong.append(await anonymous.get(f"/login?token=guess-{len(wrong)}"))
            locked = wrong.pop()
            right_while_locked = await anonymous.get(f"/login?token={dashboard_of(hive).token}")
            bearer_while_locked = await right_bearer.get("/api/state")
            await trio.sleep(int(locked.headers["retry-after"]))
            right_after = await anonymous.get(f"/login?token={dashboard_of(hive).token}")
            bearer_after = await right_bearer.get("/api/state")
        assert len(wrong) >= 12
        assert {reply.status for reply in wrong} == {401}
        assert locked.status == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 5
        assert f"too many wrong tokens from loopback uid {os.getuid()}; try again in" in locked.body.decode()
        assert right_while_locked.status == 429  # not even compared
        assert bearer_while_locked.status == 429
        assert 1 <= int(bearer_while_locked.headers["retry-after"]) <= 5
        assert bearer_while_locked.json()["error"].startswith(f"too many wrong tokens from loopback uid {os.getuid()}")
        assert right_after.status == 303
        assert bearer_after.status == 200


# A wrong bearer token, again and again, from another uid on this host: the statuses it got, one byte each.
def guess_tokens(port: int, attempts: int, out: int) -> None:
    for attempt in range(attempts):
        with socket.socket() as client:
            client.connect(("127.0.0.1", port))
            request = f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer guess{attempt}\r\n"
            client.sendall((request + "Connection: close\r\n\r\n").encode())
            status = client.recv(64).split(b" ")[1]
        os.write(out, b"L" if status == b"429" else b"4" if status == b"401" else b"?")
        if status == b"429":
            return


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the guesser runs as another uid")
async def test_another_uids_wrong_tokens_never_lock_the_operator_out(tmp_path, web_pm):
    """An agent guessing tokens (its own uid) runs out of attempts alone; the operator's uid keeps its own."""
    async with dashboard_hive(tmp_path, web_pm, web={"token_failures_per_minute": 5}) as hive:
        statuses, out = os.pipe()
        pid = fork_as(NOBODY, lambda: guess_tokens(dashboard_of(hive).port, 50, out))
        os.close(out)
        with trio.fail_after(60):
            _, code = await trio.to_thread.run_sync(os.waitpid, pid, 0)
            seen = await trio.to_thread.run_sync(os.read, statuses, 100)
            login = await Http(dashboard_of(hive).url).get(f"/login?token={dashboard_of(hive).token}")
            bearer = await operator(hive).get("/api/state")
        os.close(statuses)
        assert code == 0
        assert seen == b"44444L"  # five wrong tokens, then locked
        assert dashboard_of(hive).limiter.remaining(f"loopback uid {NOBODY}") == 0
        assert login.status == 303
        assert bearer.status == 200
        assert dashboard_of(hive).limiter.remaining(f"loopback uid {os.getuid()}") == 5


# -- where the browser goes after login ---------------------------------------------------------


async def test_a_page_asked_for_before_login_comes_back_through_the_same_check(hive):
    anonymous = Http(dashboard_of(hive).url)
    with trio.fail_after(10):
        query = await anonymous.get("/agent/worker/?tab=inbox&x=1")
        back = await anonymous.get(f"/login?token={dashboard_of(hive).token}&next=/agent/worker/%3Ftab%3Dinbox%26x%3D1")
        offsite = await anonymous.get(f"/login?token={dashboard_of(hive).token}&next=/%5Cevil.example/")
    assert (query.status, query.headers["location"]) == (303, "/login?next=/agent/worker/%3Ftab%3Dinbox%26x%3D1")
    assert (back.status, back.headers["location"]) == (303, "/agent/worker/?tab=inbox&x=1")
    assert (offsite.status, offsite.headers["location"]) == (303, "/")


@pytest.mark.slow
async def test_no_hostile_next_takes_chromium_off_the_dashboard(hive, browser):
    """Chromium's own URL parsing decides where a Location goes: it must stay on the dashboard."""
    from playwright.sync_api import Error as PlaywrightError

    page = await browser.page()
    own = urlsplit(dashboard_of(hive).url)
    # Each hostile target percent-encoded into the query, and a few as typed, unencoded:
    # Chromium strips tabs and newlines from a URL itself.
    queries = [quote(target, safe="") for target in HOSTILE_NEXT]
    queries += ["//evil.example/", "/\\evil.example/", "/\t/evil.example/", "/\n/evil.example/", "\\\\evil.example"]

    def land(query: str) -> tuple[str, list[str]]:
        """Log in with ``next`` as this raw query text: where the page ends, and every URL it asked for."""
        asked: list[str] = []

        def record(request: Any) -> None:
            asked.append(request.url)

        page.on("request", record)
        try:
            page.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}&next={query}")
        except PlaywrightError:  # how an off-site navigation ends here: nothing resolves evil.example
            pass
        finally:
            page.remove_listener("request", record)
        return page.url, asked

    def steps() -> dict[str, tuple[str, list[str]]]:
        return {query: land(query) for query in [*queries, quote("/agent/worker/", safe="")]}

    with trio.fail_after(240):
        landings = await browser.run(steps)
    assert len(landings) == len(HOSTILE_NEXT) + 6
    for query, (url, asked) in landings.items():
        landed = urlsplit(url)
        assert (landed.scheme, landed.netloc) == (own.scheme, own.netloc), (query, url)
        assert asked, query
        assert all(urlsplit(seen).netloc == own.netloc for seen in asked), (query, asked)
        assert landed.path == ("/agent/worker/" if "worker" in query else "/"), (query, url)
