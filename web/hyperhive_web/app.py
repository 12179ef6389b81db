"""The QuartTrio app: every request passes the guard, every error gets a clear answer."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import trio
from quart import Response, g, has_websocket_context, jsonify, redirect, render_template, request, websocket
from quart.typing import ResponseReturnValue
from quart_trio import QuartTrio
from quart_trio.wrappers.response import TrioFileBody, TrioResponse
from werkzeug.exceptions import HTTPException

from hyperhive_core import HyperhiveError, NotDeadLetter, UnknownAgent
from hyperhive_web.api import api
from hyperhive_web.auth import CSRF_HEADER, Refused, Session, bearer_token, check_host, check_origin, safe_next
from hyperhive_web.dashboard import current_dashboard
from hyperhive_web.dead_letters import dead_letters
from hyperhive_web.jsonbody import BoundedJSONProvider
from hyperhive_web.pages import pages
from hyperhive_web.routes import ENDPOINT_PREFIX, mount_routes
from hyperhive_web.templates import template_loader
from hyperhive_web.terminal import terminal

if TYPE_CHECKING:
    from hyperhive_web.dashboard import Dashboard

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/login", "/favicon.ico"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# No inline script, nothing framed, nothing fetched from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make Origin "null" on our own form posts
}


class ClosingFileBody(TrioFileBody):
    """A static file's body that closes its file when opening it is cut short (a page closed while
    it loads cancels the request between the open and the seek), rather than leaving it to the GC."""

    async def __aenter__(self) -> ClosingFileBody:
        try:
            await super().__aenter__()
        except BaseException:
            if self.file is not None:
                with trio.CancelScope(shield=True):
                    await self.file.aclose()
            raise
        return self


class DashboardResponse(TrioResponse):
    file_body_class = ClosingFileBody


class DashboardApp(QuartTrio):
    response_class = DashboardResponse

    def select_jinja_autoescape(self, filename: str | None) -> bool:
        return True  # a plugin's template escapes what it shows, whatever its file is called


def create_app(dashboard: Dashboard) -> QuartTrio:
    """The app: the dashboard's own routes, then the plugins' (checked against them).

    :raises PluginError: a plugin's public route would shadow one of the dashboard's own.
    """
    app = DashboardApp(__name__, static_folder=str(HERE / "static"), static_url_path="/static")
    app.jinja_loader = template_loader(HERE / "templates", dashboard.template_dirs)
    app.config["HYPERHIVE_DASHBOARD"] = dashboard
    app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024
    app.json = BoundedJSONProvider(app)  # every request's JSON, a plugin route's too
    app.before_request(guard_request)
    app.before_websocket(guard_websocket)
    app.after_request(add_security_headers)
    for blueprint in (pages, api, dead_letters, terminal):
        app.register_blueprint(blueprint)
    mount_routes(app, dashboard, dashboard.routes)
    app.register_error_handler(Exception, handle_error)
    return app


# -- the guard -------------------------------------------------------------------------


def wants_json(path: str) -> bool:
    """An API's answers: errors as JSON, 401 rather than the login page. Plugin routes are APIs too."""
    return path.startswith(("/api/", "/-/")) or (request.endpoint or "").startswith(ENDPOINT_PREFIX)


async def guard_request() -> ResponseReturnValue | None:
    dashboard = current_dashboard()
    check_host(request.headers.get("Host"), dashboard.settings.hosts)
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        if request.method not in SAFE_METHODS:
            check_origin(request.headers, request.host_url.rstrip("/"), state_changing=True)
        return None
    if await authenticated_by_bearer(dashboard, request.headers.get("Authorization"), request.scope):
        return None
    session = session_from_cookie(dashboard, request.cookies)
    if session is None:
        if request.method == "GET" and not wants_json(request.path):
            return redirect(f"/login?next={quote(safe_next(request.full_path.rstrip('?')), safe='/')}", 303)
        raise Refused(401, "log in first: open the /login?token=… address that `hyperhive up` printed")
    own_origin = request.host_url.rstrip("/")
    state_changing = request.method not in SAFE_METHODS
    check_origin(request.headers, own_origin, state_changing=state_changing)
    if state_changing:
        # Scripts send the header; a plain HTML form (log out) sends a hidden "csrf" field.
        sent = request.headers.get(CSRF_HEADER) or (await request.form).get("csrf", "")
        if not hmac.compare_digest(sent, g.csrf):
            raise Refused(403, f"missing or wrong {CSRF_HEADER} header; reload the page")
    return None


async def guard_websocket() -> None:
    """Websockets: the same host and login checks, and they must come from the dashboard's pages."""
    dashboard = current_dashboard()
    check_host(websocket.headers.get("Host"), dashboard.settings.hosts)
    if await authenticated_by_bearer(dashboard, websocket.headers.get("Authorization"), websocket.scope):
        return
    if session_from_cookie(dashboard, websocket.cookies) is None:
        raise Refused(401, "log in first")
    check_origin(websocket.headers, websocket.host_url.rstrip("/"), state_changing=True)
    if not hmac.compare_digest(websocket.args.get("csrf", ""), g.csrf):
        raise Refused(403, "missing or wrong csrf parameter; reload the page")


async def authenticated_by_bearer(dashboard: Dashboard, authorization: str | None, scope: Mapping[str, Any]) -> bool:
    """Scripts send the operator token itself; a browser never adds it on its own."""
    token = bearer_token(authorization)
    if token is None:
        return False
    if not await dashboard.token_matches(token, scope):
        raise Refused(401, "wrong bearer token")
    g.csrf = ""
    return True


def session_from_cookie(dashboard: Dashboard, cookies: Any) -> Session | None:
    session = dashboard.sessions.verify(cookies.get(dashboard.cookie_name))
    if session is not None:
        g.csrf = dashboard.sessions.csrf_token(session)
    return session


async def add_security_headers(response: Response) -> Response:
    for header, value in SECURITY_HEADERS.items():
        response.headers.setdefault(header, value)
    if wants_json(request.path):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# -- errors ---------------------------------------------------------------------------


async def handle_error(error: Exception) -> Response:
    """A refusal or a user's mistake in words; anything else is logged as a bug."""
    if isinstance(error, Refused):
        status, message = error.status, str(error)
    elif isinstance(error, UnknownAgent | NotDeadLetter):
        status, message = 404, str(error)
    elif isinstance(error, HyperhiveError):
        status, message = 400, str(error)
    elif isinstance(error, HTTPException):
        status, message = error.code or 500, error.description or error.name
    else:
        where = websocket.path if has_websocket_context() else request.path
        log.error("dashboard request %s failed", where, exc_info=error)
        status, message = 500, f"the dashboard failed: {type(error).__name__}: {error}. the daemon log has details."
    if has_websocket_context():
        response = Response(message, status=status)
    elif wants_json(request.path) or request.method not in SAFE_METHODS:
        response = jsonify({"error": message})
        response.status_code = status
    else:
        html = await render_template("error.html", status=status, message=message)
        response = Response(html, status=status, content_type="text/html; charset=utf-8")
    if isinstance(error, Refused) and error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response
