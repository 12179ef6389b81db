"""Operator approvals end to end: the manager's requests through the real CLI, the operator's answers."""

from __future__ import annotations

import json

import trio
from hivekit import needs_claude, next_event, running_hive

from hyperhive_core import hookimpl

pytestmark = needs_claude

QUIET = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""


async def test_hook_on_approval_resolved(make_pm, tmp_path):
    seen = []

    class Watch:
        @hookimpl
        async def on_approval_resolved(self, hive, approval):
            inbox = await hive.broker.recent_for("manager", 5)
            seen.append((approval.id, approval.status, approval.note, [json.loads(m.body)["event"] for m in inbox]))

    async with running_hive(tmp_path, make_pm(watch=Watch()), QUIET) as hive:
        request = await hive.approvals.request_spawn("manager", "scout", "a scout for the docs")
        denied = await hive.approvals.deny(request.id, "not today")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
    assert denied.status == "denied"
    assert seen == [(request.id, "denied", "not today", ["approval_resolved"])]
