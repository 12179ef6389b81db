"""The dead-letter routes of the HTTP contract: thin shells over the host socket's commands
(``hyperhive_core.operator_actions``), so ``hyperhive dead`` and the dashboard never disagree."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from hyperhive_core import operator_actions
from hyperhive_web.api import hive, int_arg

dead_letters = Blueprint("dead_letters", __name__)


@dead_letters.get("/api/dead-letters")
async def list_dead() -> dict[str, Any]:
    # The command checks the limit's range and says what it takes.
    limit = int_arg("limit", None, low=1)
    bounds = {} if limit is None else {"limit": limit}
    return await operator_actions.dead_letters(hive(), recipient=request.args.get("agent"), **bounds)


@dead_letters.get("/api/dead-letters/<int:message_id>")
async def show_dead(message_id: int) -> dict[str, Any]:
    return await operator_actions.dead_letter(hive(), message_id)


@dead_letters.post("/api/dead-letters/<int:message_id>/requeue")
async def requeue_dead(message_id: int) -> dict[str, Any]:
    return await operator_actions.requeue_dead(hive(), [message_id])


@dead_letters.post("/api/dead-letters/<int:message_id>/drop")
async def drop_dead(message_id: int) -> dict[str, Any]:
    return await operator_actions.drop_dead(hive(), [message_id])
