"""The PreToolUse hook Claude Code runs before each Bash call of an allow-listed agent.

Run as ``python -I -m hyperhive_allowlist.check CONFIG`` inside the agent's
container, with the hook's JSON on stdin. ``CONFIG`` is JSON:
``{"bash": [patterns…], "writable": [paths commands may write, as the agent sees them]}``.

It prints a ``deny`` decision with a reason the agent can read, or nothing (exit 0)
to let Claude Code's own ``Bash(…)`` rules decide as usual. It denies whatever it
cannot read: bad JSON, oversized input, a command it cannot parse. Stdlib only,
so it starts fast and imports nothing the agent could have written.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from hyperhive_allowlist.patterns import BadPattern, compile_patterns
from hyperhive_allowlist.policy import Denied, Policy
from hyperhive_allowlist.writable import BadGrant, compile_grants, resolved

MAX_INPUT = 1024 * 1024
PREFIX = "hyperhive allow-list"


def decide(config: Any, event: Any) -> str | None:
    """The reason to deny this hook event, or ``None`` to let it through."""
    if not isinstance(event, dict):
        return "the hook input is not a JSON object"
    if event.get("tool_name") != "Bash":
        return None  # the hook is registered for Bash only; other tools are not this list's business
    tool_input = event.get("tool_input")
    command = tool_input.get("command") if isinstance(tool_input, dict) else None
    if not isinstance(command, str):
        return "the Bash call has no command"
    cwd = event.get("cwd")
    policy = load_policy(config)
    try:
        policy.check(command, cwd if isinstance(cwd, str) and cwd.startswith("/") else None)
    except Denied as exc:
        allowed = ", ".join(f"`{pattern.source}`" for pattern in policy.patterns) or "nothing"
        return f"{exc}. Allowed commands: {allowed}; join them with &&, ||, ;, | or newlines."
    return None


def load_policy(config: Any) -> Policy:
    """The policy from the hook's configuration argument; ``ValueError`` when it is malformed."""
    if not isinstance(config, dict):
        raise ValueError("the configuration is not a JSON object")
    patterns, writable = config.get("bash"), config.get("writable")
    if not isinstance(patterns, list) or not isinstance(writable, list):
        raise ValueError("the configuration needs the lists 'bash' and 'writable'")
    try:
        return Policy(compile_patterns(patterns), [resolved(grant) for grant in compile_grants(writable)])
    except (BadPattern, BadGrant) as exc:
        raise ValueError(str(exc)) from None


def deny(reason: str, out: TextIO) -> None:
    decision = {
        "hookEventName": "PreToolUse",
        "permissionDecision": "deny",
        "permissionDecisionReason": f"{PREFIX}: {reason}",
    }
    out.write(json.dumps({"hookSpecificOutput": decision}) + "\n")


def main(argv: list[str] | None = None, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Judge one hook event; always exit 0, with a deny decision on stdout when refused."""
    argv = sys.argv[1:] if argv is None else argv
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if out is None else out
    reason: str | None
    try:
        if len(argv) != 1:
            raise ValueError("it takes one argument, its JSON configuration")
        config = json.loads(argv[0])
        raw = stdin.read(MAX_INPUT + 1)
        if len(raw) > MAX_INPUT:
            reason = f"the hook input is larger than {MAX_INPUT} bytes"
        else:
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            reason = decide(config, event) if event is not None else "the hook input is not valid JSON"
    except Exception as exc:  # fail closed: any surprise denies the call
        reason = f"the checker is misconfigured or failed ({type(exc).__name__}: {exc}); ask the operator"
    if reason is not None:
        deny(reason, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
