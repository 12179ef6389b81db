"""The rehearsal model's HTTP server (trio + h11): one per hive, each agent on its own path.

Claude Code keeps the path of ``ANTHROPIC_BASE_URL`` and appends ``/v1/messages``
to it, so an agent pointed at ``http://127.0.0.1:PORT/agents/manager`` asks
``POST /agents/manager/v1/messages``: the path says which agent is asking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import h11
import trio

from hyperhive_core.errors import HyperhiveError
from hyperhive_core.names import AGENT_NAME, check_agent_name
from hyperhive_core.rehearsal.director import Decision, Director
from hyperhive_core.rehearsal.http import HttpConnection, Incoming
from hyperhive_core.rehearsal.scenario import Scenario
from hyperhive_core.rehearsal.wire import (
    STREAM_HEAD,
    Fault,
    estimate_tokens,
    message_json,
    model_json,
    models_json,
    sse_events,
)

log = logging.getLogger(__name__)

AGENT_PREFIX = "/agents/"
API_KEY = "rehearsal"
ROUTES = "POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models, HEAD /"


def base_url_for(url: str, agent: str) -> str:
    """The ``ANTHROPIC_BASE_URL`` that makes ``agent``'s requests known as its own."""
    return f"{url.rstrip('/')}{AGENT_PREFIX}{check_agent_name(agent)}"


def env_for(url: str, agent: str) -> dict[str, str]:
    """Environment for a Claude Code process that runs ``agent`` on the rehearsal model at ``url``."""
    return {
        "ANTHROPIC_BASE_URL": base_url_for(url, agent),
        # The CLI will not start without a key; the rehearsal model never checks it.
        "ANTHROPIC_API_KEY": API_KEY,
        # Without these the CLI also calls api.anthropic.com (event logging, the MCP registry).
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


class RehearsalError(HyperhiveError):
    """The rehearsal model cannot start: its port is taken, or its log cannot be written."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, and what it answered."""

    seq: int
    time: float
    agent: str | None
    method: str
    path: str
    body: Any
    status: int
    rule: str | None = None
    step: int | None = None
    reply: str = ""


class RehearsalServer:
    """Serves a scenario to every agent; records each request for tests and logs.

    Start it with ``await nursery.start(server.serve)``; ``url`` is known from then on.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        keep: int = 1000,
        api_key: str | None = None,
    ) -> None:
        """
        :param api_key: answer only requests that carry it (``x-api-key``, or a bearer
            token), and the rest ``401`` like the real API; ``None`` checks nothing.
        """
        self.director = Director(scenario)
        self.api_key = api_key
        self.host = host
        self.port = port
        self.log_path = log_path
        self._requests: deque[RecordedRequest] = deque(maxlen=keep)
        self._count = 0
        self._recorded = trio.Event()
        self._log_file: IO[str] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The most recent requests (up to ``keep``), oldest first."""
        return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many requests arrived so far; pass it as ``after`` to wait for a newer one."""
        return self._count

    def base_url_for(self, agent: str) -> str:
        """``ANTHROPIC_BASE_URL`` for ``agent`` on this server."""
        return base_url_for(self.url, agent)

    def env_for(self, agent: str) -> dict[str, str]:
        """Environment for ``agent``'s Claude Code process on this server."""
        return env_for(self.url, agent)

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool] | None = None, *, after: int = 0
    ) -> RecordedRequest:
        """The first request numbered above ``after`` that ``predicate`` accepts; waits for it if need be."""
        while True:
            for request in self._requests:
                if request.seq > after and (predicate is None or predicate(request)):
                    return request
            after = max(after, self._count)
            await self._recorded.wait()

    async def serve(self, *, task_status: trio.TaskStatus[RehearsalServer] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and answer until cancelled; reports started (with ``self``) once it accepts connections."""
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise RehearsalError(
                f"the rehearsal model cannot listen on {self.host}:{self.port}: {exc.strerror}; "
                "choose another port, or 0 for any free one"
            ) from None
        # One URL per server: when the host has several addresses, keep the first.
        for extra in listeners[1:]:
            await extra.aclose()
        self.port = listeners[0].socket.getsockname()[1]
        with contextlib.ExitStack() as stack:
            if self.log_path:
                try:
                    self._log_file = stack.enter_context(self.log_path.open("a", encoding="utf-8"))
                except OSError as exc:
                    raise RehearsalError(f"cannot open the request log {self.log_path}: {exc.strerror}") from None
            log.info("rehearsal model on %s, scenario %s", self.url, self.director.scenario.source)
            task_status.started(self)
            await trio.serve_listeners(self._connection, listeners[:1])

    def _record(
        self, incoming: Incoming, agent: str | None, body: Any, status: int, decision: Decision | None = None
    ) -> None:
        self._count += 1
        request = RecordedRequest(self._count, time.time(), agent, incoming.method, incoming.path, body, status)
        if decision is not None:
            request = replace(request, rule=decision.rule, step=decision.step, reply=decision.describe())
        self._requests.append(request)
        self._recorded.set()
        self._recorded = trio.Event()
        log.info("%s %s %s: %s", agent or "-", request.method, request.path, request.reply or f"HTTP {status}")
        if self._log_file:
            # One short line to a local file: cheaper than a thread hop.
            self._log_file.write(json.dumps(asdict(request)) + "\n")
            self._log_file.flush()

    async def _connection(self, stream: trio.SocketStream) -> None:
        http = HttpConnection(stream)
        try:
            while (incoming := await http.next_request()) is not None:
                await self._respond(http, incoming)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The CLI drops the connection of a request it interrupts.
            log.debug("rehearsal: a client closed its connection before the reply was sent")
        except Exception as exc:
            status = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else 500
            log.exception("rehearsal: cannot answer a request (HTTP %d)", status)
            if http.can_respond:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await http.send_json(status, Fault(status, f"rehearsal model: {exc}").body())
        finally:
            await stream.aclose()

    async def _respond(self, http: HttpConnection, incoming: Incoming) -> None:
        agent, route = _split_agent(incoming.path)
        if self.api_key is not None and self.api_key not in (
            incoming.headers.get("x-api-key"),
            incoming.headers.get("authorization", "").removeprefix("Bearer "),
        ):
            self._record(incoming, agent, None, 401)
            await http.send_json(401, Fault(401, "rehearsal model: invalid x-api-key").body())
            return
        try:
            body = json.loads(incoming.body) if incoming.body else None
        except ValueError as exc:
            self._record(incoming, agent, incoming.body.decode("utf-8", "replace"), 400)
            await http.send_json(400, Fault(400, f"rehearsal model: the request body is not JSON: {exc}").body())
            return
        if (incoming.method, route) == ("POST", "/v1/messages"):
            await self._messages(http, incoming, agent, body)
            return
        status, payload = _side_route(incoming.method, route, body, incoming.path)
        self._record(incoming, agent, body, status)
        await http.send_json(status, None if incoming.method == "HEAD" else payload)

    async def _messages(self, http: HttpConnection, incoming: Incoming, agent: str | None, body: Any) -> None:
        if isinstance(body, dict):
            decision = self.director.decide(agent, body, incoming.headers.get("x-claude-code-session-id"))
        else:
            decision = Decision(Fault(400, "rehearsal model: the request body must be a JSON object"))
        reply, cut = decision.reply, decision.cut
        status = reply.status if isinstance(reply, Fault) else 0 if cut and cut.how == "hang" else 200
        self._record(incoming, agent, body, status, decision)
        await trio.sleep(decision.delay)
        if isinstance(reply, Fault):
            await http.send_json(reply.status, reply.body())
            return
        if cut and cut.how == "hang":
            await http.wait_closed()
            return
        model, input_tokens = body.get("model") or "rehearsal", estimate_tokens(body)
        if body.get("stream"):
            content_type, chunks = "text/event-stream", list(sse_events(reply, model, input_tokens))
        elif cut or decision.stream_seconds:
            # A whole JSON reply in two halves, so it can be paced or broken too.
            data = json.dumps(message_json(reply, model, input_tokens)).encode()
            content_type, chunks = "application/json", [data[: len(data) // 2], data[len(data) // 2 :]]
        else:
            await http.send_json(200, message_json(reply, model, input_tokens))
            return
        pace = decision.stream_seconds / max(1, len(chunks) - 1)
        if cut is None:
            await http.send_stream(content_type, chunks, pace=pace)
            return
        await http.send_stream(content_type, chunks[: min(STREAM_HEAD, len(chunks) - 1)], pace=pace, end=False)
        if cut.how == "stall":
            await http.wait_closed()
        # A drop returns with the response unfinished: the connection closes under it.


def _split_agent(path: str) -> tuple[str | None, str]:
    """The agent named by a ``/agents/<name>/…`` path, and the API path after it."""
    if path.startswith(AGENT_PREFIX):
        name, _, rest = path.removeprefix(AGENT_PREFIX).partition("/")
        if AGENT_NAME.fullmatch(name):
            return name, "/" + rest
    return None, path


def _side_route(method: str, route: str, body: Any, path: str) -> tuple[int, Any]:
    """Every route but ``/v1/messages``: status and JSON payload."""
    if method in ("HEAD", "GET") and route in ("/", "/api/hello"):
        return 200, {}
    if (method, route) == ("POST", "/v1/messages/count_tokens"):
        return 200, {"input_tokens": estimate_tokens(body)}
    if method == "GET" and route == "/v1/models":
        return 200, models_json()
    if method == "GET" and route.startswith("/v1/models/"):
        return 200, model_json(route.removeprefix("/v1/models/"))
    message = (
        f"rehearsal model: no route for {method} {path}; it serves {ROUTES}, "
        "at the root or under /agents/NAME for an agent"
    )
    return 404, Fault(404, message).body()
