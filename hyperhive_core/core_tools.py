"""The hive's own MCP tools: messaging for every agent; the agent list and change requests for the manager."""

from __future__ import annotations

import hashlib
import json

from hyperhive_core.approvals import Approval
from hyperhive_core.harness import render_batch
from hyperhive_core.tools import ToolContext


async def send(ctx: ToolContext, to: str, body: str) -> str:
    """Send a message to another agent, or to the operator (the human).

    :param to: the recipient: an agent's name, or "operator".
    :param body: the message text.
    """
    message = await ctx.hive.broker.send(ctx.agent, to, body, idempotency_key=turn_send_key(ctx, to, body))
    return f"sent message {message.id} to {to}"


def turn_send_key(ctx: ToolContext, to: str, body: str) -> str | None:
    """The idempotency key of a send in a turn, the same when a retried turn replays it.

    A retried turn (after a daemon crash, an API error, a failed turn) handles the
    same oldest message again and may make the same sends again. The key is the
    agent, that message's id, the recipient, the body, and which repeat of that
    same send this is in the attempt: a retry stores nothing new, while a send
    repeated within one attempt, or in a later turn (a newer batch), is new.
    Outside a turn nothing replays a send, so it gets no key.
    """
    harness = ctx.hive.harnesses.get(ctx.agent)
    if harness is None or harness.current_batch is None:
        return None
    batch = harness.current_batch
    send = hashlib.sha256(json.dumps([to, body]).encode()).hexdigest()
    harness.attempt_sends[send] += 1
    turn_work = json.dumps([ctx.agent, min(batch.ids), send, harness.attempt_sends[send]])
    return "turn-" + hashlib.sha256(turn_work.encode()).hexdigest()[:40]


async def recv(ctx: ToolContext) -> str:
    """Read messages that arrived for you during this turn, without waiting."""
    batch = await ctx.hive.broker.lease(ctx.agent)
    if batch is None:
        return "no new messages"
    # The tool result is the delivery: once the model has read them, they are done.
    await ctx.hive.broker.ack(batch)
    return render_batch(batch.messages)


def peers(ctx: ToolContext) -> str:
    """List who you may message."""
    return "\n".join(ctx.hive.agents.peers(ctx.agent))


def list_agents(ctx: ToolContext) -> str:
    """List every agent in the hive with its role, state and model."""
    lines = []
    for agent in ctx.hive.agents:
        status = agent.status
        flags = [flag for flag in ("paused", "failed", "stopped") if getattr(status, flag)]
        state = status.state.value + (f" ({status.detail})" if status.detail else "")
        lines.append(
            f"{agent.name}: {agent.role}, {state}, model {status.model}{', ' + ', '.join(flags) if flags else ''}"
        )
    cluster = ctx.hive.cluster
    if cluster is not None:  # the other hosts' agents: where each runs, and whether its host is up
        lines += [
            f"{name}: on host {host}{'' if cluster.is_up(host) else ' (down: its messages wait)'}"
            for name, host in sorted(cluster.placement.items())
            if host != cluster.host
        ]
    return "\n".join(lines) or "no agents"


# -- the manager's requests to the operator (docs/approvals.md) --------------------------


async def request_spawn(ctx: ToolContext, name: str, description: str, host: str = "") -> str:
    """Ask the operator to create a new agent with the default config; it starts once approved.

    :param name: the new agent's name: 1-31 lowercase letters, digits and '-', starting with a letter.
    :param description: what the agent is for, for the operator to judge.
    :param host: in a hive that spans hosts, the host to run it on; empty: the up host with the fewest agents.
    """
    return _requested(await ctx.hive.approvals.request_spawn(ctx.agent, name, description, host))


async def request_spawn_draft(ctx: ToolContext, name: str) -> str:
    """Create a draft agent: its config repo and state dir, no container. No approval needed.

    Edit agent.toml in the draft's config repo, commit, then call request_spawn_commit.

    :param name: the new agent's name: 1-31 lowercase letters, digits and '-', starting with a letter.
    """
    approvals = ctx.hive.approvals
    await approvals.request_spawn_draft(ctx.agent, name)
    return (
        f"draft {name} created; its config repo is {approvals.repo_path_for_manager(name)} "
        "(a draft_created event follows, and the repo is there from that turn on). "
        f"Edit agent.toml, commit, then call request_spawn_commit({name!r}, <branch or commit>)."
    )


async def request_spawn_commit(ctx: ToolContext, name: str, commit_ref: str) -> str:
    """Ask the operator to start draft agent `name` from a commit of its config repo.

    The commit is resolved now: moving the branch later changes nothing.

    :param name: the draft's name.
    :param commit_ref: a branch (main), a full ref, HEAD, or a commit id.
    """
    return _requested(await ctx.hive.approvals.request_spawn_commit(ctx.agent, name, commit_ref))


async def request_apply_commit(ctx: ToolContext, name: str, commit_ref: str, description: str) -> str:
    """Ask the operator to apply a commit of a running agent's config repo; it is rebuilt once approved.

    The commit is resolved now: moving the branch later changes nothing.

    :param name: the agent whose config changes.
    :param commit_ref: a branch (main), a full ref, HEAD, or a commit id.
    :param description: what the change does and why, for the operator to judge.
    """
    return _requested(await ctx.hive.approvals.request_apply_commit(ctx.agent, name, commit_ref, description))


async def request_destroy(ctx: ToolContext, name: str, purge: bool = False) -> str:
    """Ask the operator to destroy an agent. Its state is kept (restorable) unless purge.

    :param name: the agent to destroy.
    :param purge: also wipe its state and config repos; this cannot be undone.
    """
    return _requested(await ctx.hive.approvals.request_destroy(ctx.agent, name, purge))


def _requested(approval: Approval) -> str:
    commit = f" at {approval.fetched_sha[:12]}" if approval.fetched_sha else ""
    text = (
        f"approval {approval.id} ({approval.kind} {approval.agent}{commit}) is waiting for the operator; "
        "the answer arrives in your inbox as an approval_resolved event."
    )
    if approval.problems:
        text += (
            f" Its config is invalid, so it can only be denied: {'; '.join(approval.problems)}. "
            "Fix it in a new commit, and ask again once this one is resolved."
        )
    return text


TOOLS = [
    (send, ("agent", "manager")),
    (recv, ("agent", "manager")),
    (peers, ("agent", "manager")),
    (list_agents, ("manager",)),
    (request_spawn, ("manager",)),
    (request_spawn_draft, ("manager",)),
    (request_spawn_commit, ("manager",)),
    (request_apply_commit, ("manager",)),
    (request_destroy, ("manager",)),
]
