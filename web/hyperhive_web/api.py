"""The dashboard's JSON API: the contract of docs/architecture.md §9, plus the page's own helpers under ``/-/web/``.

Every handler is a thin shell over the same functions the host socket serves
(``hyperhive_core.operator_actions``), so the CLI and the dashboard never disagree.
"""

from __future__ import annotations

from typing import Any

import orjson
from quart import Blueprint, Response, current_app, jsonify, request
from quart.json.provider import DefaultJSONProvider

from hyperhive_core import OPERATOR, Hive, HyperhiveError, operator_actions
from hyperhive_web.dashboard import current_dashboard
from hyperhive_web.slash import run_slash_command
from hyperhive_web.stream import event_stream, sse_response

api = Blueprint("api", __name__)

INBOX_LIMIT = 50
MAX_INBOX_LIMIT = 500


def hive() -> Hive:
    return current_dashboard().hive


async def body() -> dict[str, Any]:
    """The request's JSON object (an empty body is an empty object)."""
    raw = await request.get_data(as_text=True)
    if not raw.strip():
        return {}
    data = await request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        raise HyperhiveError('send a JSON object, for example {"body": "hello"}')
    return data


def text_field(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise HyperhiveError(f"{key!r} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise HyperhiveError(f"give {key!r}: it is missing or empty")
    return value


def int_arg(name: str, default: int | None, *, low: int = 0, high: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HyperhiveError(f"?{name}= must be a whole number, not {raw!r}") from None
    if high is None and value < low:
        raise HyperhiveError(f"?{name}= must be at least {low}, not {value}")
    if value < low or (high is not None and value > high):
        raise HyperhiveError(f"?{name}= must be between {low} and {high}, not {value}")
    return value


_AS_JSONIFY = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def large_json(value: Any) -> Response:
    """``jsonify`` for a large answer: the same JSON (keys sorted; dates, dataclasses and what else
    JSON does not know turned by Quart's ``default``), encoded by orjson in a tenth of the time."""
    body = orjson.dumps(value, default=DefaultJSONProvider.default, option=_AS_JSONIFY)
    return current_app.response_class(body, mimetype="application/json")


def placed_on(name: str) -> str | None:
    """The other host of the hive that runs agent ``name``; None for this host's own (UnknownAgent
    for a name no host runs)."""
    cluster = hive().cluster
    host = cluster.elsewhere(name) if cluster is not None else None
    if host is None:
        hive().agents.get(name)
    return host


async def agent_json(name: str) -> dict[str, Any]:
    """One agent as ``/api/state`` lists it: live state, config, inbox depth and, in a hive across
    hosts, its ``host``; another host's agent asked of that host, or shown ``down`` while it is."""
    cluster = hive().cluster
    host = placed_on(name)
    if cluster is None:
        return await operator_actions.agent(hive(), name)
    if host is not None and not cluster.is_up(host):
        listed = [each for each in await operator_actions.agents(hive()) if each["name"] == name]
        if listed:
            return listed[0]
    return {**await operator_actions.agent(hive(), name), "host": host or cluster.host}


# -- reads -----------------------------------------------------------------------


async def state() -> dict[str, Any]:
    """What ``/api/state`` answers, and the host page starts with."""
    dashboard = current_dashboard()
    status = await operator_actions.status(dashboard.hive)
    return {**status, "manager": dashboard.hive.agents.manager, "dashboard_port": dashboard.port}


@api.get("/api/state")
async def state_json() -> Response:
    return large_json(await state())


@api.get("/api/agents/<name>/state")
async def agent_state(name: str) -> dict[str, Any]:
    return await agent_json(name)


@api.get("/api/agents/<name>/inbox")
async def agent_inbox(name: str) -> Response:
    placed_on(name)
    limit = int_arg("limit", INBOX_LIMIT, low=1, high=MAX_INBOX_LIMIT)
    return jsonify(await operator_actions.recv(hive(), agent=name, limit=limit))


@api.get("/api/inbox")
async def operator_inbox() -> Response:
    limit = int_arg("limit", INBOX_LIMIT, low=1, high=MAX_INBOX_LIMIT)
    return jsonify(await operator_actions.recv(hive(), agent=OPERATOR, limit=limit))


@api.get("/api/approvals")
async def approvals() -> Response:
    return jsonify(await operator_actions.approvals(hive(), status=request.args.get("status")))


# -- changes -----------------------------------------------------------------------


@api.post("/api/approvals/<int:approval_id>/approve")
async def approve(approval_id: int) -> dict[str, Any]:
    note = text_field(await body(), "note", required=False)
    return await operator_actions.approve(hive(), approval_id, note=note)


@api.post("/api/approvals/<int:approval_id>/deny")
async def deny(approval_id: int) -> dict[str, Any]:
    note = text_field(await body(), "note", required=False)
    return await operator_actions.deny(hive(), approval_id, note=note)


@api.post("/api/agents/<name>/messages")
async def send(name: str) -> dict[str, Any]:
    # The standard Idempotency-Key header, bare or as a quoted structured-field string.
    key = request.headers.get("Idempotency-Key")
    if key is not None and len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    return await operator_actions.send(hive(), to=name, body=text_field(await body(), "body"), idempotency_key=key)


@api.post("/api/agents/<name>/model")
async def model(name: str) -> dict[str, Any]:
    return await operator_actions.model(hive(), agent=name, model=text_field(await body(), "model").strip())


# Actions on an agent that take nothing else: each is the host command of its name.
AGENT_ACTIONS = {
    "cancel": operator_actions.cancel,
    "rebuild": operator_actions.rebuild,
    "restore": operator_actions.restore,
    "pause": operator_actions.pause,
    "resume": operator_actions.resume,
}


@api.post("/api/agents/<name>/<any(cancel, rebuild):action>")
@api.post("/-/web/agents/<name>/<any(restore, pause, resume):action>")
async def agent_action(name: str, action: str) -> dict[str, Any]:
    return await AGENT_ACTIONS[action](hive(), agent=name)


@api.post("/api/spawn")
async def spawn() -> dict[str, Any]:
    return await operator_actions.spawn(hive(), agent=text_field(await body(), "name").strip())


@api.post("/api/agents/<name>/destroy")
async def destroy(name: str) -> dict[str, Any]:
    purge = (await body()).get("purge", False)
    if not isinstance(purge, bool):
        raise HyperhiveError(f"'purge' must be true or false, not {purge!r}")
    return await operator_actions.destroy(hive(), agent=name, purge=purge)


# -- live events -----------------------------------------------------------------------


def resume_point() -> int | None:
    """Where a stream resumes: the browser's ``Last-Event-ID`` on reconnect, else ``?after=``."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        return int_arg("after", None)
    try:
        return int(raw)
    except ValueError:
        raise HyperhiveError(f"Last-Event-ID must be an event id, not {raw!r}") from None


@api.get("/api/events")
async def events() -> Response:
    return await sse_response(event_stream(hive(), current_dashboard().feed, None, after_id=resume_point()))


@api.get("/api/agents/<name>/events")
async def agent_events(name: str) -> Response:
    placed_on(name)  # another host's agent: its events are merged into this host's
    tail = int_arg("tail", None, low=0, high=hive().events.settings.history_per_agent)
    stream = event_stream(hive(), current_dashboard().feed, name, after_id=resume_point(), tail=tail)
    return await sse_response(stream)


# -- the dashboard's own helpers ---------------------------------------------------


@api.get("/-/web/kept")
async def kept() -> Response:
    return jsonify(await operator_actions.kept(hive()))


@api.post("/-/web/agents/<name>/slash")
async def slash(name: str) -> dict[str, Any]:
    line = text_field(await body(), "line")
    return await run_slash_command(hive(), current_dashboard().slash_commands, name, line, placed_on(name))


@api.get("/-/web/drafts")
async def drafts() -> Response:
    return jsonify(await operator_actions.drafts(hive()))
