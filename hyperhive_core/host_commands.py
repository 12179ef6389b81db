"""Core's host-socket commands: what ``hyperhive status``, ``send``, ``pause`` … ask the daemon."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from hyperhive_core import dead_letters
from hyperhive_core.agents import AGENT, MANAGER
from hyperhive_core.cluster import HostDown, is_forwarded, one_host_only
from hyperhive_core.names import OPERATOR

if TYPE_CHECKING:
    from hyperhive_core.cluster.hosts import Cluster
    from hyperhive_core.hive import Hive

Command = TypeVar("Command", bound=Callable[..., Awaitable[Any]])
# Where a command runs in a hive across hosts: (the host, the agent it is about), or (None, None) for here.
Placement = Callable[["Cluster", dict[str, Any]], tuple[str | None, str | None]]


def _forwarding(cmd: str, where: Placement) -> Callable[[Command], Command]:
    """Run the command on the host ``where`` names, when that is another host of the hive
    (docs/cluster.md): the answer, or the error, is that host's, as if it were local."""

    def wrap(command: Command) -> Command:
        signature = inspect.signature(command)

        @functools.wraps(command)
        async def run(hive: Hive, *args: Any, **kwargs: Any) -> Any:
            if hive.cluster is not None and not is_forwarded():
                arguments = dict(signature.bind(hive, *args, **kwargs).arguments)
                del arguments["hive"]
                host, agent = where(hive.cluster, arguments)
                if host is not None:
                    return await hive.cluster.forward(host, cmd, arguments, agent)
            return await command(hive, *args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def routed(cmd: str, param: str = "agent") -> Callable[[Command], Command]:
    """On the host the agent named by argument ``param`` is placed on."""
    return _forwarding(cmd, lambda cluster, arguments: (cluster.elsewhere(arguments.get(param)), arguments.get(param)))


def on_manager_host(cmd: str) -> Callable[[Command], Command]:
    """On the manager's host, which keeps the approvals and drafts."""
    return _forwarding(cmd, lambda cluster, arguments: (cluster.manager_host(), cluster.hive.agents.manager))


async def status(hive: Hive) -> dict[str, Any]:
    """The hive at a glance: backend, model endpoint, every agent's state, the broker's health."""
    backend_status = {
        "name": hive.backend.name,
        "isolated": hive.backend.isolated,
        "limits": hive.backend.limits_summary,
    }
    names = [each.name for each in hive.agents]
    depths, health, dead = await hive.broker.overview(names)  # on sqlite, one read for all three
    return {
        "state_dir": str(hive.paths.root),
        "backend": backend_status,
        "rehearsal": hive.rehearsal.url if hive.rehearsal else None,
        "agents": await _listing(hive, names, depths),
        # The hosts of a hive that spans several; "host" is None on a hive of one host.
        "cluster": hive.cluster.status() if hive.cluster is not None else {"host": None, "hosts": []},
        # Where the messages are kept: the sqlite file, or the NATS nodes, streams and consumers.
        "broker": health,
        "dead_letters": dead,
    }


async def agents(hive: Hive) -> list[dict[str, Any]]:
    """Every agent with its live state and inbox depth; in a hive across hosts, every host's,
    each with its ``host`` (those of a down host in state ``down``)."""
    names = [each.name for each in hive.agents]
    return await _listing(hive, names, await hive.broker.inbox_depths(names))


async def _listing(hive: Hive, names: list[str], depths: dict[str, int]) -> list[dict[str, Any]]:
    """``agents``, given this host's agents and their inbox depths (one question to the broker, however many)."""
    here = [await _described(hive, name, depths[name]) for name in names]
    cluster = hive.cluster
    if cluster is None or is_forwarded():
        return here
    everyone = [{**each, "host": cluster.host} for each in here]
    others = sorted({*cluster.placement.values(), *cluster.hosts} - {cluster.host})
    found: dict[str, list[dict[str, Any]]] = {}

    async def ask(host: str) -> None:
        try:
            # A listing waits no longer than a send would: a host that does not answer shows down.
            listed = await cluster.forward(host, "agents", {}, timeout=cluster.jetstream.request_timeout_seconds)
            found[host] = [{**each, "host": host} for each in listed]
        except HostDown as exc:
            found[host] = await _unreachable(hive, cluster, host, str(exc))

    async with trio.open_nursery() as nursery:
        for host in others:
            nursery.start_soon(ask, host)
    for host in others:
        everyone += found[host]
    return sorted(everyone, key=lambda each: (each["role"] != MANAGER, each["name"]))


async def _unreachable(hive: Hive, cluster: Cluster, host: str, reason: str) -> list[dict[str, Any]]:
    """The agents placed on a host that does not answer: state ``down``, and their queued messages."""
    names = [name for name, placed in sorted(cluster.placement.items()) if placed == host]
    depths = await hive.broker.inbox_depths(names)
    return [
        {
            "name": name,
            "host": host,
            "role": MANAGER if name == hive.agents.manager else AGENT,
            "state": "down",
            "detail": reason,
            "model": "",
            "inbox_depth": depths[name],
        }
        for name in names
    ]


@routed("agent")
async def agent(hive: Hive, agent: str) -> dict[str, Any]:
    """One agent: its live state, config, resource limits (with usage), inbox depth, and
    the connections its egress list refused lately."""
    return await _described(hive, agent, await hive.broker.inbox_depth(agent))


async def _described(hive: Hive, agent: str, inbox_depth: int) -> dict[str, Any]:
    described = hive.agents.get(agent).snapshot()  # a new dict each time: added to, not copied
    described["limits"] = await hive.backend.limits(hive.listed_spec(agent))
    described["inbox_depth"] = inbox_depth
    described["egress_denied"] = hive.model_proxy.denied(agent)
    return described


async def send(hive: Hive, to: str, body: str, idempotency_key: str | None = None) -> dict[str, Any]:
    """Send a message as the operator: the socket belongs to the operator.

    A repeat with the same ``idempotency_key`` (a client retrying after a lost
    answer) stores nothing and answers with the first message's id.
    """
    if hive.cluster is None or hive.cluster.elsewhere(to) is None:
        hive.agents.get(to)  # another host's agent gets it from the shared broker, even while that host is down
    message = await hive.broker.send(OPERATOR, to, body, idempotency_key=idempotency_key)
    return {"id": message.id, "to": to}


async def recv(hive: Hive, agent: str = OPERATOR, limit: int = 20) -> list[dict[str, Any]]:
    """The last messages addressed to ``agent`` (the operator's inbox by default)."""
    messages = await hive.broker.recent_for(agent, limit)
    return [
        {"id": m.id, "from": m.sender, "to": m.recipient, "kind": m.kind, "body": m.body, "at": m.created_at}
        for m in messages
    ]


@routed("pause")
async def pause(hive: Hive, agent: str) -> dict[str, Any]:
    hive.agents.get(agent)
    await hive.pause(agent)
    return hive.agents.get(agent).snapshot()


@routed("resume")
async def resume(hive: Hive, agent: str) -> dict[str, Any]:
    hive.agents.get(agent)
    await hive.resume(agent)
    return hive.agents.get(agent).snapshot()


@routed("cancel")
async def cancel(hive: Hive, agent: str) -> dict[str, Any]:
    return {"cancelled": await hive.cancel(agent)}


@routed("model")
async def model(hive: Hive, agent: str, model: str) -> dict[str, Any]:
    return await hive.set_model(agent, model)


@_forwarding("spawn", lambda cluster, arguments: (cluster.other_host(arguments.get("host")), None))
async def spawn(hive: Hive, agent: str, host: str | None = None) -> dict[str, Any]:
    """A new agent with the default config; in a hive across hosts, on ``host`` (default: this one)."""
    if host is not None and hive.cluster is None:
        raise one_host_only(host)
    return await hive.spawn(agent)


@routed("destroy")
async def destroy(hive: Hive, agent: str, purge: bool = False) -> dict[str, Any]:
    return await hive.destroy(agent, purge=bool(purge))


@routed("restore")
async def restore(hive: Hive, agent: str) -> dict[str, Any]:
    return await hive.restore(agent)


@routed("rebuild")
async def rebuild(hive: Hive, agent: str) -> dict[str, Any]:
    return await hive.rebuild(agent)


async def kept(hive: Hive) -> list[dict[str, Any]]:
    """Destroyed agents whose state is kept, restorable or purgeable."""
    return [
        {"name": name, "destroyed_at": row["destroyed_at"], "created_at": row["created_at"]}
        for name, row in (await hive.kept_state()).items()
    ]


@on_manager_host("approvals")
async def approvals(hive: Hive, status: str | None = None) -> list[dict[str, Any]]:
    """The manager's requests, newest first (only those with ``status`` if given)."""
    return [approval.to_json() for approval in await hive.approvals.list(status)]


@on_manager_host("approval")
async def approval(hive: Hive, approval_id: int) -> dict[str, Any]:
    """One request, with its diff and problems."""
    return (await hive.approvals.get(int(approval_id))).to_json()


@on_manager_host("approve")
async def approve(hive: Hive, approval_id: int, note: str = "") -> dict[str, Any]:
    return (await hive.approvals.approve(int(approval_id), note)).to_json()


@on_manager_host("deny")
async def deny(hive: Hive, approval_id: int, note: str) -> dict[str, Any]:
    return (await hive.approvals.deny(int(approval_id), note)).to_json()


@on_manager_host("drafts")
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
