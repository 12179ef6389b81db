"""``{{…}}`` placeholders in a scenario's reply text and tool input.

A placeholder names a value the turn has produced so far: ``{{agent}}``,
``{{prompt}}``, ``{{result}}`` / ``{{results[0]}}`` (tool results of this turn,
optionally ``.json.<field>…``), ``{{match[1]}}`` / ``{{match.name}}`` (groups of
the rule's ``when_regex``) and, in compaction summaries, ``{{digest}}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
EXPRESSION = re.compile(r"(?P<root>[a-z_]+)(?:\[(?P<index>\d+)\])?(?:\.(?P<rest>[\w.-]+))?")
PLAIN_ROOTS = frozenset({"agent", "prompt", "digest"})
_ALLOWED = (
    "use {{agent}}, {{prompt}}, {{result}}, {{results[N]}}, {{result.json.FIELD}}, "
    "{{match[N]}}, {{match.NAME}} or, in a summary, {{digest}}"
)


class TemplateError(Exception):
    """A placeholder that is malformed, or that the turn cannot fill in."""


def braced(expression: str) -> str:
    """``expression`` as it is written in a template."""
    return "{{" + expression + "}}"


@dataclass(frozen=True)
class Ref:
    """One parsed placeholder."""

    text: str
    root: str
    index: int | None = None
    group: str | None = None
    json_path: tuple[str, ...] | None = None

    @property
    def placeholder(self) -> str:
        return braced(self.text)


@dataclass(frozen=True)
class Context:
    """What placeholders can refer to while one reply is built."""

    agent: str
    prompt: str = ""
    results: Sequence[str] = ()
    match: re.Match[str] | None = None
    digest: str = ""


@dataclass(frozen=True)
class Template:
    """A string with placeholders, parsed once when the scenario loads."""

    parts: tuple[str | Ref, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        parts: list[str | Ref] = []
        position = 0
        for found in PLACEHOLDER.finditer(text):
            parts.append(text[position : found.start()])
            parts.append(parse_ref(found.group(1).strip()))
            position = found.end()
        rest = text[position:]
        if "{{" in rest:
            raise TemplateError(f"unclosed '{{{{' in {text!r}; close it with '}}}}'")
        parts.append(rest)
        return cls(tuple(part for part in parts if part != ""))

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(part for part in self.parts if isinstance(part, Ref))

    def render(self, context: Context) -> Any:
        """The filled-in text; a template that is one placeholder keeps the value's JSON type."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Ref):
            return resolve(self.parts[0], context)
        return "".join(part if isinstance(part, str) else as_text(resolve(part, context)) for part in self.parts)


def parse_ref(expression: str) -> Ref:
    """Parse what is between ``{{`` and ``}}``; raise ``TemplateError`` naming what is allowed."""
    found = EXPRESSION.fullmatch(expression)
    if not found:
        raise TemplateError(f"cannot read placeholder {braced(expression)}; {_ALLOWED}")
    root, index, rest = found["root"], found["index"], found["rest"]
    if root in PLAIN_ROOTS and index is None and rest is None:
        return Ref(expression, root)
    if root in ("result", "results") and (index is None) == (root == "result"):
        return Ref(expression, root, int(index) if index else None, json_path=_json_path(expression, rest))
    if root == "match" and (index is None) != (rest is None):
        if rest is not None and not rest.isidentifier():
            raise TemplateError(f"{braced(expression)}: {rest!r} is not a regex group name")
        return Ref(expression, root, int(index) if index else None, group=rest)
    raise TemplateError(f"unknown placeholder {braced(expression)}; {_ALLOWED}")


def _json_path(expression: str, rest: str | None) -> tuple[str, ...] | None:
    if rest is None:
        return None
    head, _, path = rest.partition(".")
    fields = tuple(path.split(".")) if path else ()
    if head != "json" or "" in fields:
        raise TemplateError(f"{braced(expression)}: after a result only '.json' or '.json.FIELD.…' may follow")
    return fields


def resolve(ref: Ref, context: Context) -> Any:
    """The value ``ref`` stands for in ``context``."""
    if ref.root == "agent":
        return context.agent
    if ref.root == "prompt":
        return context.prompt
    if ref.root == "digest":
        return context.digest
    if ref.root == "match":
        if context.match is None:
            raise TemplateError(f"{ref.placeholder}: the rule has no when_regex")
        group = ref.group if ref.group is not None else ref.index
        assert group is not None  # parse_ref gives a match a group name or an index
        return context.match.group(group) or ""
    index = len(context.results) - 1 if ref.index is None else ref.index
    if not 0 <= index < len(context.results):
        raise TemplateError(f"{ref.placeholder}: this turn has {len(context.results)} tool result(s) so far")
    text = context.results[index]
    return text if ref.json_path is None else _json_field(ref, text)


def _json_field(ref: Ref, text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise TemplateError(f"{ref.placeholder}: the tool result is not JSON: {text[:200]!r}") from None
    for field in ref.json_path or ():
        if isinstance(value, Mapping) and field in value:
            value = value[field]
        elif isinstance(value, list) and field.isdigit() and int(field) < len(value):
            value = value[int(field)]
        else:
            raise TemplateError(f"{ref.placeholder}: no field {field!r} in the tool result {text[:200]!r}")
    return value


def as_text(value: Any) -> str:
    """Strings as they are; everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def compile_value(value: Any) -> Any:
    """Parse every string inside a TOML value (tables, arrays) as a template."""
    if isinstance(value, str):
        return Template.parse(value)
    if isinstance(value, Mapping):
        return {key: compile_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [compile_value(item) for item in value]
    return value


def render_value(value: Any, context: Context) -> Any:
    """Fill in a value made by ``compile_value``."""
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value


def refs_in(value: Any) -> list[Ref]:
    """Every placeholder inside a value made by ``compile_value``."""
    if isinstance(value, Template):
        return list(value.refs)
    if isinstance(value, Mapping):
        return [ref for item in value.values() for ref in refs_in(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in refs_in(item)]
    return []
