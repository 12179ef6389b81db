"""Templates for the dashboard's pages and every plugin's: ``<plugin>/<file>`` is the file
``templates/<file>`` beside the plugin's module (for a package, in the package's directory).

One Jinja2 environment, the app's, renders them all, with autoescape on whatever the
file's extension, so a panel's template and a plugin route's
``quart.render_template("<plugin>/page.html", …)`` escape what they show.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

import pluggy
from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, PrefixLoader

TEMPLATES = "templates"


def plugin_template_dirs(pm: pluggy.PluginManager) -> dict[str, Path]:
    """Where each loaded plugin's templates are, by plugin name (the directory may not exist)."""
    dirs = {}
    for name, plugin in pm.list_name_plugin():
        module = inspect.getmodule(plugin) if plugin is not None else None
        if module is not None and getattr(module, "__file__", None):
            dirs[name] = Path(inspect.getfile(module)).parent / TEMPLATES
    return dirs


def template_loader(own: Path, plugin_dirs: Mapping[str, Path]) -> BaseLoader:
    """The dashboard's own templates by bare name, then each plugin's as ``<plugin>/<file>``."""
    plugins = PrefixLoader({name: FileSystemLoader(path) for name, path in plugin_dirs.items()})
    return ChoiceLoader([FileSystemLoader(own), plugins])


def missing_template(name: str, plugin_dirs: Mapping[str, Path]) -> str:
    """Why template ``name`` cannot be found, and where it was looked for."""
    plugin, _, file = name.partition("/")
    if file and plugin in plugin_dirs:
        return f"the {plugin} plugin's template {name!r} is missing: there is no {plugin_dirs[plugin] / file}"
    return (
        f"there is no template {name!r}: name a plugin's template '<plugin>/<file>', "
        f"the file {TEMPLATES}/<file> beside the plugin's module (plugins loaded: {', '.join(sorted(plugin_dirs))})"
    )
