"""Packaging: every distribution declares what its code imports, carries the license, and is pinned.

The distributions are this tree's: core (the top), the dashboard (web/) and each
bundled plugin (plugins/*). Imports are read from the source with ast, so a module
that is never imported at run time (a lazy import, a backend not in use) counts too.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECTS = [REPO, REPO / "web", *sorted(path.parent for path in REPO.glob("plugins/*/pyproject.toml"))]
# Extras that are not the package's own needs: test tools.
TEST_EXTRAS = {"test"}


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group())


def project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())


def packages(path: Path) -> list[Path]:
    """The project's top-level package directories, from its ``packages.find`` include patterns."""
    found = project(path)["tool"]["setuptools"]["packages"]["find"]["include"]
    return [path / pattern.removesuffix("*") for pattern in found]


def imported(package: Path) -> dict[str, str]:
    """Every top-level module name a package's code imports (absolute imports), with one file that does."""
    names: dict[str, str] = {}
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                names.setdefault(module.partition(".")[0], str(source.relative_to(REPO)))
    return names


def undeclared(path: Path) -> list[str]:
    """What the project's packages import from distributions its pyproject.toml does not list."""
    meta = project(path)["project"]
    declared = {normalized(meta["name"])} | {requirement_name(item) for item in meta.get("dependencies", [])}
    for extra, items in meta.get("optional-dependencies", {}).items():
        if extra not in TEST_EXTRAS:
            declared |= {requirement_name(item) for item in items}
    providers = packages_distributions()
    problems = []
    for package in packages(path):
        for module, where in sorted(imported(package).items()):
            if module in sys.stdlib_module_names or module == "__future__":
                continue
            distributions = {normalized(name) for name in providers.get(module, [])}
            if not distributions:
                problems.append(f"{where} imports {module}, which no installed distribution provides")
            elif not distributions & declared:
                problems.append(f"{where} imports {module} from {' or '.join(sorted(distributions))}, not declared")
    return problems


@pytest.mark.parametrize("path", PROJECTS, ids=lambda path: str(path.relative_to(REPO)) or "core")
def test_every_imported_distribution_is_declared(path):
    assert undeclared(path) == []


def test_the_check_sees_an_undeclared_import(tmp_path, monkeypatch):
    """A project that imports quart and trio but declares only trio is caught, naming quart."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\ndependencies = ["trio>=0.27"]\n'
        '[project.optional-dependencies]\ntest = ["quart"]\n'
        '[tool.setuptools.packages.find]\ninclude = ["demo_pkg*"]\n'
    )
    (tmp_path / "demo_pkg" / "sub").mkdir(parents=True)
    (tmp_path / "demo_pkg" / "__init__.py").write_text("import json\nimport trio\nfrom . import sub\n")
    (tmp_path / "demo_pkg" / "sub" / "web.py").write_text("def view():\n    from quart.helpers import redirect\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert undeclared(tmp_path) == ["demo_pkg/sub/web.py imports quart from quart, not declared"]


@pytest.mark.parametrize("path", PROJECTS, ids=lambda path: str(path.relative_to(REPO)) or "core")
def test_every_distribution_is_mit_licensed(path):
    config = project(path)
    assert config["project"]["license"] == "MIT"
    # A license given as an SPDX expression needs setuptools 77.
    assert config["build-system"]["requires"] == ["setuptools>=77"]


def test_the_license_file():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) ")
    assert "hyperhive contributors" in text.splitlines()[2]


def test_every_declared_dependency_is_pinned():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            pin = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
            assert pin, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[normalized(pin[1])] = pin[2]
    ours = {normalized(project(path)["project"]["name"]) for path in PROJECTS}
    declared = {
        requirement_name(item)
        for path in PROJECTS
        for group in (
            project(path)["project"].get("dependencies", []),
            *project(path)["project"].get("optional-dependencies", {}).values(),
        )
        for item in group
    }
    # The development tools requirements-dev.txt installs beside this tree's packages (-e lines).
    declared |= {
        requirement_name(line)
        for line in (REPO / "requirements-dev.txt").read_text().splitlines()
        if line and not line.startswith(("#", "-e "))
    }
    assert sorted(declared - ours - set(pins)) == [], "pin them: `make constraints` (docs/operations.md)"
    assert not ours & set(pins), "this tree's own packages are installed editable, never pinned"


def test_mypy_checks_every_distribution():
    """`make typecheck` covers core, the dashboard and every bundled plugin, a new one too."""
    config = project(REPO)["tool"]["mypy"]
    checked = {str(package.relative_to(REPO)) for path in PROJECTS for package in packages(path)}
    assert sorted(checked - set(config["files"])) == [], "add them to [tool.mypy] files in pyproject.toml"
    # The editable installs' import hooks are invisible to mypy: each source root must be on its path.
    roots = {str(path.relative_to(REPO)) for path in PROJECTS if path != REPO}
    assert sorted(roots - set(config["mypy_path"])) == [], "add them to [tool.mypy] mypy_path in pyproject.toml"
