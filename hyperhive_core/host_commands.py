"""Core's host-socket commands: what ``hyperhive status``, ``send``, ``pause`` … ask the daemon."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from hyperhive_core import dead_letters
from hyperhive_core.names import OPERATOR

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive


async def status(hive: Hive) -> dict[str, Any]:
    """The hive at a glance: backend, model endpoint, and every agent's state."""
    backend_status = {
        "name": hive.backend.name,
        "isolated": hive.backend.isolated,
        "limits": hive.backend.limits_summary,
    }
    return {
        "state_dir": str(hive.paths.root),
        "backend": backend_status,
        "rehearsal": hive.rehearsal.url if hive.rehearsal else None,
        "agents": await agents(hive),
    }


async def agents(hive: Hive) -> list[dict[str, Any]]:
    """Every agent with its live state and inbox depth."""
    return [await agent(hive, each.name) for each in hive.agents]


async def agent(hive: Hive, agent: str) -> dict[str, Any]:
    """One agent: its live state, config, resource limits (with usage), inbox depth, and
    the connections its egress list refused lately."""
    return {
        **hive.agents.get(agent).snapshot(),
        "limits": await hive.backend.limits(hive.container_spec(agent)),
        "inbox_depth": await hive.broker.inbox_depth(agent),
        "egress_denied": hive.model_proxy.denied(agent),
    }


async def send(hive: Hive, to: str, body: str, idempotency_key: str | None = None) -> dict[str, Any]:
    """Send a message as the operator: the socket belongs to the operator.

    A repeat with the same ``idempotency_key`` (a client retrying after a lost
    answer) stores nothing and answers with the first message's id.
    """
    hive.agents.get(to)
    message = await hive.broker.send(OPERATOR, to, body, idempotency_key=idempotency_key)
    return {"id": message.id, "to": to}


async def recv(hive: Hive, agent: str = OPERATOR, limit: int = 20) -> list[dict[str, Any]]:
    """The last messages addressed to ``agent`` (the operator's inbox by default)."""
    messages = await hive.broker.recent_for(agent, limit)
    return [
        {"id": m.id, "from": m.sender, "to": m.recipient, "kind": m.kind, "body": m.body, "at": m.created_at}
        for m in messages
    ]


async def pause(hive: Hive, agent: str) -> dict[str, Any]:
    hive.agents.get(agent)
    await hive.pause(agent)
    return hive.agents.get(agent).snapshot()


async def resume(hive: Hive, agent: str) -> dict[str, Any]:
    hive.agents.get(agent)
    await hive.resume(agent)
    return hive.agents.get(agent).snapshot()


async def cancel(hive: Hive, agent: str) -> dict[str, Any]:
    return {"cancelled": await hive.cancel(agent)}


async def model(hive: Hive, agent: str, model: str) -> dict[str, Any]:
    return await hive.set_model(agent, model)


async def spawn(hive: Hive, agent: str) -> dict[str, Any]:
    return await hive.spawn(agent)


async def destroy(hive: Hive, agent: str, purge: bool = False) -> dict[str, Any]:
    return await hive.destroy(agent, purge=bool(purge))


async def restore(hive: Hive, agent: str) -> dict[str, Any]:
    return await hive.restore(agent)


async def rebuild(hive: Hive, agent: str) -> dict[str, Any]:
    return await hive.rebuild(agent)


async def kept(hive: Hive) -> list[dict[str, Any]]:
    """Destroyed agents whose state is kept, restorable or purgeable."""
    return [
        {"name": name, "destroyed_at": row["destroyed_at"], "created_at": row["created_at"]}
        for name, row in (await hive.kept_state()).items()
    ]


async def approvals(hive: Hive, status: str | None = None) -> list[dict[str, Any]]:
    """The manager's requests, newest first (only those with ``status`` if given)."""
    return [approval.to_json() for approval in await hive.approvals.list(status)]


async def approval(hive: Hive, approval_id: int) -> dict[str, Any]:
    """One request, with its diff and problems."""
    return (await hive.approvals.get(int(approval_id))).to_json()


async def approve(hive: Hive, approval_id: int, note: str = "") -> dict[str, Any]:
    return (await hive.approvals.approve(int(approval_id), note)).to_json()


async def deny(hive: Hive, approval_id: int, note: str) -> dict[str, Any]:
    return (await hive.approvals.deny(int(approval_id), note)).to_json()


async def drafts(hive: Hive) -> list[dict[str, Any]]:
    """Agents drafted by the manager and not spawned yet."""
    return [draft.to_json() for draft in await hive.approvals.drafts()]


COMMANDS = {
    "agent": agent,
    "spawn": spawn,
    "destroy": destroy,
    "restore": restore,
    "rebuild": rebuild,
    "kept": kept,
    "status": status,
    "agents": agents,
    "send": send,
    "recv": recv,
    "pause": pause,
    "resume": resume,
    "cancel": cancel,
    "model": model,
    "approvals": approvals,
    "approval": approval,
    "approve": approve,
    "deny": deny,
    "drafts": drafts,
    **dead_letters.COMMANDS,
}

# The same commands as one object, ``operator_actions.<command>(hive, …)``: how the
# dashboard, itself a plugin, acts for the operator (docs/plugins.md).
operator_actions = SimpleNamespace(**COMMANDS)
