"""Questions the manager asks the operator: stored, answered, cancelled or expired.

Every resolution sends the asker an ``operator_answered`` hive event, which wakes it.
The event is owed until it is in the asker's inbox (``notified_at``): one that could
not be sent yet (the asker was not up, right after a restart) goes out when the
asker's loop next waits for messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlite_utils
import trio

from hyperhive_core import HyperhiveError, iso_utc, option

if TYPE_CHECKING:
    from hyperhive_core import Hive

log = logging.getLogger(__name__)

TABLE = "questions_questions"
PENDING, ANSWERED, CANCELLED, EXPIRED = "pending", "answered", "cancelled", "expired"
EVENT = "operator_answered"
"""The hive event the asker receives when its question is resolved, however."""
MAX_PENDING = 20
"""Questions one asker may have waiting for the operator at once."""
KEEP_RESOLVED = 1000
"""Resolved questions kept once their asker has the answer; each new question deletes older ones."""


@dataclass
class QuestionsSection:
    """Questions the manager asks the operator."""

    default_ttl_seconds: int = option(
        86400, help="How long a question stays open when the manager gives no ttl_seconds (a day)."
    )
    max_ttl_seconds: int = option(604800, help="The longest ttl_seconds the manager may ask for (a week).")
    max_chars: int = option(4000, help="The longest question, and the longest answer, in characters.")

    def __post_init__(self) -> None:
        # Core's config loader names the file and [questions] before it (docs/plugins.md).
        for key in ("default_ttl_seconds", "max_ttl_seconds", "max_chars"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, not {getattr(self, key)}")
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError(
                f"default_ttl_seconds ({self.default_ttl_seconds}) is over max_ttl_seconds "
                f"({self.max_ttl_seconds}); lower the default or raise the maximum"
            )


class QuestionError(HyperhiveError):
    """A question or an answer was refused; nothing changed."""


@dataclass(frozen=True)
class Question:
    """One question, as the CLI, the host socket and the dashboard see it."""

    id: int
    asker: str
    question: str
    options: list[str] | None
    asked_at: float
    deadline: float
    status: str
    answer: str | None
    answered_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Question:
        options = json.loads(row["options_json"]) if row["options_json"] else None
        fields = {key: row[key] for key in ("id", "asker", "question", "asked_at", "deadline", "status")}
        return cls(**fields, options=options, answer=row["answer"], answered_at=row["answered_at"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Questions:
    """The hive's questions; ``run_reaper`` is the TTL reaper."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self.settings: QuestionsSection = hive.config.section("questions", QuestionsSection)
        self._deadlines: dict[int, float] = {}  # pending question → trio time it expires
        self._changed = trio.Event()  # a new deadline: the reaper looks again
        self._owed: set[str] = set()  # askers whose events could not be sent yet

    async def load(self) -> None:
        """Note whose ``operator_answered`` events a previous run still owes."""
        self._owed = set(await self.hive.store.read(_owed_askers))

    # -- asking --------------------------------------------------------------

    async def ask(self, asker: str, question: str, options: list[str] | None, ttl_seconds: int | None) -> Question:
        """Store a pending question; its deadline starts now.

        :raises QuestionError: an empty or oversized question, bad options, or a TTL
            out of range.
        """
        question = self._check_text(question, "question")
        options = _check_options(options)
        ttl = self._check_ttl(ttl_seconds)
        now = time.time()
        row = {
            "asker": asker,
            "question": question,
            "options_json": json.dumps(options) if options else None,
            "asked_at": now,
            "deadline": now + ttl,
            "status": PENDING,
        }
        row["id"] = await self.hive.store.write(partial(_insert, row))
        asked = Question.from_row(row | {"answer": None, "answered_at": None})
        self._deadlines[asked.id] = trio.current_time() + ttl
        self._changed.set()
        self.hive.events.publish(asker, "questions.asked", **asked.to_json())
        return asked

    def _check_text(self, text: str, what: str) -> str:
        if not text.strip():
            hint = "write what you want to know" if what == "question" else "write an answer, or cancel the question"
            raise QuestionError(f"the {what} is empty; {hint}")
        text = text.strip()
        limit = self.settings.max_chars
        if len(text) > limit:
            raise QuestionError(
                f"the {what} is {len(text)} characters, over the {limit}-character limit "
                f"([questions] max_chars); shorten it, or put the details in a file and refer to it"
            )
        return text

    def _check_ttl(self, ttl_seconds: int | None) -> int:
        settings = self.settings
        if ttl_seconds is None:
            return settings.default_ttl_seconds
        if ttl_seconds < 1:
            raise QuestionError(
                f"ttl_seconds must be at least 1, not {ttl_seconds}; "
                f"leave it out for the default of {settings.default_ttl_seconds}"
            )
        if ttl_seconds > settings.max_ttl_seconds:
            raise QuestionError(
                f"ttl_seconds {ttl_seconds} is over the maximum of {settings.max_ttl_seconds} "
                "([questions] max_ttl_seconds); ask for less"
            )
        return ttl_seconds

    # -- resolving -------------------------------------------------------------

    async def answer(self, question_id: int, answer: str) -> Question:
        """Resolve a pending question with the operator's answer.

        :raises QuestionError: no such question, it is already resolved, or the
            answer is empty, oversized or not one of its options.
        """
        return await self._resolve(question_id, self._check_text(answer, "answer"), ANSWERED)

    async def cancel(self, question_id: int) -> Question:
        """Resolve a pending question with ``[cancelled]``."""
        return await self._resolve(question_id, "[cancelled]", CANCELLED)

    async def _expire(self, question_id: int) -> None:
        with contextlib.suppress(QuestionError):  # answered or cancelled just before its deadline
            await self._resolve(question_id, "[expired]", EXPIRED)

    async def _resolve(self, question_id: int, answer: str, status: str) -> Question:
        row = await self.hive.store.write(partial(_resolve, question_id, answer, status, time.time()))
        resolved = Question.from_row(row)
        self._deadlines.pop(resolved.id, None)
        await self._deliver(resolved)
        self.hive.events.publish(resolved.asker, "questions.resolved", **resolved.to_json())
        return resolved

    async def _deliver(self, question: Question) -> None:
        """Send the asker its ``operator_answered`` event, or keep it owed until the asker next waits."""
        asker = question.asker
        if asker in self.hive.agents:
            fields = {"id": question.id, "question": question.question, "answer": question.answer}
            try:
                await self.hive.notify(asker, EVENT, **fields, status=question.status)
            except HyperhiveError as exc:
                log.warning("question %d: could not notify %s: %s", question.id, asker, exc)
                self.hive.events.publish(
                    asker, "error", text=f"the {EVENT} event for question {question.id} was not sent: {exc}"
                )
            else:
                sent = {"notified_at": time.time()}
                await self.hive.store.write(lambda db: db.table(TABLE).update(question.id, sent))
                return
        self._owed.add(asker)

    async def deliver_owed(self, agent: str) -> None:
        """Send ``agent`` the events a restart kept from it."""
        if agent not in self._owed:
            return
        self._owed.discard(agent)
        for row in await self.hive.store.read(partial(_owed_to, agent)):
            await self._deliver(Question.from_row(row))

    # -- reading ---------------------------------------------------------------

    async def find(self, *, include_resolved: bool = False, limit: int = 50) -> list[Question]:
        """Pending questions, oldest first; or, with ``include_resolved``, the newest of all."""
        rows = await self.hive.store.read(partial(_select, include_resolved, limit))
        return [Question.from_row(row) for row in rows]

    # -- the TTL reaper -----------------------------------------------------------

    async def run_reaper(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire each pending question at its deadline; those overdue at start, at once.

        Sleeps until the nearest deadline; a new question wakes it to look again.
        """
        wall, clock = time.time(), trio.current_time()
        for row in await self.hive.store.read(partial(_select, False, None)):
            # A wall clock set back while the hive was down gives no question more than its TTL.
            left = min(row["deadline"] - wall, row["deadline"] - row["asked_at"])
            self._deadlines.setdefault(row["id"], clock + max(0.0, left))
        task_status.started()
        while True:
            self._changed = trio.Event()
            now = trio.current_time()
            for question_id in [qid for qid, at in self._deadlines.items() if at <= now]:
                self._deadlines.pop(question_id, None)
                await self._expire(question_id)
            with trio.move_on_at(min(self._deadlines.values(), default=math.inf)):
                await self._changed.wait()


def _check_options(options: list[str] | None) -> list[str] | None:
    if options is None:
        return None
    if not options:
        raise QuestionError(
            "options is an empty list; give at least one option, or leave options out for a free-text answer"
        )
    seen = set()
    for option_text in options:
        if not option_text.strip():
            raise QuestionError("an option is empty; every option needs some text")
        if option_text in seen:
            raise QuestionError(f"option {option_text!r} appears twice; give each option once")
        seen.add(option_text)
    return options


# -- the table ---------------------------------------------------------------------


def _insert(row: dict[str, Any], db: sqlite_utils.Database) -> int:
    """Store a new question, within the asker's pending limit; forget the oldest answered ones.

    Both bounds keep a manager that asks in a loop from filling the disk.
    """
    waiting = db.table(TABLE).count_where("asker = ? AND status = ?", [row["asker"], PENDING])
    if waiting >= MAX_PENDING:
        raise QuestionError(
            f"{waiting} of your questions already wait for the operator, the most there may be; "
            f"wait for their {EVENT} events, or put what you need to know into one question"
        )
    pk = db.table(TABLE).insert(row).last_pk
    db.execute(_FORGET_RESOLVED, [PENDING, PENDING, KEEP_RESOLVED])
    assert isinstance(pk, int)  # the rowid of the row just inserted
    return pk


# Resolved questions whose asker has the answer, but the newest N (the third parameter).
_FORGET_RESOLVED = (
    f"DELETE FROM {TABLE} WHERE status != ? AND notified_at IS NOT NULL AND id <= ("  # noqa: S608 - a constant
    f"  SELECT id FROM {TABLE} WHERE status != ? AND notified_at IS NOT NULL ORDER BY id DESC LIMIT 1 OFFSET ?"
    ")"
)


def _resolve(question_id: int, answer: str, status: str, now: float, db: sqlite_utils.Database) -> dict[str, Any]:
    """Resolve a pending question in one transaction, so an answer and its expiry never both win."""
    rows = list(db.table(TABLE).rows_where("id = ?", [question_id]))
    if not rows:
        raise QuestionError(f"there is no question {question_id}; `hyperhive questions` lists the pending ones")
    row = rows[0]
    if row["status"] != PENDING:
        raise QuestionError(
            f"question {question_id} is already {row['status']} (answer {row['answer']!r} at "
            f"{iso_utc(row['answered_at'])}); there is nothing left to answer"
        )
    options = json.loads(row["options_json"]) if row["options_json"] else None
    if status == ANSWERED and options and answer not in options:
        choices = ", ".join(repr(choice) for choice in options)
        raise QuestionError(f"question {question_id} takes one of {choices}; {answer!r} is not one of them")
    update = {"status": status, "answer": answer, "answered_at": now}
    db.table(TABLE).update(question_id, update)
    return row | update


def _select(include_resolved: bool, limit: int | None, db: sqlite_utils.Database) -> list[dict[str, Any]]:
    if include_resolved:
        return list(db.table(TABLE).rows_where(order_by="id desc", limit=limit))
    return list(db.table(TABLE).rows_where("status = ?", [PENDING], order_by="id", limit=limit))


def _owed_askers(db: sqlite_utils.Database) -> list[str]:
    query = f"SELECT DISTINCT asker FROM {TABLE} WHERE status != ? AND notified_at IS NULL"  # noqa: S608 - a constant
    return [row[0] for row in db.execute(query, [PENDING]).fetchall()]


def _owed_to(agent: str, db: sqlite_utils.Database) -> list[dict[str, Any]]:
    where = "asker = ? AND status != ? AND notified_at IS NULL"
    return list(db.table(TABLE).rows_where(where, [agent, PENDING], order_by="id"))


def m001_questions(db: sqlite_utils.Database) -> None:
    db.table(TABLE).create(
        {
            "id": int,
            "asker": str,
            "question": str,
            "options_json": str,
            "asked_at": float,
            "deadline": float,
            "status": str,
            "answer": str,
            "answered_at": float,
            "notified_at": float,
        },
        pk="id",
        not_null={"asker", "question", "asked_at", "deadline", "status"},
    )
    db.table(TABLE).create_index(["status"])
