"""ClaudeSession: one long-lived Claude Code process per agent, in stream-json mode.

Each turn writes one user message to the process's stdin and reads its stdout
events up to the ``result``. The process keeps the conversation warm between turns
(tens of milliseconds to the first model request, against about half a second for
a fresh ``claude -p``). It is restarted with ``--resume`` when it dies, when the
model changes, or when the agent's config is re-applied.

A turn whose model request makes no progress for ``stall_seconds`` is a stall: the
session interrupts it (and kills the process if that goes unanswered), and the
turn ends ``stalled`` for the harness to retry. Progress is any event of the
model's streamed reply: with ``--include-partial-messages`` the CLI prints one
``stream_event`` line per server-sent event it receives (every delta, so a long
generation is a steady stream of lines; keep-alive pings are not passed on). The
clock runs only while the CLI waits on the model: from the prompt, or from the
last tool result, to the end of the reply. It stops while a tool runs, and a
``system/api_retry`` (the CLI waiting on purpose before retrying a failed request)
pushes the deadline back by the retry's delay.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from hyperhive_core.agentenv import CLAUDE_DIR, PROJECTS
from hyperhive_core.config import option
from hyperhive_core.containers import ContainerBackend, ContainerProcess, ContainerSpec
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.lines import LineReader, LineTooLong
from hyperhive_core.models import InvalidModel, check_extra_models, check_model

log = logging.getLogger(__name__)

# The CLI pinned by the Makefile, installed into the source tree.
BUNDLED_CLI = Path(__file__).resolve().parent.parent / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
STDERR_LINES = 50
MAX_EVENT_LINE = 16 * 1024 * 1024
CONTEXT_OVERFLOW = "prompt_too_long"
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
INTERRUPTED = ("aborted_streaming", "aborted_tools", "interrupted")
# The pinned CLI prints each with this prefix; such lines are only counted, never parsed.
STREAM_EVENT_PREFIX = b'{"type":"stream_event"'
STREAM_EVENT: dict[str, Any] = {"type": "stream_event"}
# How often, at most, a long wait on the model is reported; the first report comes after two.
WAIT_REPORT_SECONDS = 5.0
# How long a stalled CLI has to answer the interrupt before it is killed.
INTERRUPT_GRACE_SECONDS = 10.0
# How long a starting CLI may take to answer its initialize request; past it the start
# gives its slot back (and the turn goes on: a CLI that never answers fails there).
READY_TIMEOUT_SECONDS = 30.0
# What the CLI says, and exits with 1, when it cannot read the transcript it is told to resume.
NO_CONVERSATION = "No conversation found with session ID:"
# Every model request streams, so the stall clock sees its progress: without this
# the CLI falls back to an unstreamed request after a broken stream, silent until done.
SESSION_ENV = {"CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1"}


@dataclass
class ClaudeSection:
    """The Claude Code CLI and the model it talks to."""

    cli: Path | None = option(
        None,
        help="The claude executable. Default: the pinned CLI that `make up` installs into\n"
        ".tools/claude, else `claude` on PATH.",
    )
    model: str = option(
        "haiku",
        help="The default model; an agent's config can override it. An alias (haiku, sonnet,\n"
        "opus, ...), a full model id (claude-sonnet-4-5), or one of extra_models.",
    )
    extra_models: list[str] = option(
        [],
        help="Model names to allow besides the CLI's aliases and full claude-... ids, e.g. a\n"
        "proxy's own names. Each starts with a letter or digit.",
    )
    rehearsal_scenario: Path | None = option(
        None,
        help="Run every agent on the rehearsal model with this scenario file, even with\n"
        "credentials. Default: the rehearsal model with the demo scenario only when there\n"
        "are no Claude credentials. Format: docs/rehearsal.md.",
    )
    base_url: str | None = option(
        None,
        help="The Messages API endpoint (ANTHROPIC_BASE_URL). Without it and without\n"
        "ANTHROPIC_API_KEY, the hive runs on the rehearsal model.",
    )
    allowed_tools: list[str] = option(
        ["Bash", "Read", "Edit", "Write", "Glob", "Grep"],
        help="Claude Code tools every agent may use without asking, besides the hive's own.",
    )
    daily_spend_cap_usd: float = option(
        5.0, help="Pause an agent once its model spend today (UTC) reaches this; 0 means no cap."
    )
    api_retries: int = option(2, help="Retries the CLI itself makes on a failed model request.")
    api_error_backoff_seconds: float = option(
        5.0,
        help="Longest first wait before the hive retries a turn that failed on the model API\n"
        "(an error or a stall); doubles each time, and each wait is drawn at random below it.",
    )
    turn_attempts: int = option(
        5, help="Attempts at one turn (API errors, stalls, crashes) before its messages go back."
    )
    stall_seconds: float = option(
        120.0,
        help="Interrupt and retry a turn whose model request streams nothing for this long\n"
        "(time spent running tools does not count); 0 never does.",
    )
    idle_release_seconds: float = option(
        600.0,
        help="Put an agent to sleep after this long with nothing to do: its Claude Code\n"
        "process and container stop, and the next message resumes its session. 0: never.",
    )
    recycle_rss_mb: int = option(
        1024,
        help="Restart an agent's Claude Code between turns, resuming its session, once the\n"
        "process tree's RSS passes this many MiB (a leak). 0: never. An agent may set its own.",
    )
    max_concurrent_starts: int = option(
        0,
        help="Claude Code processes starting at once, at most; more wait their turn, so a wake\n"
        "storm cannot starve the daemon. 0: the number of CPU cores.",
    )

    def __post_init__(self) -> None:
        try:
            check_extra_models(self.extra_models)
        except InvalidModel as exc:
            raise ConfigError(str(exc)) from None
        try:
            check_model(self.model, self.extra_models)
        except InvalidModel as exc:
            raise ConfigError(f"[claude] model: {exc}") from None
        for key in ("api_error_backoff_seconds", "stall_seconds", "idle_release_seconds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"[claude] {key} must be zero or more seconds, not {getattr(self, key)}")
        if self.turn_attempts < 1:
            raise ConfigError(f"[claude] turn_attempts must be at least 1, not {self.turn_attempts}")
        for key, zero in (("recycle_rss_mb", "never"), ("max_concurrent_starts", "one per CPU core")):
            if getattr(self, key) < 0:
                raise ConfigError(f"[claude] {key} must be 0 ({zero}) or more, not {getattr(self, key)}")

    @property
    def start_slots(self) -> int:
        """How many Claude Code processes may start at once."""
        return self.max_concurrent_starts or os.cpu_count() or 1


class MissingCli(HyperhiveError):
    """The Claude Code CLI is not installed where config says."""


def find_cli(configured: Path | None) -> Path:
    """The claude executable to run; a clear error says how to install it."""
    if configured is not None:
        if os.access(configured, os.X_OK):
            return configured
        raise MissingCli(f"[claude] cli = {configured} is not an executable file; fix the path, or remove it")
    if os.access(BUNDLED_CLI, os.X_OK):
        return BUNDLED_CLI
    found = shutil.which("claude")
    if found:
        return Path(found)
    raise MissingCli(
        "the Claude Code CLI is not installed. Run `make install` (it installs the pinned "
        "@anthropic-ai/claude-code into .tools/claude), or set [claude] cli to its path"
    )


class TurnExit(enum.StrEnum):
    OK = "ok"
    CONTEXT_OVERFLOW = "context_overflow"
    API_ERROR = "api_error"
    STALLED = "stalled"
    """No progress from the model API for ``stall_seconds``; the session interrupted the turn."""
    INTERRUPTED = "interrupted"
    FAILURE = "failure"


@dataclass
class TurnResult:
    """What one turn came to, from the CLI's ``result`` event."""

    exit: TurnExit
    text: str
    duration_ms: int
    cost_usd: float
    tool_calls: int
    tools_used: list[str]
    usage: dict[str, Any]
    permission_denials: list[dict[str, Any]]
    terminal_reason: str | None
    session_id: str | None


def classify(result: dict[str, Any]) -> TurnExit:
    """Key on ``is_error`` and ``terminal_reason``; ``subtype`` says success even for API errors."""
    reason = result.get("terminal_reason")
    if not result.get("is_error"):
        return TurnExit.OK
    if reason == CONTEXT_OVERFLOW:
        return TurnExit.CONTEXT_OVERFLOW
    if reason == "api_error" or result.get("api_error_status"):
        return TurnExit.API_ERROR
    if reason in INTERRUPTED:
        return TurnExit.INTERRUPTED
    return TurnExit.FAILURE


class SessionDied(HyperhiveError):
    """The Claude Code process exited in the middle of a turn."""


@dataclass
class SessionOptions:
    """How the CLI is started; ``configure_session`` hooks may change any of it."""

    model: str
    allowed_tools: list[str]
    system_prompt: list[str]
    mcp_config: dict[str, Any]
    env: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)


EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]
_NOTHING_YET: Any = object()


class ModelWatch:
    """One turn's watch on the model API: whether the CLI waits on it, since when, and when that is a stall."""

    def __init__(self, stall_seconds: float, now: float) -> None:
        self.stall_seconds = stall_seconds
        self.report_every = min(WAIT_REPORT_SECONDS, stall_seconds / 4) if stall_seconds else WAIT_REPORT_SECONDS
        self.running_tools: set[str] = set()
        self.shown = False
        self._progress(now)

    def _progress(self, now: float) -> None:
        self.silent_since = now
        self.deadline = now + self.stall_seconds if self.stall_seconds else math.inf
        self.retry = ""
        self.shown = False
        self.next_report = now + 2 * self.report_every

    @property
    def waiting(self) -> bool:
        """Whether the CLI waits on the model, rather than on a tool."""
        return not self.running_tools

    def saw(self, event: dict[str, Any], now: float) -> bool:
        """Take in one event; return True when it ends a wait that was reported."""
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "api_retry":
            status = event.get("error_status")
            cause = f"HTTP {status}" if status else f"{event.get('error') or 'connection'} error"
            self.retry = f"{cause}, retry {event.get('attempt')} of {event.get('max_retries')}"
            # The CLI waits on purpose before it retries; that wait is not a stall.
            retry_at = now + (event.get("retry_delay_ms") or 0) / 1000
            self.deadline = max(self.deadline, retry_at + self.stall_seconds) if self.stall_seconds else math.inf
            self.next_report = now  # shown at once
            return False
        if kind not in ("stream_event", "assistant", "user", "result"):
            return False
        content = event.get("message", {}).get("content") if kind in ("assistant", "user") else None
        for block in content if isinstance(content, list) else ():
            if block.get("type") == "tool_use":
                self.running_tools.add(block.get("id", ""))
            elif block.get("type") == "tool_result":
                self.running_tools.discard(block.get("tool_use_id", ""))
        shown = self.shown
        self._progress(now)
        return shown

    def check_at(self) -> float:
        """When to look again: the next report or the stall deadline, while the model is awaited."""
        return min(self.deadline, self.next_report) if self.waiting else math.inf

    def stalled(self, now: float) -> bool:
        return self.waiting and now >= self.deadline

    def report(self, now: float) -> str:
        """The wait as the agent's state detail shows it, e.g. ``waiting on model API · 45s``."""
        self.shown = True
        self.next_report = now + self.report_every
        text = f"waiting on model API · {now - self.silent_since:.0f}s"
        return f"{text} · {self.retry}" if self.retry else text


class ClaudeSession:
    """The agent's Claude Code process, started on first use and kept warm.

    :param on_event: awaited with ``(kind, data)`` for each live event:
        ``assistant_text``, ``tool_use``, ``tool_result``, ``permission_denied``,
        ``note`` and ``error``.
    :param on_exit: awaited with the exit status and the last stderr lines when
        the process exits without ``stop`` (a crash, or killed from outside).
    :param on_wait: called while a turn waits long on the model API, with the wait
        as text (``waiting on model API · 45s``), and with ``""`` once it ends.
    :param stall_seconds: a turn without progress from the model for this long is
        interrupted and ends ``stalled``; 0 never.
    :param start_slots: shared by every session of the hive: a start holds one from
        exec until the CLI is ready, so only so many start at once.
    """

    def __init__(
        self,
        cli: Path,
        backend: ContainerBackend,
        spec: ContainerSpec,
        on_event: EventSink,
        on_exit: Callable[[int, tuple[str, ...]], Awaitable[None]],
        *,
        session_id: str | None = None,
        on_wait: Callable[[str], None] = lambda text: None,
        stall_seconds: float = 0.0,
        start_slots: trio.CapacityLimiter | None = None,
    ) -> None:
        self.cli = cli
        self.backend = backend
        self.spec = spec
        self.on_event = on_event
        self.on_exit = on_exit
        self.on_wait = on_wait
        self.stall_seconds = stall_seconds
        self.start_slots = start_slots or trio.CapacityLimiter(1)
        self.session_id = session_id
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._process: ContainerProcess | None = None
        self._stderr_done = trio.Event()
        self._options: SessionOptions | None = None
        self._lines: LineReader | None = None  # over the running process's stdout
        self._cost_so_far = 0.0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def command(self, options: SessionOptions) -> list[str]:
        """The CLI's argument list for these options."""
        argv = [
            str(self.cli),
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            # A line per streamed model event: the progress a stall is measured against.
            "--include-partial-messages",
            # One argument: even a model name that slipped past check_model is never an option.
            f"--model={options.model}",
            "--mcp-config",
            json.dumps(options.mcp_config),
            "--strict-mcp-config",
            # The CLI's config dir is in the agent's own /state: settings files there are the
            # agent's to write, so none are read; the hive passes everything with --settings.
            "--setting-sources",
            "",
            "--allowedTools",
            ",".join(options.allowed_tools),
        ]
        if options.system_prompt:
            argv += ["--append-system-prompt", "\n\n".join(options.system_prompt)]
        if options.settings:
            # Inline, not a file: a file in the agent's own state dir could be swapped for a symlink.
            argv += ["--settings", json.dumps(options.settings)]
        if self.session_id and self.transcript_exists():
            argv += ["--resume", self.session_id]
        else:
            self.session_id = str(uuid.uuid4())
            argv += ["--session-id", self.session_id]
        return argv + options.extra_args

    def transcript_exists(self) -> bool:
        """Whether the CLI saved this session (under ``$CLAUDE_CONFIG_DIR/projects``, in the
        agent's state dir) and can resume it.

        A process killed before its first write leaves nothing to resume; it then
        starts a fresh session instead of failing on ``--resume``.
        """
        projects = self.spec.state_dir / CLAUDE_DIR / PROJECTS
        return any(projects.glob(f"*/{self.session_id}.jsonl"))

    async def start(self, nursery: trio.Nursery, options: SessionOptions) -> None:
        """Start the process (resuming the session if there is one) and wait until it is ready.

        Starting is the CPU-heavy part of a session's life, so it holds one of
        ``start_slots`` from exec until the CLI answers an ``initialize`` control
        request (the CLI prints nothing before its first input), or exits, or
        ``READY_TIMEOUT_SECONDS`` pass.
        """
        await self.stop()
        async with self.start_slots:
            resumed = await self._launch(nursery, options)
            if resumed and (transcript := await self._unresumable()):
                # A damaged transcript would fail every start from now on: keep it aside, start afresh.
                kept = transcript.with_name(f"{transcript.name}.unreadable-{int(time.time())}")
                transcript.rename(kept)
                text = (
                    f"Claude Code cannot resume session {self.session_id} (its transcript is damaged); "
                    f"the transcript is kept as {kept.name} and a fresh session starts: "
                    "the conversation so far is lost, the agent's /state is not"
                )
                log.warning("%s: %s", self.spec.agent, text)
                await self.on_event("error", {"text": text})
                await self._launch(nursery, options)

    async def _launch(self, nursery: trio.Nursery, options: SessionOptions) -> bool:
        """Exec the CLI and wait until it is ready; whether it resumes a session."""
        argv = self.command(options)
        log.info("%s: starting claude (model %s, session %s)", self.spec.agent, options.model, self.session_id)
        self._process = await self.backend.exec(self.spec, argv, {**SESSION_ENV, **options.env})
        self._options = options
        self._lines = None
        self._cost_so_far = 0.0
        self.stderr_tail.clear()
        self._stderr_done = trio.Event()
        nursery.start_soon(self._drain_stderr, self._process, self._stderr_done)
        nursery.start_soon(self._watch_exit, self._process)
        await self._wait_until_ready()
        return "--resume" in argv

    async def _unresumable(self) -> Path | None:
        """The transcript the CLI just refused to resume, when that is why it exited; else None."""
        assert self._process is not None
        if self._process.returncode in (None, 0):
            return None
        with trio.move_on_after(2):
            await self._stderr_done.wait()
        if not any(f"{NO_CONVERSATION} {self.session_id}" in line for line in self.stderr_tail):
            return None
        projects = self.spec.state_dir / CLAUDE_DIR / PROJECTS
        return next(projects.glob(f"*/{self.session_id}.jsonl"), None)

    async def _wait_until_ready(self) -> None:
        """Ask the CLI to initialize and read up to its answer; an exit is for the turn to find."""
        with trio.move_on_after(READY_TIMEOUT_SECONDS), contextlib.suppress(SessionDied):
            request_id = await self._control("initialize")
            while (event := await self._next_event()) is not None:
                answer = event.get("response") if event.get("type") == "control_response" else None
                if isinstance(answer, dict) and answer.get("request_id") == request_id:
                    return
            return
        log.warning("%s: Claude Code did not answer within %gs of starting", self.spec.agent, READY_TIMEOUT_SECONDS)

    async def _watch_exit(self, process: ContainerProcess) -> None:
        """Report an exit nobody asked for; ``stop`` detaches the process first, so it is not one."""
        status = await process.wait()
        if process is self._process:
            with trio.move_on_after(2):
                await self._stderr_done.wait()  # so the report has the last words
            await self.on_exit(status, tuple(self.stderr_tail))

    async def stop(self) -> None:
        """End the process; the conversation stays on disk for ``--resume``."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with trio.move_on_after(5) as cleanup:
            cleanup.shield = True
            assert process.stdin is not None
            await process.stdin.aclose()  # EOF: the CLI exits once idle
            await process.wait()
        await _kill(process)

    async def kill(self) -> None:
        """End the process at once (it is hung); the conversation stays on disk for ``--resume``."""
        process, self._process = self._process, None
        if process is not None:
            await _kill(process)

    async def run_turn(self, prompt: str) -> TurnResult:
        """Send ``prompt`` as one user message and follow the turn to its result.

        :raises SessionDied: the process exited before the result.
        """
        await self._write({"type": "user", "message": {"role": "user", "content": prompt}})
        return await self._follow_turn()

    async def compact(self) -> TurnResult:
        """Ask the CLI to compact its own context (``/compact``)."""
        await self._write({"type": "user", "message": {"role": "user", "content": "/compact"}})
        return await self._follow_turn()

    async def interrupt(self) -> None:
        """Stop the current turn; its result arrives as ``interrupted``."""
        await self._control("interrupt")

    async def _control(self, subtype: str) -> str:
        """Send a control request of ``subtype``; return its id, which its answer carries."""
        request_id = uuid.uuid4().hex
        await self._write({"type": "control_request", "request_id": request_id, "request": {"subtype": subtype}})
        return request_id

    async def _write(self, message: dict[str, Any]) -> None:
        if self._process is None:
            raise SessionDied("the Claude Code process is not running")
        if self._process.returncode is not None:  # it died before reading this: say how
            raise SessionDied(await self._exit_reason("before it read its input"))
        assert self._process is not None
        assert self._process.stdin is not None
        try:
            await self._process.stdin.send_all(json.dumps(message).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SessionDied(f"the Claude Code process stopped reading its input: {exc}") from None

    async def _follow_turn(self) -> TurnResult:
        tools_used: list[str] = []
        results: dict[str, str] = {}  # tool_use_id → what the tool answered
        denied: set[str] = set()  # tool_use_ids already reported as permission_denied
        watch = ModelWatch(self.stall_seconds, trio.current_time())
        give_up_at: float | None = None  # once a stall is interrupted: when to kill the CLI instead
        while True:
            event = _NOTHING_YET
            with trio.move_on_at(watch.check_at() if give_up_at is None else give_up_at):
                event = await self._next_event()
            now = trio.current_time()
            if event is _NOTHING_YET:
                if give_up_at is not None:
                    await self.on_event("error", {"text": "Claude Code did not answer the interrupt; killing it"})
                    await self.kill()
                    return self._stalled(tools_used)
                if watch.stalled(now):
                    silent = now - watch.silent_since
                    await self.on_event("error", {"text": f"no progress from the model API for {silent:.0f}s (stall)"})
                    give_up_at = now + min(INTERRUPT_GRACE_SECONDS, self.stall_seconds)
                    with trio.move_on_at(give_up_at):  # a hung CLI may not even read its input
                        await self.interrupt()
                else:
                    self.on_wait(watch.report(now))
                continue
            if event is None:
                break
            if watch.saw(event, now):
                self.on_wait("")
            kind = event.get("type")
            if kind == "assistant":
                await self._publish_assistant(event, tools_used)
            elif kind == "user":
                await self._publish_tool_results(event, results)
            elif kind == "system":
                await self._publish_system(event, denied)
            elif kind == "result":
                await self._publish_hook_denials(event, results, denied)
                result = self._result(event, tools_used)
                if give_up_at is not None and result.exit is TurnExit.INTERRUPTED:
                    result.exit = TurnExit.STALLED
                return result
        raise SessionDied(await self._exit_reason("in the middle of a turn"))

    async def _exit_reason(self, when: str) -> str:
        """How the process ended, with the last lines it wrote to stderr."""
        with trio.move_on_after(2):
            await self._stderr_done.wait()  # so the reason is in the tail
        status = self._process.returncode if self._process else None
        tail = list(self.stderr_tail)[-3:]
        return f"Claude Code exited (status {status}) {when}: {' | '.join(tail) or 'no output'}"

    async def _next_event(self) -> dict[str, Any] | None:
        """The next parsed stdout event, or ``None`` once the process has exited."""
        assert self._process is not None
        assert self._process.stdout is not None
        if self._lines is None:
            self._lines = LineReader(self._process.stdout, MAX_EVENT_LINE)
        while True:
            try:
                line = await self._lines.receive_line()
            except LineTooLong:
                raise SessionDied("Claude Code printed an event line over 16 MiB") from None
            if line is None:
                await self._process.wait()
                return None
            if line.startswith(STREAM_EVENT_PREFIX):
                return STREAM_EVENT  # progress only: the whole reply follows as an assistant event
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: unparseable line from claude: %r", self.spec.agent, line[:200])

    async def _publish_assistant(self, event: dict[str, Any], tools_used: list[str]) -> None:
        for block in event.get("message", {}).get("content", []):
            if block.get("type") == "text" and block.get("text"):
                await self.on_event("assistant_text", {"text": block["text"]})
            elif block.get("type") == "tool_use":
                tools_used.append(short_tool_name(block.get("name", "")))
                await self.on_event(
                    "tool_use", {"id": block.get("id"), "name": block.get("name"), "input": block.get("input", {})}
                )

    async def _publish_tool_results(self, event: dict[str, Any], results: dict[str, str]) -> None:
        content = event.get("message", {}).get("content", [])
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                text = result_text(block.get("content"))
                results[block.get("tool_use_id", "")] = text
                await self.on_event(
                    "tool_result",
                    {"tool_use_id": block.get("tool_use_id"), "is_error": bool(block.get("is_error")), "content": text},
                )

    async def _publish_hook_denials(self, result: dict[str, Any], results: dict[str, str], denied: set[str]) -> None:
        """Denials by a PreToolUse hook appear only in the result; report each like the CLI's own."""
        for denial in result.get("permission_denials") or []:
            tool_use_id = denial.get("tool_use_id", "")
            if tool_use_id not in denied:
                await self.on_event(
                    "permission_denied",
                    {
                        "tool": denial.get("tool_name"),
                        "tool_use_id": tool_use_id,
                        "input": denial.get("tool_input", {}),
                        "reason": results.get(tool_use_id, ""),
                    },
                )

    async def _publish_system(self, event: dict[str, Any], denied: set[str]) -> None:
        subtype = event.get("subtype")
        if subtype == "permission_denied":
            denied.add(event.get("tool_use_id", ""))
            await self.on_event(
                "permission_denied",
                {
                    "tool": event.get("tool_name"),
                    "tool_use_id": event.get("tool_use_id"),
                    "reason": event.get("message"),
                },
            )
        elif subtype == "api_retry":
            await self.on_event(
                "note",
                {
                    "text": f"model API error {event.get('error_status')} ({event.get('error')}); "
                    f"the CLI retries in {event.get('retry_delay_ms', 0) / 1000:.1f}s "
                    f"(attempt {event.get('attempt')} of {event.get('max_retries')})"
                },
            )
        elif subtype == "init":
            failed = [s["name"] for s in event.get("mcp_servers", []) if s.get("status") == "failed"]
            if failed:
                await self.on_event("error", {"text": f"MCP server {', '.join(failed)} failed to start"})

    def _stalled(self, tools_used: list[str]) -> TurnResult:
        """What a stalled turn came to when the CLI had to be killed: no result event to read."""
        return TurnResult(
            exit=TurnExit.STALLED,
            text="the model API stalled and Claude Code did not answer the interrupt",
            duration_ms=0,
            cost_usd=0.0,
            tool_calls=len(tools_used),
            tools_used=tools_used,
            usage={},
            permission_denials=[],
            terminal_reason="stalled",
            session_id=self.session_id,
        )

    def _result(self, event: dict[str, Any], tools_used: list[str]) -> TurnResult:
        # total_cost_usd is cumulative for the process; a turn costs the difference.
        total = float(event.get("total_cost_usd") or 0.0)
        cost, self._cost_so_far = max(0.0, total - self._cost_so_far), total
        self.session_id = event.get("session_id") or self.session_id
        return TurnResult(
            exit=classify(event),
            text=str(event.get("result") or ""),
            duration_ms=int(event.get("duration_ms") or 0),
            cost_usd=cost,
            tool_calls=len(tools_used),
            tools_used=tools_used,
            usage={key: value for key, value in (event.get("usage") or {}).items() if key in USAGE_KEYS},
            permission_denials=event.get("permission_denials") or [],
            terminal_reason=event.get("terminal_reason"),
            session_id=self.session_id,
        )

    async def _drain_stderr(self, process: ContainerProcess, done: trio.Event) -> None:
        """Keep the last lines of stderr (for crash reports) so the pipe never fills."""
        assert process.stderr is not None
        pending = b""
        try:
            async with process.stderr:
                while chunk := await process.stderr.receive_some(65536):
                    *lines, pending = (pending + chunk).split(b"\n")
                    self.stderr_tail.extend(line.decode(errors="replace") for line in lines if line.strip())
        finally:
            done.set()


async def _kill(process: ContainerProcess) -> None:
    if process.returncode is None:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def short_tool_name(name: str) -> str:
    """``mcp__hyperhive__send`` → ``send``; built-in names stay as they are."""
    return name.rsplit("__", 1)[-1] if name.startswith("mcp__") else name


def result_text(content: Any) -> str:
    """A tool result's text, whether the CLI sent a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(block.get("text", "") for block in content if isinstance(block, dict))
    return ""
