"""The guard's pieces on their own: the token file, sessions, Host and Origin checks, the [web] section,
redirect targets, the wrong-token limiter and JSON bodies."""

from __future__ import annotations

import os
import socket
import stat
import time

import pytest
from hyperhive_web.auth import (
    Refused,
    Sessions,
    bearer_token,
    check_host,
    check_origin,
    host_name,
    load_or_create_token,
    safe_next,
)
from hyperhive_web.jsonbody import MAX_DEPTH, TooDeep, loads, nesting_exceeds
from hyperhive_web.limiter import (
    FailureLimiter,
    TooManyAttempts,
    client_key,
    diag_peer_uid,
    loopback_peer_uid,
    proc_peer_uid,
)
from hyperhive_web.settings import WebSection
from webkit import fork_as

from hyperhive_core import ConfigError

OWN = "http://127.0.0.1:8700"


def test_the_token_is_created_once_private_and_kept(tmp_path):
    token = load_or_create_token(tmp_path / "web")
    path = tmp_path / "web" / "operator-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "web").stat().st_mode) == 0o700
    os.chmod(path, 0o644)
    assert load_or_create_token(tmp_path / "web") == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # loosened by someone: tightened again


def test_an_unusable_token_file_says_what_to_do(tmp_path):
    (tmp_path / "operator-token").write_text("short\n")
    with pytest.raises(RuntimeError, match="holds no usable operator token; delete it and restart"):
        load_or_create_token(tmp_path)


def test_sessions_are_signed_expire_and_have_their_own_csrf_token():
    sessions = Sessions("t" * 43, max_age_seconds=60)
    cookie = sessions.issue()
    session = sessions.verify(cookie)
    assert session is not None
    other = sessions.verify(sessions.issue())
    assert sessions.csrf_token(session) != sessions.csrf_token(other)
    issued, nonce, signature = cookie.split(".")
    assert sessions.verify(f"{issued}.{nonce}x.{signature}") is None
    assert sessions.verify(f"{int(time.time()) - 120:x}.{nonce}.{signature}") is None
    assert sessions.verify("garbage") is None
    assert sessions.verify(None) is None
    assert Sessions("u" * 43, 60).verify(cookie) is None  # a new token logs everyone out
    assert sessions.token_matches("t" * 43)
    assert not sessions.token_matches("t" * 42)


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8700", "127.0.0.1"), ("LocalHost", "localhost"), ("[::1]:8700", "::1"), ("hive.lan", "hive.lan")],
)
def test_host_name(header, name):
    assert host_name(header) == name


def test_check_host():
    allowed = frozenset({"127.0.0.1", "localhost"})
    check_host("localhost:8700", allowed)
    for header in ("attacker.example:8700", "", None, "127.0.0.1.nip.io"):
        with pytest.raises(Refused, match="does not answer to host") as refused:
            check_host(header, allowed)
        assert refused.value.status == 403


@pytest.mark.parametrize(
    ("headers", "state_changing", "refused"),
    [
        ({"Origin": OWN}, True, False),
        ({"Origin": "http://127.0.0.1:8700", "Sec-Fetch-Site": "same-origin"}, True, False),
        ({"Sec-Fetch-Site": "same-origin"}, True, False),
        ({"Origin": "http://127.0.0.1:9999"}, True, True),  # another port: same site, other origin
        ({"Origin": "http://localhost:8700"}, True, True),
        ({"Origin": "null"}, True, True),
        ({"Sec-Fetch-Site": "same-site"}, True, True),
        ({"Sec-Fetch-Site": "none"}, True, True),
        ({}, True, True),
        ({}, False, False),
        ({"Sec-Fetch-Site": "none"}, False, False),  # the operator typed the address
        ({"Sec-Fetch-Site": "cross-site"}, False, True),
        ({"Origin": "https://evil.example"}, False, True),
    ],
)
def test_check_origin(headers, state_changing, refused):
    if refused:
        with pytest.raises(Refused):
            check_origin(headers, OWN, state_changing=state_changing)
    else:
        check_origin(headers, OWN, state_changing=state_changing)


def test_bearer_token():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_web_section_defaults_and_hosts():
    section = WebSection()
    assert (section.bind, section.port) == ("127.0.0.1", 8700)
    assert section.hosts == frozenset({"127.0.0.1", "localhost", "::1"})
    assert WebSection(bind="0.0.0.0", allowed_hosts=["Hive.LAN"]).hosts == frozenset(
        {"127.0.0.1", "localhost", "::1", "hive.lan"}
    )
    assert WebSection(bind="10.0.0.5").url_host == "10.0.0.5"
    assert WebSection(bind="::").url_host == "[::1]"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bind": "localhost"}, "[web] bind must be an IP address such as 127.0.0.1, not 'localhost'"),
        ({"port": 70000}, "[web] port must be between 0 and 65535 (0 picks a free one), not 70000"),
        ({"session_days": 0}, "[web] session_days must be at least 1, not 0"),
        ({"allowed_hosts": ["http://hive.lan/"]}, "[web] allowed_hosts: 'http://hive.lan/' is not a host name"),
    ],
)
def test_web_section_checks_its_values(values, message):
    with pytest.raises(ConfigError) as error:
        WebSection(**values)
    assert message in str(error.value)


# -- where the browser goes after login ------------------------------------------------

# Each would send a browser to another host, or is not a path on the dashboard at all.
HOSTILE_NEXT = [
    "//evil.example/",
    "///evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "\\/evil.example/",
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\r\n/evil.example/",
    "\t//evil.example/",
    " //evil.example/",
    "/ /evil.example/",
    "/\x00/evil.example/",
    "/\x7f/evil.example/",
    "https://evil.example/",
    "http:evil.example",
    "http:/\\evil.example",
    "javascript:alert(document.domain)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "/%2F%2Fevil.example/",
    "/%2f/evil.example/",
    "/%5Cevil.example/",
    "/%5cevil.example/",
    "%2F%2Fevil.example/",
    "/%252F%252Fevil.example/",
    "/%25252F%25252Fevil.example/",
    "/%09/evil.example/",
    "/%0A/evil.example/",
    "/%00",
    "/.//evil.example/",
    "/agent//evil.example/",
    "//evil.example@127.0.0.1/",
    "/\u3000/evil.example/",
    "/\uff0f\uff0fevil.example/",
    "/\u2028/evil.example/",
    "/" + "a" * 2000,
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_safe_next_refuses_anything_but_a_path_here(target):
    assert safe_next(target) == "/"


@pytest.mark.parametrize(
    "target",
    ["/", "/agent/worker/", "/agent/worker/?tab=inbox&x=1", "/agent/a%2Fb/", "/#tail", "/-/web/kept", "/../agent/x/"],
)
def test_safe_next_keeps_a_path_on_the_dashboard(target):
    assert safe_next(target) == target


def test_safe_next_without_a_target_is_the_host_page():
    assert safe_next(None) == safe_next("") == "/"


# -- wrong tokens -------------------------------------------------------------------------


class Clock:
    """The limiter's time source, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: FailureLimiter, client: str) -> TooManyAttempts | None:
    try:
        limiter.acquire(client)
    except TooManyAttempts as error:
        return error
    return None


def test_a_client_has_a_burst_of_attempts_then_429_until_one_is_back():
    clock = Clock()
    limiter = FailureLimiter(6, clock=clock)  # one back every 10 s
    for _ in range(6):
        assert refused(limiter, "10.0.0.1") is None
    error = refused(limiter, "10.0.0.1")
    assert (error.status, error.retry_after) == (429, 10)
    assert str(error) == "too many wrong tokens from 10.0.0.1; try again in 10 s (check the operator token)"
    clock.now += 4
    assert refused(limiter, "10.0.0.1").retry_after == 6  # refused attempts cost nothing
    assert refused(limiter, "10.0.0.2") is None  # another client has its own
    clock.now += 6
    assert refused(limiter, "10.0.0.1") is None
    assert refused(limiter, "10.0.0.1").retry_after == 10
    clock.now += 60
    assert limiter.remaining("10.0.0.1") == 6


def test_a_right_token_costs_nothing():
    limiter = FailureLimiter(3, clock=Clock())
    for _ in range(10):
        limiter.acquire("operator")
        limiter.release("operator")
    assert limiter.remaining("operator") == 3


def test_the_ceiling_holds_back_failing_clients_but_never_one_that_has_not_failed():
    clock = Clock()
    limiter = FailureLimiter(2, clock=clock)  # everyone together: 12, one back every 5 s
    for client in range(12):
        limiter.acquire(f"10.0.1.{client}")  # each has one attempt left; everyone together none
    error = refused(limiter, "10.0.1.0")
    assert str(error) == (
        "too many wrong tokens from many clients; try again in 5 s (a browser already logged in still works)"
    )
    assert error.retry_after == 5
    assert refused(limiter, "192.0.2.7") is None  # the operator, new here, is let through
    assert limiter.remaining("192.0.2.7") == 1
    assert "many clients" in str(refused(limiter, "192.0.2.7"))  # having failed, it waits with the rest
    clock.now += 5
    assert refused(limiter, "10.0.1.0") is None
    assert "many clients" in str(refused(limiter, "10.0.1.1"))


def test_the_limiter_remembers_a_bounded_number_of_clients():
    clock = Clock()
    limiter = FailureLimiter(10, clients_max=1000, clock=clock)
    for client in range(100_000):
        refused(limiter, f"client {client}")
        clock.now += 0.001
    assert len(limiter) == 1000
    # Overrun: the ceiling now holds back even clients it has never seen, for about a second.
    error = refused(limiter, "newcomer")
    assert error is not None
    assert error.retry_after == 1
    clock.now += 120  # everyone's buckets full again: forgotten on the next attempt
    assert refused(limiter, "newcomer") is None
    assert len(limiter) == 1


def test_client_keys():
    assert client_key(("192.0.2.7", 50000), ("192.0.2.1", 8700)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2:3:4:5:6", 50000), ("2001:db8::1", 8700)) == "2001:db8:1:2::/64"
    assert client_key(("::ffff:192.0.2.7", 50000), ("::ffff:192.0.2.1", 8700)) == "192.0.2.7"
    assert client_key(None, None) == "unknown"
    # A loopback connection that does not exist (port 9 is discard): no uid to tell it by.
    assert client_key(("127.0.0.1", 9), ("127.0.0.1", 9)) == "loopback"
    assert loopback_peer_uid(("127.0.0.1", 9), ("127.0.0.1", 9)) is None
    with pytest.raises(FileNotFoundError):
        diag_peer_uid(("127.0.0.1", 9), ("127.0.0.1", 9))


NOBODY = 65534


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_loopback_client_is_known_by_the_uid_owning_its_end(family, host):
    """A real connection from a process of another uid (as root) or of ours: its end's owner is found."""
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    hold, release = os.pipe()

    def connect_and_hold() -> None:
        os.close(release)
        with socket.socket(family) as client:
            client.connect(server.getsockname())
            os.read(hold, 1)  # until the test closes its end

    with socket.create_server((host, 0), family=family) as server:
        server.settimeout(30)
        pid = fork_as(uid, connect_and_hold)
        os.close(hold)
        try:
            accepted, address = server.accept()
            with accepted:
                client, own = address[:2], accepted.getsockname()[:2]
                assert diag_peer_uid(client, own) == uid
                assert proc_peer_uid(client, own) == uid  # where the kernel has no sock_diag
                assert client_key(client, own) == f"loopback uid {uid}"
        finally:
            os.close(release)
            assert os.waitpid(pid, 0)[1] == 0


def test_token_failures_per_minute_is_at_least_one():
    assert WebSection().token_failures_per_minute == 10
    with pytest.raises(ConfigError, match=r"\[web\] token_failures_per_minute must be at least 1, not 0"):
        WebSection(token_failures_per_minute=0)


# -- JSON bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 65 + "1" + "}" * 65,
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        b"[" * 500 + b"]" * 500,
    ],
)
def test_json_nested_too_deep_is_refused(document):
    with pytest.raises(TooDeep, match=f"the JSON body nests deeper than {MAX_DEPTH} levels"):
        loads(document)


def test_json_up_to_the_limit_parses_and_brackets_in_strings_do_not_count():
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    text = '{"body": "' + "[{" * 1000 + '\\"[[["}'
    assert loads(text) == {"body": "[{" * 1000 + '"[[['}
    assert loads("[" + ",".join(["[]"] * 10_000) + "]") == [[]] * 10_000
    assert not nesting_exceeds("[[]]", 2)
    assert nesting_exceeds("[[[]]]", 2)
