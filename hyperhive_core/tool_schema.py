"""How a tool function becomes an MCP tool: its input schema and description.

A tool is ``fn(ctx, **arguments)``. The first parameter receives the caller's
``ToolContext``; every later parameter is an argument the model supplies, described
to it by a JSON schema derived from the parameter's type hint. The description is
the docstring's first paragraph, and ``:param name:`` lines describe arguments.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from hyperhive_core.errors import PluginError

SUPPORTED_TYPES = "str, int, float, bool, list[X], dict[str, X], Any, or X | None"

_SCALARS: dict[object, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_PARAM_LINE = re.compile(r":param\s+(?:[^:]+\s+)?(\w+):\s*(.*)")
# Long argument values are echoed in validation messages; keep those readable.
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class ToolSchema:
    """What the model is told about a tool, and the check its arguments must pass."""

    description: str | None
    input_schema: dict[str, Any]
    _validator: jsonschema.Draft202012Validator = field(repr=False, compare=False)

    def argument_errors(self, arguments: dict[str, Any]) -> list[str]:
        """Readable problems with ``arguments``; empty when they fit the schema."""
        errors = sorted(self._validator.iter_errors(arguments), key=lambda error: list(error.absolute_path))
        return [_describe(error) for error in errors]


def tool_schema(fn: Callable[..., Any]) -> ToolSchema:
    """Derive a tool's schema from its signature, type hints and docstring.

    :raises PluginError: the signature cannot be described to the model; the
        message says which parameter and what to use instead.
    """
    try:
        parameters = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise PluginError(f"cannot read its signature and type hints: {exc}") from exc
    if not parameters or parameters[0].kind not in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
        raise PluginError("it must take the caller's ToolContext as its first positional parameter")

    description, param_docs = parse_docstring(inspect.getdoc(fn))
    properties: dict[str, Any] = {}
    required = []
    for param in parameters[1:]:
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise PluginError(f"parameter {param.name!r}: arguments arrive by name; make it a plain parameter")
        if param.name not in hints:
            raise PluginError(f"parameter {param.name!r} has no type hint; annotate it with {SUPPORTED_TYPES}")
        schema = json_schema(hints[param.name], param.name)
        if param.name in param_docs:
            schema["description"] = param_docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        elif isinstance(param.default, str | int | float | bool):
            schema["default"] = param.default
        properties[param.name] = schema

    input_schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        input_schema["required"] = required
    return ToolSchema(description, input_schema, jsonschema.Draft202012Validator(input_schema))


def json_schema(hint: object, where: str) -> dict[str, Any]:
    """The JSON schema for one type hint.

    :param where: the parameter name, quoted when the hint is not supported.
    :raises PluginError: the hint is not one of :data:`SUPPORTED_TYPES`.
    """
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is Any:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        (inner,) = (arg for arg in args if arg is not type(None))
        schema = json_schema(inner, where)
        if "type" in schema:  # without a type it already admits null
            schema["type"] = [schema["type"], "null"]
        return schema
    if hint is list or origin is list:
        items = json_schema(args[0], where) if args else {}
        return {"type": "array", "items": items} if items else {"type": "array"}
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise PluginError(f"parameter {where!r}: JSON object keys are strings, so use dict[str, X]")
        values = json_schema(args[1], where) if args else {}
        return {"type": "object", "additionalProperties": values} if values else {"type": "object"}
    raise PluginError(f"parameter {where!r} has type {hint!r}, which a tool cannot take; use {SUPPORTED_TYPES}")


def parse_docstring(doc: str | None) -> tuple[str | None, dict[str, str]]:
    """Split a docstring into its first paragraph and its ``:param name:`` texts.

    A ``:param:`` text continues on the indented lines that follow it.
    """
    summary: list[str] = []
    params: dict[str, str] = {}
    in_summary, current = True, None
    for line in (doc or "").splitlines():
        text = line.strip()
        param = _PARAM_LINE.fullmatch(text)
        if param:
            current, params[param[1]] = param[1], param[2]
        elif current and text and line[:1].isspace():
            params[current] = f"{params[current]} {text}".strip()
        else:
            current = None
        if text.startswith(":") or (not text and summary):
            in_summary = False
        elif in_summary and text:
            summary.append(text)
    return " ".join(summary) or None, params


def _describe(error: jsonschema.ValidationError) -> str:
    message = error.message
    if len(message) > _MAX_ERROR_CHARS:
        message = message[:_MAX_ERROR_CHARS] + "…"
    path = ".".join(str(part) for part in error.absolute_path)
    return f"{path}: {message}" if path else message
