"""hyperhive's test kit: a pytest plugin for testing hyperhive plugins against a real hive.

``pip install hyperhive[testing]`` installs it, and pytest loads it by itself (the
``pytest11`` entry point ``hyperhive``): its fixtures need no import, its helpers
come from ``hyperhive_core.testing``. A hive in a test is a real one: real sqlite
store, real host socket, the real Claude Code CLI talking to the rehearsal model,
which a :class:`Script` tells what to answer. docs/plugins.md#testing-your-plugin
has a worked example.

pytest imports this module wherever hyperhive is installed, so importing it stays
cheap: trio, the daemon and Playwright load inside the helpers that need them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import textwrap
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import subprocess

    import click.testing
    import trio.testing

    from hyperhive_core.config import Config
    from hyperhive_core.events import Event
    from hyperhive_core.hive import Hive
    from hyperhive_core.plugins import HivePluginManager

__all__ = [
    "CHROMIUM",
    "Chromium",
    "Daemon",
    "HeldClock",
    "Script",
    "build_config",
    "call_tool",
    "dashboard_page",
    "host_request",
    "launch_chromium",
    "needs_claude",
    "next_event",
    "operator_reply",
    "run_cli",
    "running_hive",
    "wait_until",
]

needs_claude = pytest.mark.needs_claude
"""Mark a test that runs the Claude Code CLI: it is skipped, saying how to install it, where the CLI is missing."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_claude: the test runs the Claude Code CLI; skipped where it is missing")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_claude") and (missing := _missing_claude()):
        pytest.skip(missing)


@functools.cache
def _missing_claude() -> str | None:
    """Why the Claude Code CLI cannot run here, or None; looked up the way the hive does."""
    from hyperhive_core.claude import MissingCli, find_cli

    try:
        find_cli(None)
    except MissingCli as exc:
        return str(exc)
    return None


# -- config and plugins ---------------------------------------------------------------


def build_config(tmp_path: Path, pm: HivePluginManager, toml: str = "", **sections: Mapping[str, Any]) -> Config:
    """A validated config for ``pm``'s plugins, its state dir in ``tmp_path``, on the process backend.

    ``toml`` is config file text; ``sections`` (``nap={"max_seconds": 60}``) add to it
    table by table, key by key. :raises ConfigError: what is wrong with it, as ``hyperhive up`` says.
    """
    from hyperhive_core.boot import config_schemas
    from hyperhive_core.config import load_config

    return load_config(tmp_path / "hyperhive.toml", _raw_config(tmp_path, toml, sections), config_schemas(pm))


def _raw_config(tmp_path: Path, toml: str, sections: Mapping[str, Any]) -> dict[str, Any]:
    """The kit's defaults, then ``toml``, then ``sections``, merged table by table."""
    raw: dict[str, Any] = {"hive": {"state_dir": str(tmp_path / "state"), "container_backend": "process"}}
    for given in (tomllib.loads(textwrap.dedent(toml)), sections):
        for name, table in given.items():
            raw[name] = {**raw.get(name, {}), **table} if isinstance(table, Mapping) else table
    return raw


@pytest.fixture
def make_pm() -> Callable[..., HivePluginManager]:
    """A plugin manager factory: ``make_pm("web", hello=hyperhive_hello)``.

    Positional names are installed plugins, loaded by entry-point name as ``[hive]
    plugins`` would; keyword ones register a module or object under that name, installed
    or not (the plugin under test). Core's builtins come too, unless ``builtin=False``.
    """
    from hyperhive_core.plugins import make_plugin_manager

    def build(*installed: str, builtin: bool = True, **plugins: object) -> HivePluginManager:
        pm = make_plugin_manager(list(installed), "make_pm")
        if not builtin:
            pm.unregister(name="core")
        for name, plugin in plugins.items():
            pm.register(plugin, name=name)
        return pm

    return build


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """A config factory: ``make_config(pm, toml="", **sections)``, as :func:`build_config` in ``tmp_path``."""
    return functools.partial(build_config, tmp_path)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """An environment for child ``hyperhive`` processes, with no plugin or config overrides; cwd is ``tmp_path``."""
    for name in ("HYPERHIVE_LOAD_PLUGINS", "HYPERHIVE_CONFIG", "HYPERHIVE_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return dict(os.environ)


@pytest.fixture(scope="session")
def hyperhive() -> str:
    """The installed ``hyperhive`` command, next to the running interpreter."""
    return str(Path(sys.executable).with_name("hyperhive"))


# What an entry point names: ``module.path`` or ``module.path:attribute.path``.
ENTRY_POINT_VALUE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


@pytest.fixture
def local_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Make a plugin that is not pip-installed loadable by name: ``local_plugin("hello", "hyperhive_hello", path)``.

    It gets an entry point in the ``hyperhive`` group, as ``pip install`` would give
    it, and ``path`` (the directory its module is in) joins ``sys.path``; both reach
    child processes through ``PYTHONPATH``. So ``make_pm("hello")``, ``[hive] plugins =
    ["hello"]`` and a ``hyperhive`` subprocess all load it, until the test ends.
    ``value`` is the entry point's ``module`` or ``module:attribute``.
    """

    def add(name: str, value: str, path: str | os.PathLike[str] | None = None) -> None:
        if not name.isidentifier() or not ENTRY_POINT_VALUE.fullmatch(value):
            raise ValueError(f"local_plugin({name!r}, {value!r}): give a plugin name and a 'module' or 'module:attr'")
        site = tmp_path / "local-plugins" / name
        info = site / f"{name}-0+local.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0+local\n")
        (info / "entry_points.txt").write_text(f"[hyperhive]\n{name} = {value}\n")
        for entry in (site, *([Path(path).resolve()] if path is not None else [])):
            monkeypatch.syspath_prepend(str(entry))
            monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(entry), os.environ.get("PYTHONPATH")])))

    return add


# -- the rehearsal model's script -----------------------------------------------------


class Script:
    """What the rehearsal model answers, built in Python instead of written as TOML (docs/rehearsal.md).

    >>> script = Script()
    >>> script.on("worker", "greet").call("greet", {"name": "Ada"}).reply("said: {{result}}")
    >>> script.otherwise("nothing scripted")

    Each ``on`` adds a rule for an agent (``"*"``: every agent, after its own rules);
    its steps answer the turn's requests in order. ``str(script)`` is the scenario
    file; :func:`running_hive` takes either.
    """

    def __init__(self) -> None:
        self._rules: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []

    def on(
        self,
        agent: str,
        when: str | None = None,
        *,
        regex: str | None = None,
        name: str | None = None,
        once: bool = False,
    ) -> _Rule:
        """A rule for ``agent``'s turns whose prompt contains ``when`` (or matches ``regex``; neither: every turn)."""
        condition: dict[str, Any] = {"name": name, "when": when, "when_regex": regex, "once": once or None}
        steps: list[dict[str, Any]] = []
        self._rules.append((agent, {key: value for key, value in condition.items() if value is not None}, steps))
        return _Rule(steps)

    def otherwise(self, text: str) -> None:
        """Every turn no earlier rule answers: reply ``text`` and end the turn."""
        self.on("*").reply(text)

    def __str__(self) -> str:
        blocks = []
        for agent, condition, steps in self._rules:
            if not steps:
                raise ValueError(f"a rule for {agent!r} has no steps; add .call(...) or .reply(...)")
            lines = [f"[[agents.{_toml(agent)}.rules]]"] + [
                f"{key} = {_toml(value)}" for key, value in condition.items()
            ]
            blocks.append("\n".join([*lines, f"steps = {_toml(steps)}"]))
        return "\n\n".join(blocks) + "\n"


class _Rule:
    """The steps of one :class:`Script` rule, added in the order they answer."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self._steps = steps

    def call(self, tool: str, input: Mapping[str, Any] | None = None, *, text: str | None = None, **step: Any) -> _Rule:
        """Call ``tool`` with ``input`` (saying ``text`` first); the next step sees its result as ``{{result}}``."""
        self._steps.append({"text": text, "tool": tool, "input": dict(input or {}), **step})
        return self

    def reply(self, text: str, **step: Any) -> None:
        """Say ``text`` and end the turn. ``step`` holds other step keys: ``delay``, ``faults``, ``status``…"""
        self._steps.append({"text": text, **step})


def _toml(value: Any) -> str:
    """``value`` as a TOML inline value (basic strings are JSON's, less what TOML has no escape for)."""
    if isinstance(value, str | os.PathLike):
        return json.dumps(os.fspath(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        pairs = [f"{_toml(str(key))} = {_toml(item)}" for key, item in value.items() if item is not None]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"TOML holds strings, paths, numbers, booleans, lists and tables, not {type(value).__name__}")


# -- a running hive ---------------------------------------------------------------------


@asynccontextmanager
async def running_hive(
    tmp_path: Path,
    pm: HivePluginManager,
    scenario: str | Script,
    *,
    agents: dict[str, dict[str, Any]] | None = None,
    claude: dict[str, Any] | None = None,
    hive: dict[str, Any] | None = None,
    endpoint: str | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[Hive]:
    """A hive on the process backend in ``tmp_path``, its agents on the rehearsal model with ``scenario``.

    For a trio test (pytest-trio): ``async with running_hive(tmp_path, pm, script) as hive``.
    The hive serves its host socket (and, with ``web={"port": 0}`` and the ``web`` plugin,
    the dashboard: ``hyperhive_web.dashboard_of(hive)`` has its ``url`` and ``token``);
    leaving the block stops it. ``scenario`` is a
    :class:`Script` or scenario TOML. With ``endpoint``, the agents talk to that Messages
    API URL instead (a test's own rehearsal server); ``scenario`` is then unused.
    """
    import trio

    from hyperhive_core.daemon import run_hive

    model = {"base_url": endpoint} if endpoint else {"rehearsal_scenario": str(_write_scenario(tmp_path, scenario))}
    config = build_config(
        tmp_path,
        pm,
        "",
        hive=hive or {},
        claude={**model, "api_error_backoff_seconds": 0.2, **(claude or {})},
        agents=agents or {},
        **sections,
    )
    async with trio.open_nursery() as nursery:
        running = await nursery.start(run_hive, config, pm)
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def _write_scenario(tmp_path: Path, scenario: str | Script) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(textwrap.dedent(str(scenario)))
    return path


async def next_event(
    hive: Hive, agent: str | None, type_: str, predicate: Callable[[Event], bool] = lambda event: True, after: int = 0
) -> Event:
    """The first event of ``type_`` after event id ``after`` (history included) that matches.

    It waits as long as it takes: bound it with ``trio.fail_after``.
    """
    async with hive.events.subscribe(agent, after_id=after) as events:
        async for event in events:
            if event.type == type_ and predicate(event):
                return event
    raise AssertionError("the event stream ended")


async def operator_reply(hive: Hive, sender: str) -> str:
    """Wait for the first message ``sender`` sends the operator; return its body."""
    while True:
        for message in await hive.broker.recent_for("operator", 50):
            if message.sender == sender:
                return message.body
        await next_event(hive, sender, "message_sent", lambda event: event.data["to"] == "operator")


async def call_tool(hive: Hive, agent: str, tool: str, **arguments: Any) -> tuple[str, bool]:
    """Call a hive tool as ``agent`` would over its socket: its text, and whether it is an error."""
    from mcp.types import TextContent

    from hyperhive_core.tools import ToolContext

    ctx = ToolContext(hive, agent, hive.agents.get(agent).role)
    result = await hive.surface.call_tool(ctx, tool, arguments)
    first = result.content[0]
    if not isinstance(first, TextContent):
        raise AssertionError(f"tool {tool!r} answered with {first.type}, not text")
    return first.text, result.is_error


async def host_request(hive: Hive, cmd: str, **arguments: Any) -> Any:
    """Send ``cmd`` to the hive's host socket, as ``ask_daemon`` does for a plugin's CLI command.

    :raises HostCommandError: the daemon refused it; the message is the handler's.
    """
    import trio

    from hyperhive_core.hostclient import request

    return await trio.to_thread.run_sync(functools.partial(request, hive.paths.host_socket, cmd, **arguments))


async def run_cli(hive: Hive, *args: str) -> click.testing.Result:
    """Run ``hyperhive ARGS``, with the commands of ``hive``'s plugins, against ``hive``; its output and exit code.

    Plugin commands reach the hive through ``ask_daemon``, over the host socket.
    """
    import trio
    from click.testing import CliRunner

    from hyperhive_core.cli import make_cli

    config = hive.paths.root.parent / "cli.toml"
    config.write_text(f"[hive]\nstate_dir = {_toml(str(hive.paths.root))}\n")
    command = make_cli(hive.pm)
    return await trio.to_thread.run_sync(lambda: CliRunner().invoke(command, ["--config", str(config), *args]))


class Daemon:
    """A ``hyperhive up`` process of the test's, on its own config file; see the ``hive_daemon`` fixture."""

    STARTUP_SECONDS = 90.0  # a loaded machine starts the daemon slowly

    def __init__(self, hyperhive: str, config: Path, socket: Path, env: Mapping[str, str]) -> None:
        import subprocess

        self.hyperhive = hyperhive
        self.config = config
        self.socket = socket
        self.env = dict(env)
        self.log = config.with_name("daemon.log")
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [hyperhive, "-c", str(config), "up"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_it_answers()

    def _wait_until_it_answers(self) -> None:
        from hyperhive_core.hostclient import DaemonNotRunning, request

        deadline = time.monotonic() + self.STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"`hyperhive up` exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                request(self.socket, "status", timeout=10)
            except DaemonNotRunning:
                time.sleep(0.2)
            else:
                return
        self.stop()
        raise AssertionError(
            f"`hyperhive up` did not answer within {self.STARTUP_SECONDS:g} s:\n{self.log.read_text()}"
        )

    def request(self, cmd: str, **arguments: Any) -> Any:
        """Send ``cmd`` to the host socket and return its result; a refusal raises ``HostCommandError``."""
        from hyperhive_core.hostclient import request

        return request(self.socket, cmd, **arguments)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``hyperhive -c CONFIG ARGS`` (a plugin's command too) in a child process; its output and exit code."""
        import subprocess

        command = [self.hyperhive, "-c", str(self.config), *args]
        return subprocess.run(command, check=False, env=self.env, capture_output=True, text=True, timeout=120)

    def login_url(self) -> str:
        """The dashboard's login address, as ``hyperhive dashboard`` prints it (needs the ``web`` plugin)."""
        printed = self.cli("dashboard")
        if printed.returncode:
            raise AssertionError(f"`hyperhive dashboard` failed: {printed.stderr.strip()}")
        return printed.stdout.strip()

    def stop(self) -> int:
        """SIGTERM, as systemd stops the hive; its exit code (0 for a clean stop)."""
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def hive_daemon(tmp_path: Path, clean_env: dict[str, str], hyperhive: str) -> Iterator[Callable[..., Daemon]]:
    """Start a real daemon: ``hive_daemon(script, plugins=["web", "hello"], web={"port": 0})``.

    It writes ``hyperhive.toml`` in ``tmp_path`` (the kit's defaults, ``toml``, then
    ``sections``; ``plugins`` becomes ``[hive] plugins``), runs ``hyperhive up`` on it
    with the rehearsal model answering from ``script``, and returns a :class:`Daemon`
    once its host socket answers. Every daemon stops when the test ends.
    """
    started: list[Daemon] = []

    def start(
        script: str | Script, *, plugins: list[str] | None = None, toml: str = "", **sections: Mapping[str, Any]
    ) -> Daemon:
        directory = tmp_path / f"daemon-{len(started)}"
        directory.mkdir()
        claude = {"rehearsal_scenario": str(_write_scenario(directory, script))}
        hive = {} if plugins is None else {"plugins": plugins}
        raw = _raw_config(directory, toml, {"hive": hive, "claude": claude, **sections})
        config = directory / "hyperhive.toml"
        config.write_text("".join(f"{_toml(name)} = {_toml(table)}\n" for name, table in raw.items()))
        started.append(Daemon(hyperhive, config, Path(raw["hive"]["state_dir"]) / "host.sock", os.environ))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


class HeldClock:
    """An autojump clock that jumps only while a test lets time pass.

    Real work (sqlite threads, sockets, child processes) takes real time, during which
    every task waits; a clock that jumps then would run out deadlines mid-step. Held,
    it jumps only after ``STALL`` real seconds of idleness, so a hang still ends the
    test at its ``fail_after``; :meth:`advance` lets virtual time run.
    """

    STALL = 5.0

    def __init__(self, clock: trio.testing.MockClock) -> None:
        self.clock = clock
        clock.autojump_threshold = self.STALL

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, firing every deadline on the way."""
        import trio

        self.clock.autojump_threshold = 0
        try:
            await trio.sleep(seconds)
        finally:
            self.clock.autojump_threshold = self.STALL


# -- Chromium ------------------------------------------------------------------------------

# The system's Chromium (HYPERHIVE_CHROMIUM names another); where there is none, Playwright's own.
CHROMIUM = Path(os.environ.get("HYPERHIVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
# Headless, and quiet: a closed network refuses Chromium's background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Any) -> Any:
    """Chromium through Playwright: the system's when there is one, else the one ``playwright install`` fetched."""
    executable = str(CHROMIUM) if CHROMIUM.exists() else None
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def wait_until(page: Any, expression: str, arg: Any = None, timeout: float = 30.0) -> None:
    """Poll ``expression`` (a JS function of ``arg``) in ``page`` until it is truthy.

    Playwright's ``wait_for_function`` polls with ``eval`` inside the page, which the
    dashboard's Content-Security-Policy refuses once a first check comes out false;
    ``evaluate`` runs through the debugger protocol, which the policy does not govern.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f}s: {expression}")
        page.wait_for_timeout(100)


@contextmanager
def dashboard_page(url: str, token: str, errors: list[str], timeout_ms: int = 15_000) -> Iterator[Any]:
    """A Chromium page logged in to the dashboard at ``url``; page errors go to ``errors``.

    Playwright's sync API: run it off the trio loop, in ``trio.to_thread.run_sync``.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(timeout_ms)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/login?token={token}")
            yield page
        finally:
            browser.close()


class Chromium:
    """One Chromium for a whole session, on a thread of its own so that a hive's trio loop keeps serving.

    Every Playwright call goes through :meth:`run`; :meth:`dashboard` opens a logged-in page.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._thread.submit(self._launch).result()

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = launch_chromium(self._playwright)
        except BaseException:
            self._playwright.stop()
            raise

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the browser's thread; the trio loop is free meanwhile."""
        import trio

        future = self._thread.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def new_context(self, **options: Any) -> Any:
        """A fresh Playwright browser context (its own cookies) made with ``options``.

        Call it on the browser's thread, from a function handed to :meth:`run`. The
        viewport defaults to a desktop's; a phone's is, say, ``viewport={"width": 390,
        "height": 844}, is_mobile=True, has_touch=True``.
        """
        options.setdefault("viewport", {"width": 1440, "height": 900})
        context = self._browser.new_context(**options)
        context.set_default_timeout(15_000)
        return context

    async def dashboard(self, hive: Hive | Daemon, path: str = "/", errors: list[str] | None = None) -> Any:
        """A fresh page (own cookies) logged in to the dashboard of ``hive`` (or of a :class:`Daemon`) at ``path``.

        Page errors go to ``errors``.
        """
        import trio

        if isinstance(hive, Daemon):
            login = await trio.to_thread.run_sync(hive.login_url)
        else:
            from hyperhive_web import dashboard_of

            login = dashboard_of(hive).login_url
        root = login.split("/login?", 1)[0]

        def open_page() -> Any:
            page = self.new_context().new_page()
            if errors is not None:
                page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(login)
            if path != "/":
                page.goto(f"{root}{path}")
            return page

        return await self.run(open_page)

    def close(self) -> None:
        def stop() -> None:
            self._browser.close()
            self._playwright.stop()

        self._thread.submit(stop).result()
        self._thread.shutdown()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """A :class:`Chromium` for the session; skips the test, saying what to install, where there is no browser."""
    pytest.importorskip("playwright", reason="Playwright is not installed: pip install 'hyperhive[testing]'")
    from playwright.sync_api import Error

    try:
        browser = Chromium()
    except Error as exc:
        pytest.skip(f"Chromium does not start ({str(exc).splitlines()[0]}); install chromium or `playwright install`")
    yield browser
    browser.close()
