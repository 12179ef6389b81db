"""An agent's resource limits on its page and in its JSON: enforced with usage, or "no limits" and why."""

from __future__ import annotations

import json
import re

import pytest
import trio
from hyperhive_web import dashboard_of
from test_bwrap import needs_bwrap
from webkit import dashboard_hive, operator, screenshot

from hyperhive_core.testing import needs_claude, operator_reply

pytestmark = [needs_claude, pytest.mark.slow]


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


async def test_the_process_backend_shows_no_limits_and_why(hive, browser):
    state = json.loads((await operator(hive).get("/api/agents/worker/state")).body)
    assert state["limits"] == {"enforced": False, "why": "no limits: the process backend applies none"}
    page = await browser.page()

    def steps() -> None:
        page.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}&next=/agent/worker/")
        chip = page.locator("#limits")
        expect(chip).to_have_text("no limits")
        expect(chip).to_have_attribute("title", "no limits: the process backend applies none")

    with trio.fail_after(60):
        await browser.run(steps)


@needs_bwrap
async def test_a_capped_agent_shows_its_caps_against_its_usage(tmp_path, web_pm, browser):
    async with dashboard_hive(
        tmp_path,
        web_pm,
        agents={"worker": {"memory_max_mb": 1024, "memory_high_mb": 768, "pids_max": 256, "cpu_weight": 300}},
        hive={"container_backend": "bwrap"},
        bwrap={"uid_range_start": 62600, "uid_range_size": 10},
    ) as hive:
        before = json.loads((await operator(hive).get("/api/agents/worker/state")).body)["limits"]
        if not before["enforced"]:
            pytest.skip(f"this machine enforces no cgroup limits: {before['why']}")
        with trio.fail_after(60):
            await hive.broker.send("operator", "worker", "ping")
            await operator_reply(hive, "worker")  # its Claude Code runs, and uses memory
        state = json.loads((await operator(hive).get("/api/agents/worker/state")).body)
        limits = state["limits"]
        assert (limits["enforced"], limits["memory_max_mb"], limits["pids_max"]) == (True, 1024, 256)
        assert limits["usage"]["memory_mb"] > 0
        page = await browser.page()

        def steps() -> None:
            page.goto(f"{dashboard_of(hive).url}/login?token={dashboard_of(hive).token}&next=/agent/worker/")
            chip = page.locator("#limits")
            expect(chip).to_have_text(re.compile(r"^mem \d+/1024 MiB · pids \d+/256 · cpu 300$"))
            expect(chip).to_have_attribute("title", re.compile(r"^enforced with cgroup v\d, soft memory cap 768 MiB$"))
            screenshot(page, "agent-limits")

        with trio.fail_after(60):
            await browser.run(steps)
