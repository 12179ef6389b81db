"""A name that cannot be an agent's is refused with the rule, the same one everywhere: the
dashboard's spawn form, its API, the host socket and the CLI."""

from __future__ import annotations

import re

import hyperhive_web
import pytest
import trio

from hyperhive_core import AGENT_NAME_PATTERN, AGENT_NAME_RULE
from hyperhive_core.hostclient import HostCommandError
from hyperhive_core.names import check_agent_name
from hyperhive_core.testing import Script, host_request, run_cli, running_hive, wait_until

BAD = ["Scout", "1scout", "scout_1", "s" * 32, ""]
GOOD = ["scout", "s", "scout-2", "s" * 31]


def script() -> Script:
    script = Script()
    script.otherwise("ok")
    return script


@pytest.mark.parametrize("name", BAD)
def test_the_rule_in_words_is_the_pattern_the_check_uses(name):
    assert not re.fullmatch(AGENT_NAME_PATTERN, name)
    with pytest.raises(Exception, match=re.escape(f"invalid agent name {name!r}: use {AGENT_NAME_RULE}")):
        check_agent_name(name)


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(name):
    assert re.fullmatch(AGENT_NAME_PATTERN, name)
    assert check_agent_name(name) == name


async def test_a_bad_name_is_refused_with_the_rule_everywhere(make_pm, tmp_path, chromium):
    async with running_hive(tmp_path, make_pm(web=hyperhive_web), script(), web={"port": 0}) as hive:
        with pytest.raises(HostCommandError, match=re.escape(AGENT_NAME_RULE)):
            await host_request(hive, "spawn", agent="Scout_1")
        refused = await run_cli(hive, "spawn", "Scout_1")
        assert refused.exit_code == 1
        assert refused.output == f"Error: invalid agent name 'Scout_1': use {AGENT_NAME_RULE}\n"

        page = await chromium.dashboard(hive)
        field = "() => document.getElementById('spawn-name')"

        def check_the_form() -> dict[str, object]:
            page.fill("#spawn-name", "Scout_1")
            shown = page.evaluate(
                f"() => {{ const input = ({field})(); "
                "return {mismatch: input.validity.patternMismatch, title: input.title}; }"
            )
            page.fill("#spawn-name", "scout-1")
            shown["good_passes"] = page.evaluate(f"() => ({field})().checkValidity()")
            # Past the browser's check (a script, an old browser): the daemon says the same.
            page.fill("#spawn-name", "Scout_1")
            page.evaluate("() => { document.getElementById('spawn-form').noValidate = true; }")
            page.get_by_role("button", name="spawn", exact=True).click()
            wait_until(
                page,
                "() => [...document.querySelectorAll('.toast')].some(t => /invalid agent name/.test(t.textContent))",
            )
            shown["toast"] = page.evaluate(
                "() => [...document.querySelectorAll('.toast')].map(t => t.textContent).join('\\n')"
            )
            return shown

        with trio.fail_after(90):
            shown = await chromium.run(check_the_form)
        assert shown["mismatch"] is True
        assert shown["title"] == AGENT_NAME_RULE
        assert shown["good_passes"] is True
        assert f"invalid agent name 'Scout_1': use {AGENT_NAME_RULE}" in shown["toast"]
        assert "Scout_1" not in hive.agents
