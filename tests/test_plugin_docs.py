"""The examples in docs/plugins.md run as written: storage, config, CLI and slash commands, a sealed hive."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import trio

from hyperhive_core import collect, hookimpl
from hyperhive_core.boot import config_schemas
from hyperhive_core.config import load_config
from hyperhive_core.errors import ConfigError
from hyperhive_core.hostclient import HostCommandError
from hyperhive_core.testing import Script, call_tool, host_request, run_cli, running_hive

DOC = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()


def section(heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}$(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"docs/plugins.md has no '## {heading}' section"
    return match.group(1)


def examples(heading: str, language: str = "python") -> list[str]:
    """The fenced blocks in ``language`` (``""``: none given) under ``## heading``, in order."""
    found, block, fence = [], [], None
    for line in section(heading).splitlines():
        if fence is None and line.startswith("```"):
            fence, block = line.removeprefix("```"), []
        elif fence is not None and line == "```":
            if fence == language:
                found.append("\n".join(block) + "\n")
            fence = None
        elif fence is not None:
            block.append(line)
    assert found, f"docs/plugins.md's '{heading}' has no {language or 'plain'} block"
    return found


def plugin_from(monkeypatch: pytest.MonkeyPatch, *headings: str) -> types.ModuleType:
    """A module made of the sections' examples, one after the other, as a plugin would hold them."""
    module = types.ModuleType("hyperhive_hello")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # where dataclasses look up its names
    for heading in headings:
        for code in examples(heading):
            exec(compile(code, f"docs/plugins.md ({heading})", "exec"), module.__dict__)
    return module


def test_the_config_example_says_what_the_docs_show(make_pm, monkeypatch):
    module = plugin_from(monkeypatch, "Config")

    class Sections:
        @hookimpl
        def register_config_sections(self, register):
            register("hello", module.HelloSection)

    shown = examples("Config", "")[0].strip()  # the error line, as `hyperhive up` prints it
    path = Path(re.match(r"Error: (\S+):", shown).group(1))
    schemas = config_schemas(make_pm(hello=Sections()))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"hello": {"volume": 11}}, schemas)
    assert f"Error: {caught.value}" == shown
    with pytest.raises(ConfigError, match=r"\[hello\] repeat must be at least 1, not 0$"):
        load_config(path, {"hello": {"repeat": 0}}, schemas)
    assert load_config(path, {"hello": {"repeat": 2}}, schemas).section("hello").repeat == 2


async def test_the_storage_cli_and_slash_command_examples_work_on_a_running_hive(make_pm, tmp_path, monkeypatch):
    module = plugin_from(monkeypatch, "Storage", "CLI commands that reach the daemon", "Slash commands")
    pm = make_pm(hello=module)
    script = Script()
    script.otherwise("nothing to do")
    async with running_hive(tmp_path, pm, script, agents={"worker": {}}) as hive:
        with pytest.raises(HostCommandError, match="^worker has greeted nobody yet$"):
            await host_request(hive, "greetings", agent="worker")
        assert await call_tool(hive, "worker", "greet", name="Ada") == ("hello, Ada! (1 so far)", False)
        assert await call_tool(hive, "worker", "greet", name="Bo") == ("hello, Bo! (2 so far)", False)
        assert await host_request(hive, "greetings", agent="worker") == {"agent": "worker", "greetings": 2}

        shown = await run_cli(hive, "greetings", "worker")
        assert (shown.exit_code, shown.output) == (0, "worker: 2 greetings\n")
        as_json = await run_cli(hive, "greetings", "worker", "--json")
        assert as_json.exit_code == 0
        assert '"greetings": 2' in as_json.output
        unknown = await run_cli(hive, "greetings", "ghost")
        assert unknown.exit_code == 1
        assert "no agent named 'ghost'" in unknown.output

        with pytest.raises(AttributeError, match=r"hive\.cache cannot be set: .* hive\.stash under a StashKey"):
            hive.cache = {}  # the State section: the hive is sealed
        slash = collect(pm, "register_slash_commands", "slash command", lambda name, handler, help="": (name, handler))
        with trio.fail_after(30):
            assert await slash["greetings"](hive, "worker", "") == "worker has greeted 2 people"
