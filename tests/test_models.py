"""Model names: one check, at every way a name enters the hive, and what the real CLI makes of them."""

from __future__ import annotations

import json
import re

import pytest
import trio
from click.testing import CliRunner
from test_approvals import commit

from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.approvals import ApprovalError
from hyperhive_core.boot import config_schemas
from hyperhive_core.cli import cli
from hyperhive_core.config import load_config
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import ConfigError
from hyperhive_core.models import ALIASES, FULL_ID, InvalidModel, check_extra_models, check_model
from hyperhive_core.testing import needs_claude, running_hive

QUIET = '[[agents."*".rules]]\nsteps = [{ text = "ok" }]\n'
INJECTION = "--dangerously-skip-permissions"


@pytest.mark.parametrize(
    "name",
    [
        *ALIASES,
        "claude-sonnet-4-5",
        "claude-opus-4-1-20250805",
        "claude-3-5-haiku-20241022",
        "claude-sonnet-4-5@20250929",
        "claude-sonnet-4-5[1m]",
        "claude-opus-4.5",
    ],
)
def test_known_models_pass(name):
    assert check_model(name) == name


@pytest.mark.parametrize(
    "name",
    [
        INJECTION,
        "-x",
        "--model=opus",
        "",
        "two words",
        "sonnet\n",
        " sonnet",
        "sonnet;rm -rf /",
        "$(id)",
        "claude-sonnet-4-5\x00",
        "sönnet",
        "a" * 129,
        None,
        7,
        ["sonnet"],
    ],
)
def test_malformed_names_are_refused_even_when_listed_as_extra(name):
    with pytest.raises(InvalidModel) as refused:
        check_model(name, extra_models=[name] if isinstance(name, str) else [])
    message = str(refused.value)
    assert f"model name {name!r} is not valid: it must start with a letter or digit" in message
    assert "use an alias (haiku, sonnet, opus," in message
    assert "a full model id like claude-sonnet-4-5" in message


@pytest.mark.parametrize("name", ["gpt-4o", "Sonnet", "claude", "claude-", "claude--x", "CLAUDE-SONNET-4-5", "bedrock"])
def test_unknown_names_say_how_to_allow_them(name):
    with pytest.raises(InvalidModel) as refused:
        check_model(name)
    assert str(refused.value).endswith(
        f'To run another model, allow it in hyperhive.toml: [claude] extra_models = ["{name}"]'
    )
    assert check_model(name, extra_models=[name]) == name


def test_extra_models_must_look_like_model_names():
    check_extra_models(["my-proxy-model", "us.anthropic.claude-opus-4-8-v1:0", "route/claude-opus-5"])
    for bad in (INJECTION, "", "two words", "-"):
        with pytest.raises(InvalidModel, match=r"\[claude\] extra_models: .* cannot be a model name"):
            check_extra_models(["fine", bad])


# -- config: [claude] model, extra_models, [agents.NAME] model -------------------------------------


def load(make_pm, tmp_path, raw):
    return load_config(tmp_path / "hyperhive.toml", raw, config_schemas(make_pm()))


def test_claude_section_checks_its_model_and_extra_models(make_pm, tmp_path):
    path = tmp_path / "hyperhive.toml"
    with pytest.raises(ConfigError) as refused:
        load(make_pm, tmp_path, {"claude": {"model": INJECTION}})
    assert str(refused.value).startswith(f"{path}: [claude] model: model name '{INJECTION}' is not valid")
    with pytest.raises(ConfigError, match=r"\[claude\] model: unknown model 'my-proxy-model'.*extra_models = "):
        load(make_pm, tmp_path, {"claude": {"model": "my-proxy-model"}})
    with pytest.raises(ConfigError, match=rf"{path}: \[claude\] extra_models: '{INJECTION}' cannot be a model name"):
        load(make_pm, tmp_path, {"claude": {"extra_models": [INJECTION]}})
    config = load(make_pm, tmp_path, {"claude": {"model": "my-proxy-model", "extra_models": ["my-proxy-model"]}})
    assert config.section("claude").model == "my-proxy-model"


async def test_an_agents_model_in_hyperhive_toml_is_checked_at_startup(make_pm, make_config):
    pm = make_pm()
    config = make_config(pm, agents={"worker": {"model": INJECTION}})
    message = f"[agents.worker]: agent 'worker' has an invalid config: model name '{INJECTION}' is not valid"
    with pytest.raises(ConfigError, match=re.escape(message)):
        await run_hive(config, pm)


def test_an_agent_config_may_name_an_extra_model(make_pm):
    config = AgentConfig(model="house-model")
    with pytest.raises(ConfigError, match="unknown model 'house-model'"):
        check_agent_config(make_pm(), "worker", config, "w.toml")
    assert check_agent_config(make_pm(), "worker", config, "w.toml", extra_models=["house-model"]) == config


# -- the operator at run time: the host socket, the CLI, set_model ---------------------------------


async def host_command(hive, **command) -> dict:
    """One command over the host socket, as raw JSON lines (what any client sends)."""
    stream = await trio.open_unix_socket(str(hive.paths.host_socket))
    async with stream:
        await stream.send_all(json.dumps(command).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            data += await stream.receive_some(65536)
    return json.loads(data)


@needs_claude
async def test_the_host_socket_model_command_refuses_what_is_not_a_model(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), QUIET, agents={"worker": {}}) as hive:
        with trio.fail_after(20):
            for model in (INJECTION, "gpt-4o", ["opus"], None):
                reply = await host_command(hive, cmd="model", agent="worker", model=model)
                assert "ok" not in reply, reply
                assert f"{model!r}" in reply["error"]
                assert "use an alias (haiku, sonnet, opus," in reply["error"]
            ok = await host_command(hive, cmd="model", agent="worker", model="opus")
        assert ok["ok"]["model"] == "opus", ok
        assert hive.agents.get("worker").status.model == "opus"
        assert (await hive.agents.stored())["worker"]["model_override"] == "opus"


@needs_claude
async def test_the_model_cli_command_refuses_what_is_not_a_model(make_pm, tmp_path, clean_env):
    config = tmp_path / "cli.toml"
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n')

    def run(*args: str):
        return CliRunner().invoke(cli, ["--config", str(config), *args])

    async with running_hive(tmp_path, make_pm(), QUIET, agents={"worker": {}}) as hive:
        with trio.fail_after(30):
            injected = await trio.to_thread.run_sync(run, "model", "worker", "--", INJECTION)
            unknown = await trio.to_thread.run_sync(run, "model", "worker", "gpt-4o")
            switched = await trio.to_thread.run_sync(run, "model", "worker", "claude-opus-4-1")
        assert injected.exit_code == 1
        assert f"model name '{INJECTION}' is not valid" in injected.output
        assert unknown.exit_code == 1
        assert "[claude] extra_models" in unknown.output
        assert switched.exit_code == 0, switched.output
        assert switched.output == "worker: model claude-opus-4-1\n"
        assert hive.agents.get("worker").status.model == "claude-opus-4-1"


@needs_claude
async def test_a_stored_model_no_longer_allowed_is_dropped_at_start(make_pm, tmp_path):
    async with running_hive(
        tmp_path, make_pm(), QUIET, agents={"worker": {"model": "sonnet"}}, claude={"extra_models": ["house-model"]}
    ) as hive:
        await hive.set_model("worker", "house-model")
    async with running_hive(tmp_path, make_pm(), QUIET, agents={"worker": {"model": "sonnet"}}) as hive:
        assert hive.agents.get("worker").status.model == "sonnet"
        assert (await hive.agents.stored())["worker"]["model_override"] is None
        with pytest.raises(InvalidModel, match="unknown model 'house-model'"):
            await hive.set_model("worker", "house-model")


# -- agent.toml: the manager's config commits, through approvals ------------------------------------


@needs_claude
async def test_a_commit_with_an_invalid_model_can_only_be_denied(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), QUIET, claude={"extra_models": ["house-model"]}) as hive:
        await hive.spawn("scout")
        before = (await hive.agents.stored())["scout"]["applied_sha"]
        commit(hive.repos.proposed("scout"), f'model = "{INJECTION}"\n', "skip permissions")
        approval = await hive.approvals.request_apply_commit("manager", "scout", "main", "faster")
        assert len(approval.problems) == 1
        assert f"agent 'scout' has an invalid config: model name '{INJECTION}' is not valid" in approval.problems[0]
        with pytest.raises(ApprovalError, match=f"approval {approval.id} cannot be approved: .*Deny it with a note"):
            await hive.approvals.approve(approval.id)
        denied = await hive.approvals.deny(approval.id, "no flags as models")
        assert denied.status == "denied"
        assert (await hive.agents.stored())["scout"]["applied_sha"] == before
        assert hive.agents.get("scout").status.model == "haiku"

        commit(hive.repos.proposed("scout"), 'model = "house-model"\n', "the house model")
        allowed = await hive.approvals.request_apply_commit("manager", "scout", "main", "house model")
        assert allowed.problems == []
        assert (await hive.approvals.approve(allowed.id)).status == "approved"
        assert hive.agents.get("scout").status.model == "house-model"


# -- what the pinned CLI does with the names ----------------------------------------------------------


@needs_claude
@pytest.mark.slow
async def test_the_pinned_cli_resolves_every_alias_and_passes_other_names_verbatim(make_pm, tmp_path):
    """Each alias the check knows is one the CLI resolves to a full model id itself."""
    async with running_hive(
        tmp_path, make_pm(), QUIET, agents={"worker": {}}, claude={"extra_models": ["house-model"]}
    ) as hive:
        sent = {}
        for model in (*ALIASES, "house-model"):
            await hive.set_model("worker", model)
            mark = hive.rehearsal.request_count
            await hive.broker.send("operator", "worker", f"on {model}")
            with trio.fail_after(60):
                request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "worker", after=mark)
            sent[model] = request.body["model"]
    for alias in ALIASES:
        assert FULL_ID.fullmatch(sent[alias]), (alias, sent[alias])
    assert sent["house-model"] == "house-model"
