"""The dashboard's HTML: login, the host page, agent pages, and plugin panels with their assets."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from quart import Blueprint, Response, abort, g, redirect, render_template, request, send_file
from quart.typing import ResponseReturnValue

from hyperhive_core import (
    AGENT_NAME_PATTERN,
    AGENT_NAME_RULE,
    OPERATOR,
    HyperhiveError,
    UnknownAgent,
    known_models,
    operator_actions,
)
from hyperhive_web.api import INBOX_LIMIT, agent_json, placed_on, state
from hyperhive_web.auth import Refused, safe_next
from hyperhive_web.dashboard import current_dashboard
from hyperhive_web.panels import PlacedPanel, collect_panels

pages = Blueprint("pages", __name__)

TAIL_EVENTS = 300
RESOLVED_SHOWN = 10


@pages.route("/login", methods=["GET", "POST"])
async def login() -> Any:
    dashboard = current_dashboard()
    if request.method == "POST":
        form = await request.form
        token, target = form.get("token", ""), form.get("next")
    else:
        token, target = request.args.get("token", ""), request.args.get("next")
    if not token:
        return await render_template("login.html", next=safe_next(target), error=None)
    try:
        matches = await dashboard.token_matches(token, request.scope)
    except Refused as refused:
        html = await render_template("login.html", next=safe_next(target), error=str(refused))
        return Response(html, status=refused.status, headers={"Retry-After": str(refused.retry_after)})
    if not matches:
        html = await render_template("login.html", next=safe_next(target), error="that token is not this hive's")
        return Response(html, status=401)
    response = redirect(safe_next(target), 303)
    response.set_cookie(
        dashboard.cookie_name,
        dashboard.sessions.issue(),
        max_age=dashboard.sessions.max_age_seconds,
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return response


@pages.post("/logout")
async def logout() -> ResponseReturnValue:
    response = redirect("/login", 303)
    response.delete_cookie(current_dashboard().cookie_name, path="/")
    return response


async def page_context() -> dict[str, Any]:
    """What every page shows: the hive's warnings, the CSRF token, the slash commands."""
    dashboard = current_dashboard()
    hive = dashboard.hive
    return {
        "csrf": g.csrf,
        "rehearsal": hive.rehearsal.url if hive.rehearsal else None,
        "backend": {"name": hive.backend.name, "isolated": hive.backend.isolated},
        "dashboard_port": dashboard.port,
    }


def split_panels(panels: list[PlacedPanel]) -> dict[str, list[PlacedPanel]]:
    return {
        "top": [placed for placed in panels if placed.panel.placement == "top"],
        "main": [placed for placed in panels if placed.panel.placement != "top"],
        "all": panels,
    }


async def newest_event_id() -> int:
    newest = await current_dashboard().hive.events.history(None, limit=1)
    return newest[-1].id if newest else 0


def recent_approvals(approvals: list[dict[str, Any]], resolved: int = RESOLVED_SHOWN) -> list[dict[str, Any]]:
    """Every pending approval, and the newest few resolved ones."""
    pending = [approval for approval in approvals if approval["status"] == "pending"]
    return pending + [approval for approval in approvals if approval["status"] != "pending"][:resolved]


async def from_managers_host(read: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Approvals and drafts, which live on the manager's host: none while that host is down (the
    agent list shows it down, saying why), rather than no page at all."""
    try:
        return await read
    except HyperhiveError:
        return []


@pages.get("/")
async def host_page() -> str:
    hive = current_dashboard().hive
    after = await newest_event_id()  # first, so the stream replays whatever the snapshot below misses
    initial = {
        "state": await state(),
        "kept": await operator_actions.kept(hive),
        "inbox": await operator_actions.recv(hive, agent=OPERATOR, limit=INBOX_LIMIT),
        "approvals": recent_approvals(await from_managers_host(operator_actions.approvals(hive))),
        "drafts": await from_managers_host(operator_actions.drafts(hive)),
        "dead_letters": await operator_actions.dead_letters(hive),
    }
    return await render_template(
        "host.html",
        initial=initial,
        stream=f"/api/events?after={after}",
        agent_name={"pattern": AGENT_NAME_PATTERN, "rule": AGENT_NAME_RULE},  # the spawn form checks core's rule
        panels=split_panels(await collect_panels(current_dashboard())),
        **await page_context(),
    )


@pages.get("/agent/<name>/")
async def agent_page(name: str) -> str:
    dashboard = current_dashboard()
    hive = dashboard.hive
    try:
        host = placed_on(name)
    except UnknownAgent:
        abort(404, f"no agent named {name!r}")
    initial = {
        "agent": await agent_json(name),
        "inbox": await operator_actions.recv(hive, agent=name, limit=INBOX_LIMIT),
        # The model picker's names; it switches through /model, which checks whatever is typed.
        "models": known_models(hive.claude.extra_models),
        "commands": [
            {"name": command.name, "help": command.help, "plugin": command.plugin}
            for command in sorted(dashboard.slash_commands.values(), key=lambda command: command.name)
        ],
    }
    return await render_template(
        "agent.html",
        agent=name,
        initial=initial,
        stream=f"/api/agents/{name}/events?tail={TAIL_EVENTS}",
        # Panels read the agent's local state: another host's agent has them on that host's dashboard.
        panels=split_panels([] if host else await collect_panels(dashboard, agent=name)),
        **await page_context(),
    )


async def one_panel(key: str, agent: str | None) -> dict[str, Any]:
    """A panel re-rendered, for ``hyperhive.refreshPanel``; ``html`` is null once it is gone."""
    for placed in await collect_panels(current_dashboard(), agent=agent):
        if placed.panel.key == key:
            html = await render_template("panel.html", placed=placed)
            return {"key": key, "html": html, "placement": placed.panel.placement, "order": placed.panel.order}
    return {"key": key, "html": None}


@pages.get("/-/web/panels/<key>")
async def host_panel(key: str) -> dict[str, Any]:
    return await one_panel(key, None)


@pages.get("/-/web/agents/<name>/panels/<key>")
async def agent_panel(name: str, key: str) -> dict[str, Any]:
    current_dashboard().hive.agents.get(name)
    return await one_panel(key, name)


@pages.get("/-/web/assets/<plugin>/<digest>/<filename>")
async def panel_asset(plugin: str, digest: str, filename: str) -> Response:
    key = f"{plugin}/{digest}/{filename}"
    path = current_dashboard().assets.find(key)
    if path is None:
        # Not seen since this daemon started: render every page's panels once to learn them.
        dashboard = current_dashboard()
        await collect_panels(dashboard)
        for agent in dashboard.hive.agents:
            await collect_panels(dashboard, agent=agent.name)
        path = dashboard.assets.find(key)
    if path is None or not path.is_file():
        abort(404, f"no panel asset {key!r}")
    return await send_file(path)
