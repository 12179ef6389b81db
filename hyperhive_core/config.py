"""``hyperhive.toml``: validating it against typed sections, writing defaults.

Core and every plugin declare their sections as dataclasses through the
``register_config_sections`` hook. A section's fields are its keys: an unknown key
or a value of the wrong type is an error naming the key and the file. Finding and
reading the file is ``hyperhive_core.configfile``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hyperhive_core.errors import ConfigError

T = TypeVar("T")


def help_text(field: dataclasses.Field[Any]) -> str:
    return field.metadata.get("help", "")


def extra_tables(help: str = "") -> Any:
    """A field that collects the section's unknown sub-tables, unchecked, by name.

    For tables owned by someone else: an agent's plugin sections, which the plugins
    check themselves.
    """
    return dataclasses.field(default_factory=dict, metadata={"help": help, "extra_tables": True})


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A documented config field: ``option(5, help="retries before giving up")``."""
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda value=default: type(value)(value)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


class Config:
    """The validated config: one dataclass instance per registered section."""

    def __init__(self, path: Path, sections: dict[str, Any]) -> None:
        self.path = path
        self.sections = sections

    def section(self, name: str, kind: type[T] | None = None) -> T:
        """The section ``[name]``; ``kind`` only narrows the type for checkers."""
        try:
            return self.sections[name]
        except KeyError:
            raise ConfigError(f"no config section [{name}] is registered; is its plugin loaded?") from None

    @property
    def hive(self) -> Any:
        return self.sections["hive"]


def load_config(
    path: Path,
    raw: Mapping[str, Any],
    schemas: Mapping[str, type],
    ignored: frozenset[str] = frozenset(),
) -> Config:
    """Validate ``raw`` against the registered section dataclasses.

    :param ignored: sections that belong to installed but unloaded plugins; they are
        left unchecked, so a deployment can switch a plugin off without editing
        its config.
    :raises ConfigError: an unknown section or key, or a value of the wrong type.
    """
    unknown = sorted(set(raw) - set(schemas) - ignored)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{unknown[0]}]. Known sections: "
            f"{', '.join(f'[{name}]' for name in sorted(schemas))}. "
            "If it belongs to a plugin, install and enable that plugin."
        )
    sections = {}
    for name, schema in schemas.items():
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{name}] must be a table, not {_type_name(type(value))}")
        sections[name] = _coerce(value, schema, name, path)
    return Config(path, sections)


def build_section(schema: type[T], values: Mapping[str, Any], where: str, path: Path) -> T:
    """Build one dataclass from a TOML table, checking keys and types."""
    fields = {field.name: field for field in dataclasses.fields(schema)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(schema)
    extra = next((name for name, field in fields.items() if field.metadata.get("extra_tables")), None)
    tables = {key: value for key, value in values.items() if key not in fields and isinstance(value, dict)}
    if extra and tables:
        values = {key: value for key, value in values.items() if key not in tables} | {extra: tables}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {where}.{unknown[0]}. Valid keys in [{where}]: {', '.join(sorted(fields)) or 'none'}."
        )
    kwargs = {
        key: value if key == extra else _coerce(value, hints[key], f"{where}.{key}", path)
        for key, value in values.items()
    }
    try:
        return schema(**kwargs)
    except (ConfigError, ValueError) as exc:  # the section's own range checks, in __post_init__
        raise _out_of_range(exc, fields, where, path) from None


def _out_of_range(exc: Exception, keys: Collection[str], where: str, path: Path) -> ConfigError:
    """A section's own check as one line naming the file, the section and the key.

    The check knows neither the file nor, always, its section: the key is
    ``ConfigError.key`` when the plugin gave it, else the message names it.
    """
    message = str(exc).removeprefix(f"[{where}] ")  # core's own sections name themselves
    key = getattr(exc, "key", None)
    if key is None:  # a plain ValueError: the key is the one its message names first
        named = [(found.start(), name) for name in keys if (found := re.search(rf"\b{re.escape(name)}\b", message))]
        key = min(named)[1] if named else None
    elif not re.match(rf"{re.escape(key)}\b", message):
        message = f"{key}: {message}"
    return ConfigError(f"{path}: [{where}] {message}", key=key)


def _coerce(value: Any, hint: Any, key: str, path: Path) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option_type in args:
            if option_type is type(None):
                continue
            try:
                return _coerce(value, option_type, key, path)
            except ConfigError:
                continue
        raise _wrong_type(key, path, hint, value)
    if origin is list:
        if not isinstance(value, list):
            raise _wrong_type(key, path, hint, value)
        return [_coerce(item, args[0], f"{key}[{index}]", path) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong_type(key, path, hint, value)
        return {name: _coerce(item, args[1], f"{key}.{name}", path) for name, item in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _wrong_type(key, path, hint, value)
        return build_section(hint, value, key, path)
    if hint is Path:
        if not isinstance(value, str):
            raise _wrong_type(key, path, hint, value)
        return Path(value).expanduser()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise _wrong_type(key, path, hint, value)


def _wrong_type(key: str, path: Path, hint: Any, value: Any) -> ConfigError:
    return ConfigError(f"{path}: {key} must be {_type_name(hint)}, not {_type_name(type(value))} ({value!r})")


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path string"}
    if hint in names:
        return names[hint]
    if hint is list:
        return "a list"
    if hint is dict:
        return "a table"
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return getattr(hint, "__name__", str(hint))


# -- writing the commented default config (``hyperhive init``) ---------------------


def render_default_config(schemas: Mapping[str, type]) -> str:
    """A commented ``hyperhive.toml`` showing every key with its default."""
    lines = [
        "# hyperhive configuration. Every key is shown commented out with its default;",
        "# uncomment a key to change it. Reference: docs/configuration.md",
    ]
    for name in sorted(schemas, key=lambda section: (section != "hive", section)):
        schema = schemas[name]
        # A table of named entries (``dict[str, Dataclass]``) is shown as one example entry.
        entry = typing.get_args(schema)[1] if typing.get_origin(schema) is dict else None
        header = f"[{name}.NAME]" if entry else f"[{name}]"
        schema = entry or schema
        lines.append("")
        if schema.__doc__ and not schema.__doc__.startswith(schema.__name__ + "("):
            lines.append(f"# {schema.__doc__.strip().splitlines()[0]}")
        lines.append(f"# {header}" if entry else header)
        for field in dataclasses.fields(schema):
            if field.metadata.get("extra_tables"):
                lines += [f"# {line}" for line in help_text(field).splitlines()]
                continue
            if help_text(field):
                lines += [f"# {line}" for line in help_text(field).splitlines()]
            default = _field_default(field)
            lines.append(f"# {field.name} =" if default is None else f"# {field.name} = {toml_value(default)}")
    return "\n".join(lines) + "\n"


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def plain(value: Any) -> Any:
    """A section as plain values: dataclasses become dicts, also inside a table of entries."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value


# -- the TOML writer: every file the hive writes for people to edit -------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# TOML's basic strings may hold neither a quote, a backslash nor a control character
# other than tab: each becomes its escape, the ones without a short form as \u and four hex digits.
_STRING_ESCAPES = {code: f"\\u{code:04x}" for code in [*range(0x20), 0x7F]} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\f"): "\\f",
    ord("\r"): "\\r",
}
TOML_INTEGERS = range(-(2**63), 2**63)


def toml_string(text: str) -> str:
    """``text`` as a one-line TOML basic string.

    :raises ConfigError: it holds a lone surrogate, which no UTF-8 file can.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"cannot write {text!r} as TOML: it holds a lone surrogate; remove it") from None
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def toml_key(key: str) -> str:
    """A key as TOML: bare when it can be, quoted otherwise (so ``a.b`` stays one key)."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value: Any) -> str:
    """A value (string, number, bool, path, list, table) as inline TOML.

    A table's keys whose value is ``None`` are left out: TOML has no null, and an
    absent key means the default.

    :raises ConfigError: TOML cannot hold the value (an integer past 64 bits, a
        ``None`` in a list, a lone surrogate).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value not in TOML_INTEGERS:
            raise ConfigError(f"cannot write {value} as TOML: integers must fit in 64 bits; write it as a string")
        return str(value)
    if isinstance(value, float):
        return repr(value)  # inf, -inf and nan are TOML's spellings too
    if isinstance(value, str | Path):
        return toml_string(str(value))
    if isinstance(value, list | tuple):
        if any(item is None for item in value):
            raise ConfigError(f"cannot write {value!r} as TOML: a list cannot hold a missing value (None)")
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = [f"{toml_key(key)} = {toml_value(item)}" for key, item in value.items() if item is not None]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_document(tree: Mapping[str, Any]) -> str:
    """A TOML document: each table's plain keys first, then each sub-table under its ``[header]``.

    Tables inside lists are written inline. ``None`` values are left out, as in :func:`toml_value`.
    """
    return "\n".join(_table_lines(tree, ())).lstrip("\n") + "\n"


def _table_lines(table: Mapping[str, Any], where: tuple[str, ...]) -> list[str]:
    lines = [
        f"{toml_key(key)} = {toml_value(value)}"
        for key, value in table.items()
        if value is not None and not isinstance(value, Mapping)
    ]
    for key, value in table.items():
        if isinstance(value, Mapping):
            header = ".".join(toml_key(part) for part in (*where, key))
            lines += ["", f"[{header}]", *_table_lines(value, (*where, key))]
    return lines
