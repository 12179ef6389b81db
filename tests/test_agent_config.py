"""An agent's config: core fields, plugin sections typed by their plugins, validation hooks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hyperhive_core import hookimpl
from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.config import build_section, option
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import ConfigError
from hyperhive_core.testing import needs_claude, running_hive


@dataclass
class GreetingSection:
    words: list[str] = option([], help="Greetings this agent may use.")


class Greeting:
    @hookimpl
    def register_agent_sections(self, register):
        register("greeting", GreetingSection)

    @hookimpl
    def validate_agent_config(self, agent, config):
        section = config.section("greeting")
        if section and "rude" in section.words:
            return [f"{agent} may not be rude"]
        return None


def parse(table: dict) -> AgentConfig:
    return build_section(AgentConfig, table, "agents.worker", "hyperhive.toml")


def test_hook_register_agent_sections(make_pm):
    config = parse({"model": "sonnet", "greeting": {"words": ["hi", "hello"]}})
    assert config.sections == {"greeting": {"words": ["hi", "hello"]}}  # raw until checked
    checked = check_agent_config(make_pm(greeting=Greeting()), "worker", config, "hyperhive.toml [agents.worker]")
    assert checked.section("greeting") == GreetingSection(["hi", "hello"])
    assert checked.section("absent") is None
    assert checked.model == "sonnet"


def test_unknown_or_mistyped_sections_are_refused_together(make_pm):
    config = parse({"greting": {"words": []}, "greeting": {"words": "hi"}, "model": "two words"})
    with pytest.raises(ConfigError) as caught:
        check_agent_config(make_pm(greeting=Greeting()), "worker", config, "w.toml")
    message = str(caught.value)
    assert message.startswith("w.toml: agent 'worker' has an invalid config: ")
    assert "unknown section [greting] (sections plugins read: [greeting])" in message
    assert "greeting.words must be a list of strings, not a string ('hi')" in message


def test_hook_validate_agent_config(make_pm):
    pm = make_pm(greeting=Greeting())
    with pytest.raises(ConfigError, match="worker may not be rude"):
        check_agent_config(pm, "worker", parse({"greeting": {"words": ["rude"]}}), "w.toml")
    with pytest.raises(ConfigError, match="model name 'two words' is not valid"):
        check_agent_config(pm, "worker", parse({"model": "two words"}), "w.toml")
    with pytest.raises(ConfigError, match=r"allowed_recipients: invalid agent name '\.\.'"):
        check_agent_config(pm, "worker", parse({"allowed_recipients": [".."]}), "w.toml")


@needs_claude
async def test_hook_on_cancel(make_pm, tmp_path):
    cancelled = []

    class Napper:
        @hookimpl
        def on_cancel(self, hive, agent):
            cancelled.append((agent, hive.agents.get(agent).status.state.value))

    scenario = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
    async with running_hive(tmp_path, make_pm(napper=Napper()), scenario) as hive:
        assert await hive.cancel("manager") is False  # not in a turn: only the plugins act
    assert cancelled == [("manager", "idle")]


async def test_an_invalid_declared_agent_stops_startup(make_pm, make_config):
    pm = make_pm()
    config = make_config(pm, agents={"worker": {"alowlist": {"bash": []}}})
    with pytest.raises(ConfigError, match=r"\[agents.worker\]: agent 'worker' has an invalid config: unknown section"):
        await run_hive(config, pm)
