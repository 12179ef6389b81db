"""Who may use the dashboard: the operator token, sessions, CSRF, and the Host/Origin checks.

Agents' own code can reach ports on localhost, so nothing here trusts the network:

- a random operator token, created on first start (mode 0600 in the state dir);
- ``/login?token=…`` trades it for a signed ``SameSite=Strict`` HttpOnly session cookie;
- a request that changes anything also needs the session's CSRF token and must come
  from the dashboard's own origin (``Origin`` / ``Sec-Fetch-Site``);
- the ``Host`` header must be one the dashboard answers to (DNS rebinding);
- scripts (``hyperhive attach``, Prometheus) send the token itself as a bearer token,
  which a browser never adds on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from werkzeug.datastructures import Headers

TOKEN_FILE = "operator-token"  # noqa: S105 - the file name, not a secret
COOKIE = "hyperhive_session"
CSRF_HEADER = "X-CSRF-Token"


class Refused(Exception):
    """A request the guard turns away; ``status`` and a message that says why.

    :param retry_after: for a 429, the seconds until the client may try again.
    """

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def load_or_create_token(directory: Path) -> str:
    """The operator token in ``directory``, created (mode 0600) if there is none yet."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def read_token(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; the token is the keys to the hive
    token = path.read_text().strip()
    if len(token) < 32:
        raise RuntimeError(f"{path} holds no usable operator token; delete it and restart to make a new one")
    return token


@dataclass(frozen=True)
class Session:
    nonce: str
    issued_at: int


class Sessions:
    """Signed, stateless sessions: they survive a daemon restart and die with the token."""

    def __init__(self, token: str, max_age_seconds: int) -> None:
        self._token = token
        self._key = hmac.new(token.encode(), b"hyperhive-web session key", hashlib.sha256).digest()
        self.max_age_seconds = max_age_seconds

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def issue(self) -> str:
        """A new session cookie value."""
        nonce, issued = secrets.token_urlsafe(16), int(time.time())
        return f"{issued:x}.{nonce}.{self._sign(f'session:{issued:x}.{nonce}')}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session a cookie value carries, if it is genuine and not expired."""
        try:
            issued_hex, nonce, signature = (cookie or "").split(".")
            issued = int(issued_hex, 16)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(f"session:{issued_hex}.{nonce}")):
            return None
        if time.time() - issued > self.max_age_seconds:
            return None
        return Session(nonce, issued)

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.nonce}")

    def _sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header, lowercase: ``[::1]:8700`` → ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_host(host_header: str | None, allowed: frozenset[str]) -> None:
    """Refuse a ``Host`` the dashboard does not answer to (a DNS-rebinding page's)."""
    if not host_header or host_name(host_header) not in allowed:
        raise Refused(
            403,
            f"this dashboard does not answer to host {host_header!r}; open it by its own address, "
            "or add the name to [web] allowed_hosts",
        )


def check_origin(headers: Headers | Mapping[str, str], own_origin: str, *, state_changing: bool) -> None:
    """Refuse a request that a page of another origin made (the dashboard's port included).

    :param headers: the request's headers (case-insensitive ``get``).
    :param own_origin: ``scheme://host[:port]`` the request was addressed to.
    :param state_changing: a request that changes something must come from the
        dashboard itself and say so (browsers always send ``Origin`` with those);
        a read may also be a navigation the operator typed (``Sec-Fetch-Site: none``).
    """
    origin = headers.get("Origin")
    fetch_site = headers.get("Sec-Fetch-Site")
    if origin is not None and _origin(origin) != _origin(own_origin):
        raise Refused(403, f"cross-origin request from {origin} refused; use the dashboard at {own_origin}")
    allowed_sites = ("same-origin",) if state_changing else ("same-origin", "none")
    if fetch_site is not None and fetch_site not in allowed_sites:
        raise Refused(403, f"request from a {fetch_site} page refused; use the dashboard at {own_origin}")
    if state_changing and origin is None and fetch_site is None:
        raise Refused(403, "a request that changes something must say where it comes from (Origin)")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        return ("", url)
    return (scheme, f"{(parts.hostname or '').lower()}:{port}")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


# What a redirect target may hold: RFC 3986's path, query and fragment characters. No
# backslash, whitespace, control or non-ASCII character: browsers read those loosely
# (``/\evil.example`` and ``/<TAB>/evil.example`` both go to evil.example).
REDIRECT_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?#%]{1,2000}")
# Percent-decoding rounds a target is checked through (a proxy or a browser may decode once more).
DECODINGS = 3


def safe_next(target: str | None) -> str:
    """A redirect target from a request (``?next=``), made a path on this dashboard: ``/`` if it is anything else.

    It must be a path that starts with a single ``/``, made of plain URL characters;
    so must each percent-decoding of it (``/%2F%2Fevil.example`` is refused too).
    """
    if not target or not REDIRECT_CHARS.fullmatch(target):
        return "/"
    decoded = target
    for _ in range(DECODINGS):
        if not _same_origin_path(decoded):
            return "/"
        decoded, previous = unquote(decoded), decoded
        if decoded == previous:
            return target
    return "/"  # still encoded after that many rounds: nobody needs that


def _same_origin_path(target: str) -> bool:
    """A path with no way to name another host: one leading ``/``, no ``//`` in it, no ``\\``, no control or space."""
    path = target.partition("?")[0].partition("#")[0]
    return (
        path.startswith("/")
        and "//" not in path
        and "\\" not in target
        and not any(char.isspace() or not char.isprintable() for char in target)
    )
