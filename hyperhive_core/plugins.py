"""Plugin loading, selection, and the helpers core uses to call hooks."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from hyperhive_core import API_VERSION, hookspecs
from hyperhive_core.errors import PluginError

ENTRY_POINT_GROUP = "hyperhive"
LOAD_ENV = "HYPERHIVE_LOAD_PLUGINS"
TRACE_ENV = "HYPERHIVE_TRACE_PLUGINS"

# What a plugin's module (the object its entry point names) sets to the API range it works with.
API_ATTRIBUTE = "hyperhive_api"

# Core's own defaults register through the same hooks a third party uses.
BUILTIN_PLUGINS = {"core": "hyperhive_core.builtin"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    """What ``hyperhive plugins`` shows for one loaded plugin."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    builtin: bool


def installed_plugins() -> dict[str, Any]:
    """Entry points in the ``hyperhive`` group, by plugin name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_selection(configured: Sequence[str] | None) -> tuple[list[str] | None, str]:
    """Which plugins to load, and where that choice came from.

    ``HYPERHIVE_LOAD_PLUGINS`` overrides config: unset means config decides, empty
    means none, a comma list means only those. ``None`` means every installed one.
    """
    env = os.environ.get(LOAD_ENV)
    if env is not None:
        return [name.strip() for name in env.split(",") if name.strip()], LOAD_ENV
    if configured is not None:
        return list(configured), "[hive] plugins"
    return None, "default"


class HivePluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each plugin came from.

    An implementation of a renamed hook's old name (``hookspecs.renamed``) is called
    as the new hook too, so core calls only the new name; pluggy warns the plugin as
    it registers.
    """

    def __init__(self) -> None:
        super().__init__("hyperhive")
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str]] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        for caller in self.get_hookcallers(plugin) or ():
            new_name = getattr(caller.spec.function, hookspecs.RENAMED_TO, None) if caller.spec else None
            if new_name is not None:
                self._call_as(caller, new_name, plugin)
        return registered

    def _call_as(self, old: pluggy.HookCaller, new_name: str, plugin: object) -> None:
        new = getattr(self.hook, new_name)
        accepted = new.spec.argnames if new.spec else ()
        for impl in old.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            unknown = sorted(set(impl.argnames) - set(accepted))
            if unknown:
                self.unregister(plugin)
                raise PluginError(
                    f"plugin {impl.plugin_name!r} implements {old.name}, now {new_name}, with "
                    f"{', '.join(unknown)}, which {new_name} does not pass; rename it to {new_name} "
                    f"and take only {', '.join(accepted)}"
                )
            new._add_hookimpl(impl)  # pluggy has no public way to add an implementation to a second hook


def check_api(name: str, plugin: object) -> None:
    """Refuse a plugin made for another plugin API; warn once about one that does not say.

    :raises PluginError: its ``hyperhive_api`` range is malformed or leaves out ``API_VERSION``.
    """
    declared = getattr(plugin, API_ATTRIBUTE, None)
    if declared is None:
        _warn_undeclared(name)
        return
    try:
        accepted = SpecifierSet(declared) if isinstance(declared, str) else None
    except InvalidSpecifier:
        accepted = None
    if accepted is None:
        raise PluginError(
            f"plugin {name!r} declares {API_ATTRIBUTE} = {declared!r}, which is not a version range; "
            f'its author should write it like {API_ATTRIBUTE} = ">={API_VERSION},<{hookspecs.next_major(API_VERSION)}"'
        )
    if not accepted.contains(API_VERSION, prereleases=True):
        raise PluginError(
            f"plugin {name!r} works with hyperhive plugin API {declared}, but this hyperhive has API "
            f"{API_VERSION}. Install a release of the plugin made for API {API_VERSION}, "
            "or leave it out ([hive] plugins)."
        )


@functools.cache  # once per plugin per process: every command loads the plugins again
def _warn_undeclared(name: str) -> None:
    log.warning(
        "plugin %r does not say which plugin API it works with (this hyperhive has %s); it loads, but may break. "
        'Its author should add %s = ">=%s,<%d" to its module (docs/plugins.md#versions).',
        name,
        API_VERSION,
        API_ATTRIBUTE,
        API_VERSION,
        hookspecs.next_major(API_VERSION),
    )


def make_plugin_manager(selection: Sequence[str] | None, source: str = "default") -> HivePluginManager:
    """Build the plugin manager with core's builtins plus the selected entry points.

    :param selection: plugin names to load, or ``None`` for every installed one.
    :param source: where the selection came from, quoted in errors.
    :raises PluginError: a selected plugin is not installed, or made for another plugin API.
    """
    pm = HivePluginManager()
    for name, module_name in BUILTIN_PLUGINS.items():
        pm.register(importlib.import_module(module_name), name=name)

    installed = installed_plugins()
    wanted = list(installed) if selection is None else list(dict.fromkeys(selection))
    missing = [name for name in wanted if name not in installed]
    if missing:
        raise PluginError(
            f"plugin {', '.join(repr(m) for m in missing)} is selected by {source} but not installed. "
            f"Installed plugins: {', '.join(sorted(installed)) or 'none'}. "
            f"Install it, or remove it from {source}."
        )
    for name in wanted:
        entry = installed[name]
        try:
            plugin = entry.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r} ({entry.value}) failed to import: {exc}") from exc
        check_api(name, plugin)
        pm.register(plugin, name=name)
        if entry.dist is not None:
            pm.distributions[name] = (entry.dist.name, entry.dist.version)
    pm.check_pending()

    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        pm.trace.root.setwriter(lambda text: sys.stderr.write(f"[plugin trace] {text}"))
        pm.enable_tracing()
    return pm


def describe_plugins(pm: HivePluginManager) -> list[PluginInfo]:
    """Every loaded plugin with its distribution, version and implemented hooks."""
    import hyperhive_core

    infos = []
    for name, plugin in pm.list_name_plugin():
        distribution, version = pm.distributions.get(name, ("hyperhive", hyperhive_core.__version__))
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        infos.append(PluginInfo(name, distribution, version, hooks, builtin=name in BUILTIN_PLUGINS))
    return sorted(infos, key=lambda info: (not info.builtin, info.name))


async def await_all(results: Iterable[Any]) -> list[Any]:
    """Await every awaitable among hook results, in order; the one async-hook helper.

    When one raises, the coroutines after it are closed unstarted: left alone, each
    would warn that it was never awaited, on top of the error.
    """
    pending = list(results)
    try:
        return [await result if inspect.isawaitable(result) else result for result in pending]
    finally:
        for result in pending:
            if inspect.iscoroutine(result):
                result.close()  # a no-op on those that ran


async def call_async(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[Any]:
    """Call a hook one plugin at a time, in pluggy's order, awaiting each before calling the next.

    For startup and shutdown: called at once, the hook has every async implementation
    make its coroutine first, and one plugin that raises (a registration clash found as
    the dashboard starts) strands the coroutines already made.
    """
    results = []
    for _, caller in reversed(list(callers_by_plugin(pm, hook_name))):
        results += await await_all(caller(**kwargs))
    return results


def callers_by_plugin(pm: pluggy.PluginManager, hook_name: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(plugin name, caller)`` per implementing plugin, in registration order
    (``trylast`` ones first); pluggy calls them the other way round.

    Each caller goes through pluggy's own machinery, so tracing still applies.
    """
    hook = getattr(pm.hook, hook_name)
    owners = dict.fromkeys(impl.plugin_name for impl in hook.get_hookimpls())
    for owner in owners:
        others = [plugin for name, plugin in pm.list_name_plugin() if name != owner]
        yield owner, pm.subset_hook_caller(hook_name, remove_plugins=others)


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call a hook one plugin at a time, so each result is attributed to its plugin."""
    return [(owner, result) for owner, caller in callers_by_plugin(pm, hook_name) for result in caller(**kwargs)]


@dataclass
class Registry:
    """Things of one kind collected from a ``register_*`` hook, by unique name."""

    kind: str
    items: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def add(self, owner: str, name: str, item: Any) -> None:
        if name in self.owners:
            raise PluginError(
                f"{self.kind} {name!r} is registered by both {self.owners[name]!r} and {owner!r}; "
                f"disable one of them, or rename the {self.kind}."
            )
        self.items[name] = item
        self.owners[name] = owner

    def __getitem__(self, name: str) -> Any:
        return self.items[name]

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __iter__(self) -> Iterator[str]:  # names, like a dict
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def collect(
    pm: pluggy.PluginManager,
    hook_name: str,
    kind: str,
    adapt: Callable[..., tuple[str, Any]],
) -> Registry:
    """Run a ``register_*`` hook and gather what each plugin registers.

    :param adapt: turns the arguments a plugin passes to ``register`` into
        ``(name, item)``.
    :raises PluginError: two plugins register the same name.
    """
    registry = Registry(kind)
    for owner, caller in callers_by_plugin(pm, hook_name):

        def register(*args: Any, _owner: str = owner, **kwargs: Any) -> None:
            registry.add(_owner, *adapt(*args, **kwargs))

        caller(register=register)
    return registry
