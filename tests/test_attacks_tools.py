"""Attacks through the hive's tools: arguments an agent chooses, sent as its own socket would send them."""

from __future__ import annotations

from hyperhive_core.testing import call_tool, needs_claude, running_hive

pytestmark = needs_claude

SCENARIO = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""


async def test_an_oversized_request_description_is_refused_before_it_is_stored(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        # Each pending spawn is another name: without a bound, a few hundred fill the host's disk.
        text, is_error = await call_tool(hive, "manager", "request_spawn", name="filler", description="x" * 3_000_000)
        assert is_error
        assert "description is 3000000 characters, over the 10000-character limit" in text
        assert await hive.approvals.list() == []
        text, is_error = await call_tool(hive, "manager", "request_spawn", name="scout", description="x" * 10_000)
        assert not is_error, text
