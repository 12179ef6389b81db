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
