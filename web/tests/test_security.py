"""Who may use the dashboard: login, sessions, CSRF, Origin, Host, websockets, and agents' own code."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import pytest
import trio
from hivekit import needs_claude
from webkit import Http, browser_session, dashboard_hive, operator

pytestmark = needs_claude

OTHER_PORT = "http://127.0.0.1:9"  # an agent's own web server on this host: same site, other origin


async def test_without_a_session_api_calls_get_401_and_pages_go_to_login(hive):
    anonymous = Http(hive.web.url)
    with trio.fail_after(10):
        api = await anonymous.get("/api/state")
        agent_api = await anonymous.get("/api/agents/worker/inbox")
        stream = await anonymous.get("/api/events")
        post = await anonymous.post("/api/spawn", {"name": "intruder"}, headers={"Origin": hive.web.url})
        page = await anonymous.get("/agent/worker/")
        home = await anonymous.get("/")
    for reply in (api, agent_api, stream, post):
        assert reply.status == 401
        assert "log in first" in reply.json()["error"]
    assert (page.status, page.headers["location"]) == (303, "/login?next=/agent/worker/")
    assert home.status == 303
    assert "intruder" not in hive.agents


async def test_login_trades_the_token_for_a_strict_httponly_cookie(hive):
    anonymous = Http(hive.web.url)
    with trio.fail_after(10):
        wrong = await anonymous.get("/login?token=guess")
        right = await anonymous.get(f"/login?token={hive.web.token}&next=/agent/worker/")
        offsite = await anonymous.get(f"/login?token={hive.web.token}&next=//evil.example/")
        form = await anonymous.get("/login")
    assert wrong.status == 401
    assert "not this hive" in wrong.body.decode()
    assert right.status == 303
    assert right.headers["location"] == "/agent/worker/"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"hyperhive_session_{hive.web.port}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert offsite.headers["location"] == "/"
    assert form.status == 200
    assert 'name="token"' in form.body.decode()


async def test_the_token_file_is_private(hive):
    path = hive.paths.root / "web" / "operator-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == hive.web.token
    assert len(hive.web.token) >= 40


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
        rebinding = await http.get("/api/state", headers={"Host": f"attacker.example:{hive.web.port}"})
        login = await Http(hive.web.url).get(f"/login?token={hive.web.token}", headers={"Host": "attacker.example"})
        localhost = await http.get("/api/state", headers={"Host": f"localhost:{hive.web.port}"})
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
        reply = await Http(hive.web.url, {"Authorization": "Bearer nope"}).get("/api/state")
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
        no_session = await Http(hive.web.url).websocket_handshake(path + csrf, {"Origin": hive.web.url})
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
    from hyperhive_core.containers.bwrap import BwrapBackend

    if os.geteuid() != 0:
        pytest.skip("the bwrap backend needs root: it runs each agent as its own host uid")
    # Uids of their own, clear of a real hive's on this machine (61000 up) and of tests/test_bwrap.py's.
    bwrap = {"uid_range_start": 61960, "uid_range_size": 20}
    async with dashboard_hive(tmp_path, web_pm, hive={"container_backend": "bwrap"}, bwrap=bwrap) as hive:
        assert isinstance(hive.backend, BwrapBackend)
        token_path = str(hive.paths.root / "web" / "operator-token")
        spec = hive.container_spec("worker")
        env = hive.session_env("worker", hive.backend.view(spec).state)
        argv = [sys.executable, "-I", "-c", PROBE, hive.web.url, token_path]
        with trio.fail_after(60):
            process = await hive.backend.exec(spec, argv, env)
            output = b""
            while chunk := await process.stdout.receive_some():
                output += chunk
            errors = await process.stderr.receive_some() if process.stderr else b""
            assert await process.wait() == 0, errors
    results = json.loads(output)
    assert results["state"][0] == 401
    assert results["worker_inbox"][0] == 401
    assert results["worker_page"][0] == 200  # urllib follows the redirect to the login form …
    assert "<title>log in" in results["worker_page"][1]  # … which is all it gets
    assert results["approve"][0] == 401
    assert results["guessed_login"][0] == 401
    assert results["token_file"] in ("FileNotFoundError", "PermissionError")
