"""The turn loop: one per agent, driving its Claude Code session from its inbox.

```
loop:
    before_recv hooks            (a nap parks here)
    after a cancel: hold until a message newer than the cancelled batch waits
    batch = wait for messages    (wakes on commit; leased)
    thinking → run the turn      (context overflow → /compact and retry once;
                                  API error or stall → back off with jitter,
                                  batch stays leased)
    ack on success, else release → idle, turn_end, on_turn_end hooks
    Claude Code's RSS over recycle_rss_mb → restart it (--resume)
```

Every wait for mail is level-triggered: it looks at the queue after taking its
wake-up, so a message committed just before a wait begins still ends it.

Beside the loop, a watcher puts the agent to sleep after ``idle_release_seconds``
with no turn (napping and paused agents too): its Claude Code process and its
container stop, and the state shows ``asleep``. The loop's wait for mail goes on
meanwhile; a batch it takes starts the container and the CLI again, resuming the
session. Sleeping and waking both hold the session lock, and the watcher looks
again under it, so a message that commits while the agent falls asleep wakes it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlite_utils
import trio

from hyperhive_core.agents import State
from hyperhive_core.broker import Batch, Message
from hyperhive_core.claude import ClaudeSession, SessionDied, SessionOptions, TurnExit, TurnResult
from hyperhive_core.containers import ContainerEvent, ContainerEventKind
from hyperhive_core.errors import HyperhiveError, StoreError
from hyperhive_core.memory import MIB, format_bytes, process_tree, pss_bytes, rss_bytes
from hyperhive_core.names import OPERATOR
from hyperhive_core.plugins import await_all
from hyperhive_core.supervise import Backoff, root_cause, supervise

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

NOTES_FILE = "notes.md"
SPEND_CAP = "daily spend cap reached"
# The longest wait before retrying a turn that failed on the model API.
RETRY_WAIT_MAX = 300.0


def how_it_ended(status: int) -> str:
    """Claude Code's exit ``status`` in words. A sandbox (bwrap) passes a signal on as
    ``128 + signo``, the shell's convention, so 137 reads as a SIGKILL too."""
    if status < 0:
        return f"killed by signal {-status} ({_signal_name(-status)})"
    if status > 128 and (name := _signal_name(status - 128)):
        return f"Claude Code exited with status {status}: killed by signal {status - 128} ({name})"
    return f"Claude Code exited with status {status}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return ""


@dataclass
class Turn:
    """One turn, as ``on_turn_start`` and ``on_turn_end`` hooks see it."""

    agent: str
    messages: tuple[Message, ...]
    prompt: str
    started_at: float = field(default_factory=time.time)
    result: TurnResult | None = None
    exit: str = ""
    """``ok``, ``compact-retry`` (ok after compacting), ``interrupted`` or ``failure``."""
    duration_ms: int = 0
    cost_usd: float = 0.0
    """What every attempt at the turn cost together; always 0 on the rehearsal model."""


class Harness:
    """Runs one agent's turns. The daemon supervises ``run`` and restarts it on a crash."""

    def __init__(self, hive: Hive, name: str) -> None:
        self.hive = hive
        self.name = name
        self.session: ClaudeSession | None = None
        self.current_batch: Batch | None = None
        """The batch the running turn handles; ``None`` between turns."""
        self.attempt_sends: collections.Counter[str] = collections.Counter()
        """Sends made so far in the running attempt of the turn, by what they send. Each
        attempt (a retry after an API error, a crashed session, a compaction) counts from
        zero, so a replayed send gets the idempotency key it had (``core_tools.send``)."""
        self._nursery: trio.Nursery | None = None
        self._resumed = trio.Event()
        self._cancel_requested = False
        self._hold_after: int | None = None
        """After a cancelled turn, its newest message id: the loop holds until a newer message waits."""
        self._crashes: list[float] = []
        self._waiting = trio.CancelScope()
        self._retry_wait = trio.CancelScope()
        self._session_lock = trio.Lock()
        self._container_changed = False
        self._detail = ""
        """The state detail of what the turn does now; a long wait on the model shows over it."""
        self.last_death = ""
        """How the running turn's last attempt ended when its Claude Code died mid-turn; ``""`` if none did."""
        self.api_backoff = Backoff(initial=hive.claude.api_error_backoff_seconds, maximum=RETRY_WAIT_MAX)
        self.asleep = False
        """Released for being idle: no Claude Code process and no container until the next message."""
        self._container_up = False
        self._holds = 0
        """Callers running something in the container (a terminal): it stays up meanwhile."""
        self._last_active = 0.0
        self._activity = trio.Event()

    @property
    def agent(self) -> Any:
        return self.hive.agents.get(self.name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The loop, until cancelled; any exception is a crash for the supervisor."""
        hive = self.hive
        spec = hive.container_spec(self.name)
        await hive.backend.start(spec)
        self._container_up, self.asleep = True, False
        hive.agents.set_asleep(self.name, False)
        # A lease from a previous run of this loop was never finished: deliver it again.
        await hive.broker.requeue_leased(self.name)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.session = ClaudeSession(
                hive.claude_cli,
                hive.backend,
                spec,
                self._publish,
                self._session_exited,
                session_id=self.agent.session_id,
                on_wait=self._model_wait,
                stall_seconds=hive.claude.stall_seconds,
                start_slots=hive.start_slots,
            )
            self._touch()
            nursery.start_soon(self._sleep_when_idle)
            task_status.started()
            try:
                while True:
                    await self._wait_until_runnable()
                    await await_all(hive.pm.hook.before_recv(hive=hive, agent=self.name))
                    if self._hold_after is not None:
                        # The cancelled turn's messages are queued again; run them with the next one
                        # (one that arrived while the turn was still ending counts).
                        await hive.broker.wait_for_arrival(self.name, after_id=self._hold_after)
                        self._hold_after = None
                    # A pause cancels the wait (a batch already handed over stays ready).
                    batch = None
                    with trio.CancelScope() as self._waiting:
                        if not self.agent.status.paused:
                            batch = await hive.broker.wait_for_messages(self.name)
                    if batch is None:
                        continue
                    await self._wait_until_runnable()  # paused just as it arrived: the batch waits too
                    self.current_batch = batch
                    try:
                        await self._take_turn(batch)
                    finally:
                        self.current_batch = None
                        self._touch()
            finally:
                with trio.CancelScope(shield=True):
                    await self.session.stop()
                nursery.cancel_scope.cancel()

    # -- operator controls --------------------------------------------------------

    async def cancel(self) -> bool:
        """Interrupt the current turn, or its wait to retry; its messages go back to the queue. False if idle."""
        if self.current_batch is None or self.agent.status.state is not State.THINKING:
            return False
        self._cancel_requested = True
        self._retry_wait.cancel()
        if self.session is not None and self.session.running:
            with contextlib.suppress(SessionDied):  # it just exited: the turn ends anyway
                await self.session.interrupt()
        return True

    def pause(self) -> None:
        """Stop waiting for messages; the loop then holds until resumed (a running turn finishes)."""
        self._waiting.cancel()

    def resume(self, *, lift_spend_cap: bool = True) -> None:
        """Wake a paused loop (the caller clears the flag and persists the status).

        Resuming an agent the spend cap paused lifts the cap for the rest of the UTC day.
        """
        status = self.agent.status
        if lift_spend_cap and status.pause_reason.startswith(SPEND_CAP):
            status.spend_cap_lifted_on = _utc_today().isoformat()
        self._resumed.set()

    # -- the turn -------------------------------------------------------------------

    async def _wait_until_runnable(self) -> None:
        """Hold while paused; pause when today's spend reaches the cap."""
        status = self.agent.status
        while True:
            if status.paused:
                self._resumed = trio.Event()
                # A spend-cap pause lifts itself when the UTC day turns.
                deadline = _next_utc_midnight() if status.pause_reason.startswith(SPEND_CAP) else math.inf
                with trio.move_on_at(deadline):
                    await self._resumed.wait()
                if status.paused:  # a new day: the cap holds again, not lifted
                    await self.hive.resume(self.name, lift_spend_cap=False)
                continue
            cap = self.hive.claude.daily_spend_cap_usd
            if cap and status.spend_cap_lifted_on != _utc_today().isoformat():
                spent = await self.hive.store.read(lambda db: spent_today(db, self.name))
                if spent >= cap:
                    await self.hive.pause(self.name, spend_cap_reason(self.name, spent, cap))
                    continue
            return

    async def _take_turn(self, batch: Batch) -> None:
        hive = self.hive
        turn = Turn(self.name, batch.messages, render_batch(batch.messages))
        self._cancel_requested = False
        self._set_state(State.THINKING, f"{len(batch.messages)} message(s)")
        hive.events.publish(self.name, "turn_start", message_ids=batch.ids)
        await await_all(hive.pm.hook.on_turn_start(hive=hive, agent=self.name, turn=turn))
        started = trio.current_time()
        try:
            turn.result, turn.exit = await self._run_with_retries(turn)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                try:
                    await hive.broker.release(batch, error="the daemon stopped mid-turn")
                except StoreError as exc:  # the stop goes on: the lease runs out and they are delivered again
                    log.warning("%s: could not give back message(s) %s at stop: %s", self.name, batch.ids, exc)
            raise
        except Exception as exc:
            with trio.CancelScope(shield=True):
                await hive.broker.release(batch, error=f"{type(exc).__name__}: {exc}")
                self._end_turn_state()
            raise
        turn.duration_ms = round((trio.current_time() - started) * 1000)
        if turn.exit in ("ok", "compact-retry"):
            await hive.broker.ack(batch)
        elif turn.exit == "interrupted":
            await hive.broker.release(batch, error="turn cancelled by the operator")
            self._hold_after = max(batch.ids)
            hive.events.publish(self.name, "note", text="turn cancelled; its messages wait for the next one")
        else:
            # No result at all: every attempt's Claude Code died, and the last one says how.
            reason = turn.result.terminal_reason if turn.result else self.last_death or "no result"
            await hive.broker.release(batch, error=f"turn {turn.exit}: {reason}")
        await hive.store.write(lambda db: record_turn(db, turn))
        status = self.agent.status
        status.last_turn_ms, status.last_turn_at = turn.duration_ms, time.time()
        self._end_turn_state()
        hive.events.publish(
            self.name,
            "turn_end",
            duration_ms=turn.duration_ms,
            exit=turn.exit,
            tool_calls=turn.result.tool_calls if turn.result else 0,
            tools=turn.result.tools_used if turn.result else [],
            cost_usd=turn.cost_usd,
            usage=turn.result.usage if turn.result else {},
        )
        await await_all(hive.pm.hook.on_turn_end(hive=hive, agent=self.name, turn=turn))
        await self.apply_queued_model()
        await self._recycle_if_bloated()

    def _end_turn_state(self) -> None:
        if self.agent.status.state in (State.THINKING, State.COMPACTING):
            self.hive.agents.set_state(self.name, State.IDLE)

    async def _run_with_retries(self, turn: Turn) -> tuple[TurnResult | None, str]:
        """Run the turn, recovering from what can be recovered; return the last result and the exit kind.

        Adds what each attempt cost to ``turn.cost_usd``.
        """
        attempts = self.hive.claude.turn_attempts
        compacted = False
        api_failures = deaths = 0
        result = None
        self.last_death = ""
        for attempt in range(1, attempts + 1):
            self.attempt_sends.clear()
            try:
                await self._ensure_session()
                assert self.session is not None
                if self._cancel_requested:  # while it waited to retry, or while the CLI started
                    return result, "interrupted"
                result = self._priced(turn, await self.session.run_turn(turn.prompt))
            except SessionDied as exc:
                self.last_death = str(exc)
                await self._persist_session_id()
                deaths += 1
                if attempt < attempts:  # a CLI that dies at once is not restarted in a tight loop
                    await self._wait_to_retry(
                        "Claude Code exited", f"{exc}; restarting it with --resume", deaths, attempt + 1
                    )
                else:
                    self.hive.events.publish(self.name, "error", text=str(exc))
                continue
            await self._persist_session_id()
            if self._cancel_requested and result.exit in (TurnExit.INTERRUPTED, TurnExit.STALLED):
                return result, "interrupted"
            if result.exit is TurnExit.CONTEXT_OVERFLOW and not compacted:
                compacted = True
                self._set_state(State.COMPACTING, "context overflow: /compact, then retry")
                self.hive.events.publish(self.name, "note", text="context overflow: compacting and retrying once")
                self._priced(turn, await self.session.compact())
                self._set_state(State.THINKING, "retrying after /compact")
                continue
            if result.exit in (TurnExit.API_ERROR, TurnExit.STALLED):
                api_failures += 1
                if attempt < attempts:
                    stalled = result.exit is TurnExit.STALLED
                    cause = "model API stalled" if stalled else "model API error"
                    what = cause if stalled else f"{cause} ({result.text[:200]})"
                    await self._wait_to_retry(cause, what, api_failures, attempt + 1)
                continue
            if result.exit is TurnExit.OK:
                return result, "compact-retry" if compacted else "ok"
            return result, "failure"
        return result, "failure"

    def _priced(self, turn: Turn, result: TurnResult) -> TurnResult:
        """Count ``result``'s cost into the turn's; the rehearsal model costs nothing, whatever the CLI says."""
        if self.hive.rehearsal is not None:
            result.cost_usd = 0.0
        turn.cost_usd += result.cost_usd
        return result

    async def _wait_to_retry(self, cause: str, what: str, failures: int, attempt: int) -> None:
        """Back off (with jitter) before the next attempt at a turn that failed by ``cause``; a cancel ends the wait.

        ``what`` is the failure in full, for the live tail; ``cause``, shortly, for the state detail.
        """
        delay = self.api_backoff.delay(failures)
        of = f"attempt {attempt} of {self.hive.claude.turn_attempts}"
        self.hive.events.publish(self.name, "error", text=f"{what}; retrying the turn in {delay:.1f}s ({of})")
        self._set_state(State.THINKING, f"{cause}; retrying in {delay:.0f}s ({of})")
        with trio.CancelScope() as self._retry_wait:
            await trio.sleep(delay)
        self._set_state(State.THINKING, of)

    def _set_state(self, state: State, detail: str) -> None:
        self._detail = detail
        self.hive.agents.set_state(self.name, state, detail)

    def _model_wait(self, text: str) -> None:
        """The session's report of a long wait on the model API, shown as the detail; ``""`` once it ends."""
        state = self.agent.status.state
        if state in (State.THINKING, State.COMPACTING):
            self.hive.agents.set_state(self.name, state, text or self._detail)

    def container_changed(self) -> None:
        """The agent's container spec changed: restart its container (and session) before the next turn."""
        self._container_changed = True

    async def _ensure_session(self, *, wake: bool = True) -> None:
        """Start the CLI if it is not running, and its container first if need be. One start
        at a time: a restart after a crash and a turn's own start must not both start one.

        :param wake: start it even if the agent is asleep (a turn does; a restart after a crash does not).
        """
        assert self.session is not None
        assert self._nursery is not None
        async with self._session_lock:
            if self.asleep and not wake:
                return
            if self._container_changed:
                self._container_changed = False
                await self.session.stop()  # the next start resumes the conversation
                await self._stop_container()
            if not self._container_up:
                await self._start_container()
            if self.asleep:
                self.asleep = False
                self.hive.agents.set_asleep(self.name, False)
                self.hive.events.publish(self.name, "note", text="waking: resuming its session")
            if not self.session.running:
                await self.session.start(self._nursery, await self.session_options())
        self._touch()

    async def _start_container(self) -> None:
        assert self.session is not None
        self.session.spec = self.hive.container_spec(self.name)
        await self.hive.backend.start(self.session.spec)
        self._container_up = True

    async def _stop_container(self) -> None:
        assert self.session is not None
        self._container_up = False
        await self.hive.backend.stop(self.session.spec)

    @contextlib.asynccontextmanager
    async def container_in_use(self) -> AsyncIterator[None]:
        """Keep the agent's container up while the caller runs something in it (a terminal);
        an asleep agent's container starts for it, and its Claude Code stays asleep."""
        self._holds += 1
        self._touch()
        try:
            async with self._session_lock:
                if not self._container_up:
                    await self._start_container()
            yield
        finally:
            self._holds -= 1
            self._touch()

    # -- sleep ----------------------------------------------------------------------

    def _touch(self) -> None:
        """Something happened (a turn began or ended, a start, a terminal): the idle clock starts over."""
        self._last_active = trio.current_time()
        self._activity.set()

    def _may_sleep(self) -> bool:
        assert self.session is not None
        return self.current_batch is None and not self._holds and (self._container_up or self.session.running)

    async def _sleep_when_idle(self) -> None:
        """Put the agent to sleep once nothing happened for ``idle_release_seconds``."""
        idle = self.hive.claude.idle_release_seconds
        if not idle:
            return
        while True:
            self._activity = trio.Event()
            if not self._may_sleep():
                await self._activity.wait()
                continue
            with trio.move_on_at(self._last_active + idle) as quiet:
                await self._activity.wait()
            if quiet.cancelled_caught:
                await self._sleep(idle)

    async def _sleep(self, idle: float) -> None:
        """Stop the CLI and the container; the queue, the session and the state stay for the next message."""
        assert self.session is not None
        async with self._session_lock:
            # A turn took a batch meanwhile (it wakes the agent), or something else happened.
            if not self._may_sleep() or trio.current_time() < self._last_active + idle:
                return
            if not self.asleep:  # else only the container a terminal started goes
                self.hive.events.publish(self.name, "note", text=f"idle for {idle:g}s: going to sleep")
                log.info("%s: asleep after %gs idle; its Claude Code process and container stop", self.name, idle)
            await self.session.stop()
            await self._stop_container()
            self.asleep = True
            self.hive.agents.set_asleep(self.name, True)

    # -- memory ---------------------------------------------------------------------

    def recycle_rss_mb(self) -> int:
        """The RSS in MiB past which the CLI is restarted: the agent's own, else ``[claude]``'s; 0 never."""
        own = self.agent.config.recycle_rss_mb
        return self.hive.claude.recycle_rss_mb if own is None else own

    async def _recycle_if_bloated(self) -> None:
        """Between turns: restart a CLI whose process tree outgrew ``recycle_rss_mb`` (a leak), resuming its session."""
        limit = self.recycle_rss_mb()
        pid = self.session.pid if self.session is not None else None
        if not limit or pid is None:
            return
        rss = rss_bytes(process_tree(pid))
        if rss <= limit * MIB:
            return
        text = f"recycled: RSS {format_bytes(rss)} over recycle_rss_mb {limit}"
        log.warning("%s: %s; restarting Claude Code with --resume", self.name, text)
        self.hive.events.publish(self.name, "note", text=f"{text}; restarting it with --resume")
        assert self.session is not None
        await self.session.stop()
        await self._ensure_session()

    async def memory_bytes(self) -> int:
        """What the agent holds in memory: its cgroup's usage where it has one, else the
        PSS of its Claude Code process tree; 0 while nothing of it runs."""
        spec = self.hive.container_spec(self.name)
        usage = (await self.hive.backend.limits(spec)).get("usage") if self._container_up else None
        if usage and usage.get("memory_mb") is not None:
            return round(usage["memory_mb"] * MIB)
        pid = self.session.pid if self.session is not None else None
        if pid is None:
            return 0
        return await trio.to_thread.run_sync(lambda: pss_bytes(process_tree(pid)))

    async def session_options(self) -> SessionOptions:
        """The CLI's options for this agent, after ``configure_session`` hooks."""
        hive = self.hive
        agent = self.agent
        view = hive.backend.view(hive.container_spec(self.name))
        options = SessionOptions(
            model=agent.status.model,
            allowed_tools=[*hive.claude.allowed_tools, *hive.surface.allowed_tools(agent.role)],
            system_prompt=[system_prompt(hive, agent, str(view.state / NOTES_FILE))],
            mcp_config=hive.surface.mcp_config(view.socket),
            env=hive.session_env(self.name, view.state),
        )
        await await_all(hive.pm.hook.configure_session(hive=hive, agent=self.name, options=options))
        return options

    async def _persist_session_id(self) -> None:
        assert self.session is not None
        if self.session.session_id and self.session.session_id != self.agent.session_id:
            self.agent.session_id = self.session.session_id
            await self.hive.agents.remember(self.name, session_id=self.session.session_id)

    async def apply_queued_model(self) -> None:
        """Switch to the queued model: the next turn resumes the session with the new ``--model``."""
        status = self.agent.status
        if status.queued_model is None:
            return
        status.model, status.queued_model, status.model_switched_at = status.queued_model, None, time.time()
        await self.hive.agents.remember(self.name, model_switched_at=status.model_switched_at)
        if self.session is not None:
            await self.session.stop()  # the next turn starts it with --resume and the new --model
        self.hive.events.publish(self.name, "note", text=f"model switched to {status.model}")
        self.hive.agents.publish_status(self.name)

    async def _session_exited(self, status: int, log_tail: tuple[str, ...]) -> None:
        """The agent's container process died unasked: report it, and restart it with backoff.

        Mid-turn, the turn's own retry restarts it; between turns, this does.
        """
        detail = how_it_ended(status)
        if cause := self.hive.backend.exit_cause(self.hive.container_spec(self.name)):
            detail = f"{cause} ({detail})"
        await self.hive.container_event(ContainerEvent(self.name, ContainerEventKind.CRASHED, detail, log_tail))
        now = trio.current_time()
        self._crashes = [at for at in self._crashes if now - at < CRASH_WINDOW] + [now]
        if self.agent.status.state is State.THINKING:
            return
        delay = Backoff().delay(len(self._crashes))
        self.hive.events.publish(self.name, "note", text=f"{detail}; restarting it in {delay:.1f}s")
        await trio.sleep(delay)
        if self.agent.status.state is not State.THINKING:
            await self._ensure_session(wake=False)  # asleep meanwhile: the next message starts it

    async def _publish(self, kind: str, data: dict[str, Any]) -> None:
        self.hive.events.publish(self.name, kind, **data)


CRASH_LIMIT = 5
CRASH_WINDOW = 60.0


async def supervise_agent(
    hive: Hive, harness: Harness, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run an agent's loop, restarting it with backoff; five crashes in a minute mark it failed.

    One agent's crash never cancels another's loop: each runs under its own supervisor.
    """
    crashes: list[float] = []

    async def crashed(crash: BaseException) -> bool:
        exc = root_cause(crash)
        hive.events.publish(harness.name, "error", text=f"turn loop crashed: {type(exc).__name__}: {exc}")
        if isinstance(exc, StoreError):
            # The database's fault (a full disk, a lock held elsewhere), not the agent's: its loop
            # retries with backoff until the database takes writes again, and is never failed for it.
            return False
        now = trio.current_time()
        crashes[:] = [at for at in crashes if now - at < CRASH_WINDOW] + [now]
        if len(crashes) < CRASH_LIMIT:
            return False
        status = hive.agents.get(harness.name).status
        status.failed = True
        hive.agents.publish_status(harness.name)
        reason = f"{CRASH_LIMIT} crashes within {CRASH_WINDOW:.0f}s; last: {type(exc).__name__}: {exc}"
        if harness.name != hive.agents.manager:
            try:
                await hive.notify(hive.agents.manager, "agent_failed", agent=harness.name, reason=reason)
            except HyperhiveError as refused:  # the daemon goes on: the agent's status says it failed
                log.warning("agent %s failed (%s); the manager was not told: %s", harness.name, reason, refused)
        return True

    await supervise(f"agent {harness.name}", harness.run, on_crash=crashed, task_status=task_status)


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def spend_cap_reason(agent: str, spent: float, cap: float) -> str:
    """The pause reason when ``agent`` reached the cap: what it spent, and how to lift the cap."""
    return (
        f"{SPEND_CAP}: ${spent:.2f} of ${cap:.2f} today (UTC). To lift it for the rest of the day, "
        f"resume the agent (`hyperhive resume {agent}`, or resume on the dashboard); "
        "or raise [claude] daily_spend_cap_usd"
    )


def _next_utc_midnight() -> float:
    """The trio clock time of the next UTC midnight."""
    now = datetime.datetime.now(datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return trio.current_time() + (midnight - now).total_seconds()


# -- prompts ----------------------------------------------------------------------


def render_batch(messages: tuple[Message, ...]) -> str:
    """The turn's prompt: each message with its id, sender and kind."""
    count = f"{len(messages)} new message{'s' if len(messages) != 1 else ''}"
    parts = [f"{count}. Reply with the send tool; to reach the human, send to {OPERATOR!r}."]
    for message in messages:
        body = render_event(message.body) if message.kind == "event" else message.body
        parts.append(f"--- message {message.id} from {message.sender} ({message.kind}) ---\n{body}")
    return "\n\n".join(parts)


def render_event(body: str) -> str:
    """A hive event as readable text: its type, then one line per field."""
    try:
        fields = json.loads(body)
        event = fields.pop("event")
    except (ValueError, KeyError, AttributeError):
        return body
    lines = [f"hive event: {event}"]
    lines += [f"{key}: {value if isinstance(value, str) else json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines)


def system_prompt(hive: Hive, agent: Any, notes_path: str) -> str:
    """Who the agent is, whom it may talk to, and how to keep notes."""
    role = (
        "the manager of this hive: you coordinate the other agents and may ask the operator to approve changes"
        if agent.is_manager
        else "an agent in this hive"
    )
    peers = ", ".join(hive.agents.peers(agent.name))
    tools = ", ".join(sorted(hive.surface.tool_names(agent.role)))
    text = (
        f"You are {agent.name}, {role}. A hyperhive is a swarm of Claude Code agents on one host, "
        "steered by a human operator through a dashboard.\n"
        "Messages reach you in turns. Whatever you want someone to read, send it with the send tool; "
        "plain replies only appear in your live log.\n"
        f"You may message: {peers}. The peers tool lists them again if that changes.\n"
        f"Your hive tools: {tools}.\n"
        f"Keep durable knowledge (decisions, facts, open work) in {notes_path}: it survives restarts, "
        "and your conversation may not. Read it when you start; keep it short and current."
    )
    if agent.config.instructions:
        text += f"\n\nYour instructions:\n{agent.config.instructions}"
    return text


# -- turn records -------------------------------------------------------------------


def record_turn(db: sqlite_utils.Database, turn: Turn) -> None:
    db.table("turns").insert(
        {
            "agent": turn.agent,
            "started_at": turn.started_at,
            "duration_ms": turn.duration_ms,
            "exit": turn.exit,
            "cost_usd": turn.cost_usd,
            "tool_calls": turn.result.tool_calls if turn.result else 0,
            "message_ids": json.dumps([message.id for message in turn.messages]),
        }
    )


def spent_today(db: sqlite_utils.Database, agent: str) -> float:
    """Model spend of ``agent`` since UTC midnight, in USD."""
    midnight = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    row = db.execute(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM turns WHERE agent = ? AND started_at >= ?",
        [agent, midnight.timestamp()],
    ).fetchone()
    return float(row[0])


def m004_turns(db: sqlite_utils.Database) -> None:
    db.table("turns").create(
        {
            "id": int,
            "agent": str,
            "started_at": float,
            "duration_ms": int,
            "exit": str,
            "cost_usd": float,
            "tool_calls": int,
            "message_ids": str,
        },
        pk="id",
    )
    db.table("turns").create_index(["agent", "started_at"])
