"""The dead-letter routes of the HTTP contract: thin shells over the host socket's commands
(``hyperhive_core.dead_letters``), so ``hyperhive dead`` and the dashboard never disagree."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from hyperhive_core import dead_letters as commands
from hyperhive_web.api import hive, int_arg

dead_letters = Blueprint("dead_letters", __name__)


@dead_letters.get("/api/dead-letters")
async def list_dead() -> dict[str, Any]:
    limit = int_arg("limit", commands.LIST_LIMIT, low=1, high=commands.MAX_LIST_LIMIT)
    return await commands.dead_letters(hive(), recipient=request.args.get("agent"), limit=limit)


@dead_letters.get("/api/dead-letters/<int:message_id>")
async def show_dead(message_id: int) -> dict[str, Any]:
    return await commands.dead_letter(hive(), message_id)


@dead_letters.post("/api/dead-letters/<int:message_id>/requeue")
async def requeue_dead(message_id: int) -> dict[str, Any]:
    return await commands.requeue_dead(hive(), [message_id])


@dead_letters.post("/api/dead-letters/<int:message_id>/drop")
async def drop_dead(message_id: int) -> dict[str, Any]:
    return await commands.drop_dead(hive(), [message_id])
