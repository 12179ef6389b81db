"""The dashboard side: ◆ M1ND H4S QU3STI0NS ◆ on the host page, and ``POST /api/answer-question``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_core import Panel, iso_utc
from hyperhive_questions.commands import answer_question, cancel_question
from hyperhive_questions.questions import Question, QuestionError

if TYPE_CHECKING:
    from hyperhive_core import Hive

STATIC = Path(__file__).parent / "static"
ANSWER_ROUTE = "/api/answer-question"


def questions_panel(pending: list[Question], unreachable: str = "") -> Panel:
    """The section at the top of the host page; its stylesheet hides it while nothing is pending.

    It is always there, so its script is on the page to bring it back when a question arrives.
    ``unreachable`` is why the questions cannot be read (the manager's host is down): shown instead.
    """
    body: dict[str, Any] = (
        {"html": f'<p class="questions-away">{html.escape(unreachable)}</p>'}
        if unreachable
        else {
            "template": "questions/panel.html",
            "context": {
                "pending": [(question, iso_utc(question.deadline)) for question in pending],
                "route": ANSWER_ROUTE,
            },
        }
    )
    return Panel(
        key="questions",
        title="M1ND H4S QU3STI0NS",
        label="questions from the manager that wait for your answer",
        **body,
        placement="top",
        order=10,
        scripts=(STATIC / "questions.js",),
        styles=(STATIC / "questions.css",),
    )


async def answer_from_json(hive: Hive, data: Any) -> dict[str, Any]:
    """``{"id": 3, "answer": "yes"}`` answers question 3; ``{"id": 3, "cancel": true}`` cancels it."""
    if not isinstance(data, dict) or "id" not in data:
        raise QuestionError('send a JSON object like {"id": 3, "answer": "yes"}, or {"id": 3, "cancel": true}')
    if data.get("cancel") is True:
        return await cancel_question(hive, data["id"])
    if "answer" not in data:
        raise QuestionError('give the "answer", or "cancel": true to withdraw the question')
    return await answer_question(hive, data["id"], data["answer"])


async def answer_view(hive: Hive) -> dict[str, Any]:
    """``POST /api/answer-question`` (the HTTP contract's, a public route): the question as it is now resolved."""
    from quart import request

    return await answer_from_json(hive, await request.get_json(force=True, silent=True))
