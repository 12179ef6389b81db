"""The secondary Claude Code session that rewrites an agent's notes, inside its container.

It is a one-shot ``claude -p`` whose only tools are Read, Edit and Write, each allowed
on the notes file alone. Three details keep it to that one file:

- it starts in an empty directory, because the CLI lets Read see its working
  directory without asking (and the agent's own working directory is ``/state``);
- ``--setting-sources ""`` ignores the settings files in ``$HOME`` (the agent's
  ``/state``), where the agent could have allowed itself more;
- ``--strict-mcp-config`` with no MCP config: no hive tools either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from hyperhive_core import ContainerProcess

PROMPT = (
    "The file {path} holds an agent's durable notes, and it has grown too long. "
    "Please compact these notes, keep every durable fact: read the file, then rewrite it in place "
    "with the Write tool. Merge duplicates and drop what is finished or stale, but keep every decision, "
    "name, path, credential location and open task. Touch no other file. "
    "End with one line saying what you changed."
)
TOOLS = ("Read", "Edit", "Write")
WORKDIR = ".compaction"
"""The empty directory, under the agent's state dir, the session starts in."""
MAX_OUTPUT = 4 * 1024 * 1024


@dataclass(frozen=True)
class SessionResult:
    """How the session ended: ``ok``, and the model's last words or the reason it failed."""

    ok: bool
    detail: str
    cost_usd: float = 0.0


def compaction_argv(cli: Path, notes: PurePath, workdir: PurePath, model: str) -> list[str]:
    """The command that runs the session; paths are as the container sees them."""
    # Claude Code reads "/x" in a rule as relative to the project; "//x" is the absolute path.
    rules = ",".join(f"{tool}(/{notes})" for tool in TOOLS)
    return [
        "env",
        f"--chdir={workdir}",
        str(cli),
        "-p",
        PROMPT.format(path=notes),
        "--output-format",
        "json",
        "--model",
        model,
        "--tools",
        ",".join(TOOLS),
        "--allowedTools",
        rules,
        "--strict-mcp-config",
        "--setting-sources",
        "",
        "--no-session-persistence",
        "--disable-slash-commands",
    ]


async def follow_session(process: ContainerProcess) -> SessionResult:
    """Wait for the one-shot CLI to finish and read its JSON result. Kills it when cancelled."""
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        await process.stdin.aclose()  # the prompt is an argument; stdin must not add to it
        stdout, stderr = bytearray(), bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_all, process.stdout, stdout)
            nursery.start_soon(_read_all, process.stderr, stderr)
        status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return parse_result(bytes(stdout), bytes(stderr), status)


def parse_result(stdout: bytes, stderr: bytes, status: int) -> SessionResult:
    """The session's outcome from what the CLI printed (``--output-format json``)."""
    try:
        result: dict[str, Any] = json.loads(stdout)
    except ValueError:
        tail = " | ".join(stderr.decode(errors="replace").strip().splitlines()[-3:]) or "no output"
        return SessionResult(False, f"Claude Code exited with status {status}: {tail}")
    cost = float(result.get("total_cost_usd") or 0.0)
    text = str(result.get("result") or "").strip()
    if result.get("is_error") or status != 0:
        reason = result.get("terminal_reason") or f"status {status}"
        return SessionResult(False, f"the session failed ({reason}): {text[:300]}", cost)
    return SessionResult(True, text[:300], cost)


async def _read_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async with stream:
        while chunk := await stream.receive_some(65536):
            if len(into) < MAX_OUTPUT:
                into += chunk
