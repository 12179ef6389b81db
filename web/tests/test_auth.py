"""The guard's pieces on their own: the token file, sessions, Host and Origin checks, the [web] section."""

from __future__ import annotations

import os
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
)
from hyperhive_web.settings import WebSection

from hyperhive_core.errors import ConfigError

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
