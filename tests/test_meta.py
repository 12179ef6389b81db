"""The plugin API holds: plugins import core only from its top level, and every export, hook
and config key is documented (docs/plugins.md, docs/configuration.md) and every hook tested."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import hyperhive_core
from hyperhive_core import hookspecs

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DOC = REPO / "docs" / "plugins.md"

HOOKS = sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, "hyperhive_spec"))
TEST_DIRS = [REPO / "tests", REPO / "web" / "tests", *sorted((REPO / "plugins").glob("*/tests"))]


def test_hookspecs_found():
    assert "register_commands" in HOOKS
    assert len(HOOKS) >= 10


# A function defined in a test file (at any depth). Read once for all hooks.
DEFINITION = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(", re.MULTILINE)


@functools.cache
def defined_test_names() -> frozenset[str]:
    return frozenset(
        name
        for directory in TEST_DIRS
        for path in Path(directory).rglob("test_*.py")
        for name in DEFINITION.findall(path.read_text())
    )


def doc_section(heading: str, text: str, level: str) -> str:
    """The body under ``heading`` (a whole heading line, without its hashes) up to the next of its level or higher."""
    match = re.search(rf"^{level} {re.escape(heading)}$(.*?)(?=^#{{1,{len(level)}}} |\Z)", text, re.M | re.S)
    assert match, f"docs/plugins.md has no '{level} {heading}' section"
    return match.group(1)


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    """Each hook has its section in the hook reference, saying when it runs."""
    section = doc_section(f"`{hook}`", PLUGINS_DOC.read_text(), "###")
    assert "**When:**" in section, f"docs/plugins.md's section on {hook} does not say when it runs ('**When:** ...')"


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


# -- the plugin API is the package's top level ----------------------------------------------

PLUGIN_SOURCES = sorted(
    path
    for pattern in (
        "web/hyperhive_web/**/*.py",
        "plugins/*/hyperhive_*/**/*.py",
        "plugins/*/tests/**/*.py",
        "web/tests/**/*.py",
    )
    for path in REPO.glob(pattern)
    if "static" not in path.relative_to(REPO).parts
)
ALLOWED_SUBMODULES = ("hyperhive_core.testing",)  # the test kit, a pytest plugin of its own
CORE_PATH = re.compile(r"hyperhive_core\.[A-Za-z_][\w.]*")


def instead(names: list[str]) -> str:
    exported = [name for name in names if name in hyperhive_core.__all__]
    missing = [name for name in names if name not in hyperhive_core.__all__]
    advice = [f"import {', '.join(exported)} from hyperhive_core"] if exported else []
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        advice.append(
            f"{', '.join(missing)} {verb} not in the plugin API (hyperhive_core.__all__): do without, or export it"
        )
    return "; ".join(advice)


def core_imports(path: Path, root: Path = REPO) -> Iterator[str]:
    """Each way ``path`` reaches into a core submodule, as ``file:line: what; what to do``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        found: tuple[str, list[str]] | None = None
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hyperhive_core.") and alias.name not in ALLOWED_SUBMODULES:
                    found = (f"import {alias.name}", [])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [alias.name for alias in node.names]
            if node.module.startswith("hyperhive_core.") and node.module not in ALLOWED_SUBMODULES:
                found = (f"from {node.module} import {', '.join(names)}", names)
            elif node.module == "hyperhive_core" and (outside := [name for name in names if not public(name)]):
                found = (f"from hyperhive_core import {', '.join(outside)}", outside)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "hyperhive_core" and not public(node.attr):
                found = (f"hyperhive_core.{node.attr}", [node.attr])
        elif isinstance(node, ast.Call) and node.args and isinstance(first := node.args[0], ast.Constant):
            named = first.value
            if isinstance(named, str) and CORE_PATH.fullmatch(named) and not named.startswith(*ALLOWED_SUBMODULES):
                found = (f"a call naming {named!r}", [named.rsplit(".", 1)[-1]])
        if found:
            what, names = found
            advice = instead(names) if names else "use what hyperhive_core exports"
            yield f"{path.relative_to(root)}:{node.lineno}: {what}; {advice}"


def public(name: str) -> bool:
    return name in hyperhive_core.__all__ or f"hyperhive_core.{name}" in ALLOWED_SUBMODULES


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_plugins_and_the_dashboard_import_only_the_plugin_api(path):
    """Anywhere: at the top, under TYPE_CHECKING, in a function, or as an import_module string."""
    problems = list(core_imports(path))
    assert not problems, "\n".join(problems)


def test_the_import_check_finds_every_way_in(tmp_path):
    source = tmp_path / "plugin.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import hyperhive_core.hive\n"
        "from hyperhive_core import Hive, testing\n"
        "from hyperhive_core.testing import running_hive\n"
        "if TYPE_CHECKING:\n"
        "    from hyperhive_core.broker import Message, MessageBroker\n"
        "def f():\n"
        "    from hyperhive_core import config\n"
        "    return importlib.import_module('hyperhive_core.store'), hyperhive_core.events.Event\n"
    )
    assert list(core_imports(source, tmp_path)) == [
        "plugin.py:2: import hyperhive_core.hive; use what hyperhive_core exports",
        "plugin.py:6: from hyperhive_core.broker import Message, MessageBroker; import Message from hyperhive_core; "
        "MessageBroker is not in the plugin API (hyperhive_core.__all__): do without, or export it",
        "plugin.py:8: from hyperhive_core import config; config is not in the plugin API "
        "(hyperhive_core.__all__): do without, or export it",
        "plugin.py:9: a call naming 'hyperhive_core.store'; store is not in the plugin API "
        "(hyperhive_core.__all__): do without, or export it",
        "plugin.py:9: hyperhive_core.events; events is not in the plugin API (hyperhive_core.__all__): "
        "do without, or export it",
    ]


def test_all_lists_exactly_the_exports():
    assert sorted(hyperhive_core.__all__) == sorted([*hyperhive_core._EXPORTS, "API_VERSION", "__version__", "iso_utc"])
    assert len(set(hyperhive_core.__all__)) == len(hyperhive_core.__all__)


@pytest.mark.parametrize("name", hyperhive_core.__all__)
def test_each_export_resolves_and_is_in_the_api_reference(name):
    getattr(hyperhive_core, name)
    reference = doc_section("API reference", PLUGINS_DOC.read_text(), "##")
    assert re.search(rf"^\| `{re.escape(name)}[`(]", reference, re.M), (
        f"docs/plugins.md's API reference has no row for {name} ('| `{name}` | ... |')"
    )
