"""The dashboard of one hive: its settings, the operator token, and the server it runs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import current_app

from hyperhive_core import HyperhiveError, StashKey, root_cause
from hyperhive_web.auth import COOKIE, Sessions, load_or_create_token
from hyperhive_web.limiter import FailureLimiter, client_key
from hyperhive_web.panels import PanelAssets
from hyperhive_web.routes import PluginRoutes, collect_routes
from hyperhive_web.settings import WebSection
from hyperhive_web.slash import SlashCommands, collect_slash_commands
from hyperhive_web.stream import LiveFeed
from hyperhive_web.templates import plugin_template_dirs

if TYPE_CHECKING:
    from hyperhive_core import Hive

log = logging.getLogger(__name__)

ADDRESS_FILE = "dashboard.json"


def web_dir(state_root: Path) -> Path:
    """The dashboard's own files in the state dir: the operator token and where it listens."""
    return state_root / "web"


class Dashboard:
    """Created at startup (``dashboard_of(hive)``); its ``serve`` is the dashboard's supervised service."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self.settings: WebSection = hive.config.section("web", WebSection)
        self.directory = web_dir(hive.paths.root)
        self.token = load_or_create_token(self.directory)
        self.sessions = Sessions(self.token, self.settings.session_days * 86400)
        self.limiter = FailureLimiter(self.settings.token_failures_per_minute)
        # Collected once, so a clash between plugins stops the daemon at startup.
        self.routes: PluginRoutes = collect_routes(hive.pm)
        self.slash_commands: SlashCommands = collect_slash_commands(hive.pm)
        self.template_dirs = plugin_template_dirs(hive.pm)
        self.assets = PanelAssets()
        self.feed = LiveFeed(hive)
        self.port: int | None = None
        from hyperhive_web.app import create_app  # the app's modules import this one

        # Built now, so a plugin route that would shadow the dashboard's own stops the daemon at startup.
        self.app = create_app(self)

    @property
    def url(self) -> str:
        """Where this machine's browser reaches the dashboard."""
        if self.port is None:
            raise RuntimeError("the dashboard is not serving yet")
        return f"http://{self.settings.url_host}:{self.port}"

    @property
    def cookie_name(self) -> str:
        # Cookies ignore ports: one named after ours never clashes with another hive's on this host.
        return f"{COOKIE}_{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.url}/login?token={self.token}"

    async def token_matches(self, candidate: str, scope: Mapping[str, Any]) -> bool:
        """Whether ``candidate`` is the operator token: ``/login``'s check and the bearer token's.

        :param scope: the request's ASGI scope: who asks, for the failure limiter.
        :raises Refused: 429, this client (or every client) has had too many wrong tokens lately.
        """
        client = await trio.to_thread.run_sync(client_key, scope.get("client"), scope.get("server"))
        self.limiter.acquire(client)
        if self.sessions.token_matches(candidate):
            self.limiter.release(client)
            return True
        if self.limiter.remaining(client) < 1:
            log.warning("dashboard: too many wrong operator tokens from %s; its attempts wait a while", client)
        return False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the dashboard until cancelled."""
        config = HypercornConfig()
        host = f"[{self.settings.bind}]" if ":" in self.settings.bind else self.settings.bind
        config.bind = [f"{host}:{self.settings.port}"]
        config.accesslog = None
        # A logger, not hypercorn's default "-": that adds a stderr handler of its own
        # beside the daemon's, and every line (`Running on …`) printed twice.
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            await nursery.start(self.feed.serve)
            try:
                binds = await nursery.start(partial(serve, self.app, config))
            except* OSError as failed:
                cause = root_cause(failed)
                reason = cause.strerror if isinstance(cause, OSError) else cause
                raise HyperhiveError(
                    f"the dashboard cannot listen on {config.bind[0]}: {reason}; "
                    "set [web] port to a free port (0 picks one), or stop what uses it"
                ) from None
            self.port = urlsplit(binds[0]).port
            self._write_address()
            log.info("dashboard at %s", self.url)
            log.info("log in to the dashboard: %s", self.login_url)
            task_status.started()

    def _write_address(self) -> None:
        """Tell local clients (``hyperhive attach``, ``hyperhive dashboard``) where to connect."""
        path = self.directory / ADDRESS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"url": self.url, "port": self.port, "pid": os.getpid()}, file)


DASHBOARD = StashKey[Dashboard]("web")


def dashboard_of(hive: Hive) -> Dashboard:
    """The hive's dashboard, which the web plugin keeps in ``hive.stash``."""
    return hive.stash[DASHBOARD]


def read_address(state_root: Path) -> dict[str, Any]:
    """Where the running dashboard listens, as it last wrote it."""
    path = web_dir(state_root) / ADDRESS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HyperhiveError(f"{path} does not exist: is the hive running, with the web plugin?") from None


def current_dashboard() -> Dashboard:
    """The dashboard serving the current request."""
    return current_app.config["HYPERHIVE_DASHBOARD"]
