"""Compactions: when they run, and checking what the secondary session left behind.

A compaction never overlaps the agent's own turn. The threshold is checked in
``on_turn_end``, inside the agent's loop. A forced one (``/compact-notes``,
``hyperhive compact-notes``) runs at once when the agent is between turns, else it
waits for the turn to end; a turn that starts meanwhile waits for it.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hyperhive_compaction import records
from hyperhive_compaction.config import CompactionSection
from hyperhive_compaction.notes import (
    BACKUPS,
    NOTES,
    Backups,
    NotesError,
    make_workdir,
    notes_size,
    read_notes,
    write_notes,
)
from hyperhive_compaction.session import WORKDIR, SessionResult, compaction_argv, follow_session
from hyperhive_core import HyperhiveError, StashKey, State

if TYPE_CHECKING:
    from hyperhive_core import Hive

log = logging.getLogger(__name__)


class Compactor:
    """One per hive, in ``hive.stash[COMPACTOR]``."""

    def __init__(self, hive: Hive, settings: CompactionSection) -> None:
        self.hive = hive
        self.settings = settings
        self._running: dict[str, trio.Event] = {}
        self._in_turn: set[str] = set()
        self._queued: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery that compactions started from the dashboard run in."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def notes_path(self, agent: str) -> Path:
        """The agent's notes on the host."""
        return self.hive.paths.agent_state(agent) / NOTES

    def backups(self, agent: str) -> Backups:
        return Backups(self.hive.paths.agent_state(agent).parent / BACKUPS, self.settings.keep_backups)

    async def recover_interrupted(self) -> None:
        """Put back the notes of each compaction a previous daemon died during, before the agents start.

        Its session may have left notes.md half rewritten; the run's backup holds the
        original. Runs are marked ``interrupted``, never resumed.
        """
        for run in await self.hive.store.read(records.unfinished_runs):
            agent, run_id = run["agent"], run["id"]
            backup = next(self.backups(agent).directory.glob(f"notes-*-{run_id:06d}.md"), None)
            if backup is None:  # it died before the backup, so before the session: nothing changed
                reason = "the daemon stopped as the compaction began; notes.md was not touched"
            else:
                original = backup.read_bytes()
                path = self.notes_path(agent)
                try:
                    if read_notes(path) != original:
                        write_notes(path, original)
                    reason = "the daemon stopped during the compaction; notes.md was restored from its backup"
                except (OSError, NotesError) as exc:
                    reason = f"the daemon stopped during the compaction; restoring notes.md failed ({exc})"
                log.warning("%s: compaction %d: %s (%s)", agent, run_id, reason, backup)
            finish = partial(
                records.finish_run,
                run_id=run_id,
                outcome=records.INTERRUPTED,
                reason=reason,
                backup=str(backup) if backup else None,
            )
            await self.hive.store.write(finish)

    # -- the agent's loop -------------------------------------------------------------

    async def turn_started(self, agent: str) -> None:
        """Hold a turn that starts while a forced compaction runs."""
        self._in_turn.add(agent)
        done = self._running.get(agent)
        if done is None:
            return
        status = self.hive.agents.get(agent).status
        detail = status.detail
        self.hive.agents.set_state(agent, State.COMPACTING, "the turn waits for the notes compaction")
        await done.wait()
        self.hive.agents.set_state(agent, State.THINKING, detail)

    async def turn_ended(self, agent: str) -> None:
        """Run a queued forced compaction, or one the threshold calls for."""
        self._in_turn.discard(agent)
        if agent in self._queued:
            self._queued.discard(agent)
            trigger = "forced"
        else:
            size = notes_size(self.notes_path(agent))
            if size is None or size <= self.settings.threshold_bytes or await self._cooling_down(agent):
                return
            trigger = "threshold"
        try:
            await self.compact(agent, trigger)
        except HyperhiveError as exc:  # nobody waits for the answer (notes of blanks only): say it on the log
            self.hive.events.publish(agent, "error", text=f"notes compaction: {exc}")

    async def _cooling_down(self, agent: str) -> bool:
        """Whether the last compaction was undone too recently to try again on our own."""
        last = await self.hive.store.read(lambda db: records.last_runs(db, agent))
        if not last or last[0]["outcome"] == records.OK:
            return False
        return time.time() - (last[0]["finished_at"] or 0) < self.settings.retry_failed_after_seconds

    # -- the operator -----------------------------------------------------------------

    async def request(self, agent: str, *, wait: bool = True) -> dict[str, Any]:
        """Compact ``agent``'s notes now, or once its current turn ends.

        :param wait: return the finished run; else return at once, with
            ``{"started": True}``, and let the compaction run on its own.
        :return: the run, or ``{"queued": True}`` when it waits for the turn.
        :raises HyperhiveError: no such agent, already compacting, or no notes.
        """
        status = self.hive.agents.get(agent).status
        if agent in self._running:
            raise HyperhiveError(f"{agent} is already compacting its notes; wait for it to finish")
        if agent in self._in_turn or status.state is State.THINKING:
            self._queued.add(agent)
            return {"agent": agent, "queued": True}
        if wait:
            return await self.compact(agent, "forced")
        assert self._nursery is not None, "the compaction service runs while the hive does"
        original = self._reserve(agent)
        self._nursery.start_soon(self._compact_reserved, agent, "forced", original)
        return {"agent": agent, "started": True, "before_bytes": len(original)}

    # -- one compaction ---------------------------------------------------------------

    async def compact(self, agent: str, trigger: str) -> dict[str, Any]:
        """Back up the notes, run the session, keep its result or restore the backup.

        :return: the finished run's record.
        :raises HyperhiveError: there are no notes to compact.
        """
        original = self._reserve(agent)
        return await self._compact_reserved(agent, trigger, original)

    def _reserve(self, agent: str) -> bytes:
        """Claim ``agent`` for a compaction and return its notes; synchronous, so no turn slips in."""
        if agent in self._running:
            raise HyperhiveError(f"{agent} is already compacting its notes; wait for it to finish")
        path = self.notes_path(agent)
        original = read_notes(path)
        if not original or not original.strip():
            raise HyperhiveError(f"{agent} has no notes to compact: {path} is missing or empty")
        self._running[agent] = trio.Event()
        return original

    async def _compact_reserved(self, agent: str, trigger: str, original: bytes) -> dict[str, Any]:
        done = self._running[agent]
        status = self.hive.agents.get(agent).status
        before = (status.state, status.detail)
        try:
            return await self._compact(agent, trigger, self.notes_path(agent), original)
        finally:
            # A turn waiting for this compaction sets its own state as it goes on.
            if status.state is State.COMPACTING and agent not in self._in_turn:
                self.hive.agents.set_state(agent, *before)
            del self._running[agent]
            done.set()

    async def _compact(self, agent: str, trigger: str, path: Path, original: bytes) -> dict[str, Any]:
        hive = self.hive
        model = self.settings.model or hive.agents.get(agent).status.model
        size = len(original)
        run_id = await hive.store.write(lambda db: records.start_run(db, agent, trigger, model, size))
        backup = self.backups(agent).save(original, run_id)
        hive.agents.set_state(agent, State.COMPACTING, f"notes.md: {size} bytes")
        hive.events.publish(agent, "note", text=f"compacting notes.md ({size} bytes, {trigger})")
        hive.events.publish(agent, "compaction.started", id=run_id, trigger=trigger, before_bytes=size)
        try:
            result = await self._run_session(agent, model)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._undo(
                    agent, run_id, original=original, backup=backup, reason="cancelled: the agent or the daemon stopped"
                )
            raise
        except Exception as exc:  # exec refused (container stopped), an OS error: undo and say so
            log.exception("%s: notes compaction session failed", agent)
            result = SessionResult(False, f"{type(exc).__name__}: {exc}")
        after = read_notes(path)
        reason = judge(result, original, after)
        if reason:
            return await self._undo(
                agent, run_id, original=original, backup=backup, reason=reason, cost_usd=result.cost_usd
            )
        assert after is not None
        row = await hive.store.write(
            lambda db: records.finish_run(
                db,
                run_id,
                outcome=records.OK,
                after_bytes=len(after),
                reason=result.detail,
                cost_usd=result.cost_usd,
                backup=str(backup),
            )
        )
        hive.events.publish(agent, "note", text=f"notes.md compacted: {size} → {len(after)} bytes")
        self._finished(row)
        return row

    async def _run_session(self, agent: str, model: str) -> SessionResult:
        hive = self.hive
        spec = hive.container_spec(agent)
        view = hive.backend.view(spec)
        make_workdir(hive.paths.agent_state(agent) / WORKDIR)
        argv = compaction_argv(hive.claude_cli, view.state / NOTES, view.state / WORKDIR, model)
        async with hive.container_in_use(agent):  # an asleep agent's container starts for it
            process = await hive.backend.exec(spec, argv, hive.session_env(agent, view.state))
            with trio.move_on_after(self.settings.timeout_seconds):
                return await follow_session(process)
        return SessionResult(False, f"the session took longer than {self.settings.timeout_seconds:g}s")

    async def _undo(
        self, agent: str, run_id: int, *, original: bytes, backup: Path, reason: str, cost_usd: float = 0.0
    ) -> dict[str, Any]:
        """Put the original back, record why, and tell the agent's log."""
        outcome = records.RESTORED
        try:
            write_notes(self.notes_path(agent), original)
        except (OSError, NotesError) as exc:  # never let it take the agent's loop down
            outcome = records.NOT_RESTORED
            reason = f"{reason}; and restoring failed ({exc}): the original is in {backup}"
        row = await self.hive.store.write(
            lambda db: records.finish_run(
                db,
                run_id,
                outcome=outcome,
                after_bytes=len(original),
                reason=reason,
                cost_usd=cost_usd,
                backup=str(backup),
            )
        )
        done = "notes.md restored" if outcome == records.RESTORED else "notes.md NOT restored"
        self.hive.events.publish(agent, "error", text=f"notes compaction undone, {done}: {reason}")
        self._finished(row)
        return row

    def _finished(self, row: dict[str, Any]) -> None:
        """Tell the dashboard's panels (``compaction.finished``, the run's columns)."""
        fields = {key: value for key, value in row.items() if key != "agent"}
        self.hive.events.publish(row["agent"], "compaction.finished", **fields)

    async def last(self, agent: str | None = None, limit: int = 1) -> list[dict[str, Any]]:
        """The newest compactions: of ``agent``, or the latest of every agent."""
        return await self.hive.store.read(lambda db: records.last_runs(db, agent, limit))


def judge(result: SessionResult, original: bytes, after: bytes | None) -> str | None:
    """Why the session's work must be undone, or ``None`` when it is a good compaction."""
    if not result.ok:
        return result.detail
    if after is None:
        return "notes.md is gone, or is no longer a regular file"
    if not after.strip():
        return "the result was empty"
    if len(after) >= len(original):
        return f"the result ({len(after)} bytes) is not smaller than the original ({len(original)} bytes)"
    return None


COMPACTOR = StashKey[Compactor]("compaction")
