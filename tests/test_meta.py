"""Every hookspec is documented in docs/plugins.md and exercised by a test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from hyperhive_core import hookspecs

REPO = Path(__file__).resolve().parent.parent

HOOKS = sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, "hyperhive_spec"))
TEST_DIRS = [REPO / "tests", REPO / "web" / "tests", *sorted((REPO / "plugins").glob("*/tests"))]


def test_hookspecs_found():
    assert "register_commands" in HOOKS
    assert len(HOOKS) >= 10


def defined_test_names() -> set[str]:
    names = set()
    for directory in TEST_DIRS:
        for path in Path(directory).rglob("test_*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(node.name)
    return names


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### `{hook}`$", docs, re.MULTILINE), f"docs/plugins.md has no '### `{hook}`' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    assert f"test_hook_{hook}" in defined_test_names(), f"no test named test_hook_{hook}"


def config_keys() -> list[tuple[str, str]]:
    """Every (section, key) that core and the installed plugins declare."""
    import dataclasses
    import typing

    from hyperhive_core.boot import config_schemas
    from hyperhive_core.plugins import make_plugin_manager

    keys = []
    for section, schema in config_schemas(make_plugin_manager(None)).items():
        entry = typing.get_args(schema)[1] if typing.get_origin(schema) is dict else schema
        shown = f"{section}.NAME" if entry is not schema else section
        keys += [(shown, field.name) for field in dataclasses.fields(entry) if not field.metadata.get("extra_tables")]
    return keys


@pytest.mark.parametrize(("section", "key"), config_keys())
def test_config_keys_are_documented(section, key):
    docs = (REPO / "docs" / "configuration.md").read_text()
    match = re.search(rf"^## `\[{re.escape(section)}\]`$(.*?)(?=^## |\Z)", docs, re.MULTILINE | re.DOTALL)
    assert match, f"docs/configuration.md has no '## `[{section}]`' section"
    assert f"| `{key}` |" in match.group(1), f"[{section}] {key} is not in its table in docs/configuration.md"
