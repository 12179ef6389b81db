"""Scenario files: what the rehearsal model replies to each agent's turns.

The format is documented in ``docs/rehearsal.md``. Everything is checked when the
file loads, so a typo fails at once with the rule and key it is in, not halfway
through a demo.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from hyperhive_core.errors import HyperhiveError
from hyperhive_core.names import AGENT_NAME, AGENT_NAME_RULE
from hyperhive_core.rehearsal.templates import Ref, Template, TemplateError, compile_value, refs_in
from hyperhive_core.rehearsal.wire import CUTS, Cut, Fault

HIVE_TOOL_PREFIX = "mcp__hyperhive__"
ANY_AGENT = "*"
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
DEMO_SOURCE = "hyperhive_core/scenarios/demo.toml"
DEFAULT_SUMMARY = Template.parse("Rehearsal summary for {{agent}}. The user messages so far:\n{{digest}}")
# The only 400 the CLI treats specially: it compacts the conversation and retries.
PROMPT_TOO_LONG = "prompt is too long: 210000 tokens > 200000 maximum"

RULE_KEYS = ("name", "when", "when_regex", "once", "steps")
STEP_KEYS = ("text", "tool", "input", "status", "times", "faults", "message", "delay", "stream_seconds")
KINDS = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    dict: "a table",
    list: "an array",
}


class ScenarioError(HyperhiveError):
    """A scenario file that cannot be read or does not say something the model can do."""


@dataclass(frozen=True)
class Step:
    """One model reply within a turn: text, a tool call, or both; optionally after faults.

    ``faults`` are served one per request, in order, before the reply; ``status``
    with ``times`` in the file is shorthand for that many of one HTTP error.
    """

    text: Template | None = None
    tool: str | None = None
    input: Any = None
    faults: tuple[Fault | Cut, ...] = ()
    delay: float = 0.0
    stream_seconds: float = 0.0


@dataclass(frozen=True)
class Rule:
    """Which turns it answers and the steps that answer them.

    ``where`` is its place in the file (unique); ``when`` its condition as written,
    None for a rule that answers every turn; ``pattern`` the condition compiled.
    """

    where: str
    name: str
    when: str | None
    pattern: re.Pattern[str]
    once: bool
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class AgentScript:
    """One agent's rules, in the order they are tried, and its compaction summary."""

    rules: tuple[Rule, ...] = ()
    summary: Template | None = None


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario file: scripts by agent name, ``"*"`` for every agent."""

    source: str
    agents: Mapping[str, AgentScript]

    def rules_for(self, agent: str | None) -> tuple[Rule, ...]:
        """The agent's own rules first, then the ``"*"`` rules."""
        own = self.agents.get(agent or "", AgentScript()).rules
        return own + self.agents.get(ANY_AGENT, AgentScript()).rules

    def summary_for(self, agent: str | None) -> Template:
        """The compaction summary: the agent's own, else the ``"*"`` one, else the default."""
        for name in (agent or "", ANY_AGENT):
            script = self.agents.get(name)
            if script and script.summary:
                return script.summary
        return DEFAULT_SUMMARY


def wire_tool_name(name: str) -> str:
    """The name Claude Code knows a tool by.

    Hive tools get the MCP prefix; built-in tools (capitalised, like ``Bash``) and
    full ``mcp__…`` names pass unchanged.
    """
    if name[0].isupper() or name.startswith("mcp__"):
        return name
    return HIVE_TOOL_PREFIX + name


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raise ``ScenarioError`` saying what to fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}; check the path") from None
    return parse_scenario(text, str(path))


def load_demo_scenario() -> Scenario:
    """The scenario shipped for the offline demo."""
    return parse_scenario((files("hyperhive_core") / "scenarios" / "demo.toml").read_text(), DEMO_SOURCE)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Check a scenario given as TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return _Reader(source).scenario(data)


class _Reader:
    """Turns checked TOML into a ``Scenario``; every error names the key it is about."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {where}: {problem}")

    def table(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a table, got {value!r}")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", f"unknown key; the keys here are {', '.join(allowed)}")
        return value

    def get(self, table: Mapping[str, Any], where: str, key: str, kind: type, default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        # TOML integers are fine where a number is wanted; booleans are never numbers.
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or (isinstance(value, bool) and kind is not bool):
            raise self.fail(f"{where}.{key}", f"expected {KINDS[kind]}, got {value!r}")
        return value

    def scenario(self, data: dict[str, Any]) -> Scenario:
        top = self.table(data, "top level", ("agents",))
        agents = self.get(top, "top level", "agents", dict)
        if not agents:
            raise self.fail("top level", "no [agents] table; add a rule such as [[agents.manager.rules]]")
        scripts = {}
        for name, raw in agents.items():
            where = f"agents.{_key(name)}"
            if name != ANY_AGENT and not AGENT_NAME.fullmatch(name):
                raise self.fail(
                    where,
                    f'{name!r} is not an agent name; use {AGENT_NAME_RULE}, or "*" for every agent',
                )
            scripts[name] = self.agent(raw, where)
        return Scenario(self.source, scripts)

    def agent(self, raw: Any, where: str) -> AgentScript:
        table = self.table(raw, where, ("rules", "summary"))
        summary = self.get(table, where, "summary", str)
        template = None
        if summary is not None:
            template = self.template(summary, f"{where}.summary")
            for ref in template.refs:
                if ref.root not in ("agent", "prompt", "digest"):
                    raise self.fail(
                        f"{where}.summary",
                        f"{ref.placeholder}: a summary can use {{{{agent}}}}, {{{{prompt}}}} and {{{{digest}}}}",
                    )
        rules = [
            self.rule(item, f"{where}.rules[{index}]")
            for index, item in enumerate(self.get(table, where, "rules", list, []))
        ]
        names = [rule.name for rule in rules]
        for rule in rules:
            if names.count(rule.name) > 1:
                raise self.fail(f"{rule.where}.name", f"another rule of this agent is also named {rule.name!r}")
        return AgentScript(tuple(rules), template)

    def rule(self, raw: Any, where: str) -> Rule:
        table = self.table(raw, where, RULE_KEYS)
        when = self.get(table, where, "when", str)
        when_regex = self.get(table, where, "when_regex", str)
        if when is not None and when_regex is not None:
            raise self.fail(where, "use either when (a substring) or when_regex, not both")
        if "" in (when, when_regex):
            raise self.fail(where, "an empty condition matches every turn; leave it out instead")
        condition = when or when_regex
        try:
            pattern = re.compile(re.escape(when) if when else when_regex or "")
        except re.error as exc:
            raise self.fail(f"{where}.when_regex", f"not a valid regular expression: {exc}") from None
        raw_steps = self.get(table, where, "steps", list)
        if not raw_steps:
            raise self.fail(f"{where}.steps", 'missing; give at least one step, e.g. steps = [{ text = "hello" }]')
        steps: list[Step] = []
        for index, item in enumerate(raw_steps):
            step_where = f"{where}.steps[{index}]"
            if steps and steps[-1].tool is None:
                raise self.fail(
                    step_where,
                    f"never runs: steps[{index - 1}] has no tool, so it ends the turn; "
                    "give it a tool or remove the steps after it",
                )
            tools_before = sum(step.tool is not None for step in steps)
            steps.append(self.step(item, step_where, condition, pattern, tools_before))
        return Rule(
            where=where,
            name=self.get(table, where, "name", str, where),
            when=condition,
            pattern=pattern,
            once=self.get(table, where, "once", bool, False),
            steps=tuple(steps),
        )

    def step(self, raw: Any, where: str, when: str | None, pattern: re.Pattern[str], tools_before: int) -> Step:
        table = self.table(raw, where, STEP_KEYS)
        text = self.get(table, where, "text", str)
        tool = self.get(table, where, "tool", str)
        tool_input = self.get(table, where, "input", dict)
        if text is None and tool is None:
            raise self.fail(where, "a step needs text, tool, or both")
        if tool is not None and not TOOL_NAME.fullmatch(tool):
            raise self.fail(f"{where}.tool", f"{tool!r} is not a tool name (letters, digits, '_' and '-')")
        if tool_input is not None and tool is None:
            raise self.fail(f"{where}.input", 'input without a tool; add tool = "NAME"')
        step = Step(
            text=self.template(text, f"{where}.text") if text is not None else None,
            tool=wire_tool_name(tool) if tool is not None else None,
            input=self.compiled(tool_input or {}, f"{where}.input") if tool is not None else None,
            faults=self.faults(table, where),
            delay=self.seconds(table, where, "delay"),
            stream_seconds=self.seconds(table, where, "stream_seconds"),
        )
        for key, value in (("text", step.text), ("input", step.input)):
            for ref in refs_in(value):
                self.check_ref(ref, f"{where}.{key}", when, pattern, tools_before)
        return step

    def faults(self, table: Mapping[str, Any], where: str) -> tuple[Fault | Cut, ...]:
        """The step's faults, from ``status`` (with ``times``) or from ``faults``."""
        status = self.get(table, where, "status", int)
        listed = self.get(table, where, "faults", list)
        if status is not None and listed is not None:
            raise self.fail(where, "use either status (with times) or faults, not both")
        if "times" in table and status is None:
            raise self.fail(f"{where}.times", "only goes with status; add status = 500 (or another error)")
        if "message" in table and status is None and not any(type(item) is int for item in listed or ()):
            raise self.fail(f"{where}.message", "only goes with status or an HTTP status in faults")
        message = self.get(table, where, "message", str)
        if status is not None:
            times = self.get(table, where, "times", int, 1)
            if times < 1:
                raise self.fail(f"{where}.times", "must be at least 1")
            return (self.http_fault(status, message, f"{where}.status"),) * times
        if listed is None:
            return ()
        if not listed:
            raise self.fail(f"{where}.faults", "an empty list serves no fault; leave it out")
        faults: list[Fault | Cut] = []
        for index, item in enumerate(listed):
            if type(item) is int:
                faults.append(self.http_fault(item, message, f"{where}.faults[{index}]"))
            elif item in CUTS:
                faults.append(Cut(item))
            else:
                raise self.fail(
                    f"{where}.faults[{index}]",
                    f"{item!r} is not a fault; use an HTTP status (400-599), {', '.join(map(repr, CUTS))}",
                )
        return tuple(faults)

    def http_fault(self, status: int, message: str | None, where: str) -> Fault:
        if not 400 <= status <= 599:
            raise self.fail(where, f"{status} is not an error status; use 400-599")
        return Fault(status, message or _default_message(status))

    def seconds(self, table: Mapping[str, Any], where: str, key: str) -> float:
        value = self.get(table, where, key, float, 0.0)
        if value < 0:
            raise self.fail(f"{where}.{key}", "must be zero or more seconds")
        return float(value)

    def template(self, text: str, where: str) -> Template:
        try:
            return Template.parse(text)
        except TemplateError as exc:
            raise self.fail(where, str(exc)) from None

    def compiled(self, value: dict[str, Any], where: str) -> Any:
        try:
            return compile_value(value)
        except TemplateError as exc:
            raise self.fail(where, str(exc)) from None

    def check_ref(self, ref: Ref, where: str, when: str | None, pattern: re.Pattern[str], tools_before: int) -> None:
        """Refuse a placeholder this step could never fill in."""
        placeholder = ref.placeholder
        if ref.root == "digest":
            raise self.fail(where, f"{placeholder} is only for summaries")
        if ref.root == "result" and tools_before == 0:
            raise self.fail(where, f"{placeholder}: no earlier step of this rule calls a tool, so there is no result")
        if ref.root == "results" and ref.index is not None and ref.index >= tools_before:
            raise self.fail(
                where,
                f"{placeholder}: {tools_before} earlier step(s) of this rule call a tool; results count from 0",
            )
        if ref.root != "match":
            return
        if when is None:
            raise self.fail(where, f"{placeholder}: the rule has no when or when_regex to match")
        if ref.group is not None and ref.group not in pattern.groupindex:
            raise self.fail(where, f"{placeholder}: when_regex has no group (?P<{ref.group}>…)")
        if ref.index is not None and ref.index > pattern.groups:
            raise self.fail(where, f"{placeholder}: when_regex has only {pattern.groups} group(s)")


def _default_message(status: int) -> str:
    return PROMPT_TOO_LONG if status == 400 else f"rehearsal fault: HTTP {status}"


def _key(name: str) -> str:
    """A TOML key as it would be written in the file."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
