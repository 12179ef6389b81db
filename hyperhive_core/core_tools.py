"""The hive's own MCP tools: messaging for every agent, the agent list for the manager."""

from __future__ import annotations

from hyperhive_core.harness import render_batch
from hyperhive_core.tools import ToolContext


async def send(ctx: ToolContext, to: str, body: str) -> str:
    """Send a message to another agent, or to the operator (the human).

    :param to: the recipient: an agent's name, or "operator".
    :param body: the message text.
    """
    message = await ctx.hive.broker.send(ctx.agent, to, body)
    return f"sent message {message.id} to {to}"


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
    return "\n".join(lines) or "no agents"


TOOLS = [
    (send, ("agent", "manager")),
    (recv, ("agent", "manager")),
    (peers, ("agent", "manager")),
    (list_agents, ("manager",)),
]
