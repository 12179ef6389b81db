"""Operator approvals: the manager asks, the operator sees the exact diff and decides.

The manager changes the hive only by request (``request_spawn``,
``request_spawn_commit``, ``request_apply_commit``, ``request_destroy``). A request
that names a commit resolves it to a sha at once, pins it in the agent's applied
repo and records the diff from what runs: what the operator was shown is exactly
what gets applied, however the branch moves afterwards. A commit whose
``agent.toml`` fails validation is recorded with its ``problems`` and can only be
denied. Every resolution (``approved``, ``denied``, ``failed``, ``cancelled``) goes
to the manager's inbox as an ``approval_resolved`` hive event, which wakes it.
"""

from __future__ import annotations

import builtins
import difflib
import enum
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import sqlite_utils
import trio

from hyperhive_core.agents import AgentConfig, check_agent_config
from hyperhive_core.cluster import one_host_only
from hyperhive_core.configrepo import AGENT_TOML, ORIGIN_APPLIED, check_ref, render_agent_toml
from hyperhive_core.errors import ConfigError, HyperhiveError
from hyperhive_core.names import SYSTEM, check_agent_name
from hyperhive_core.plugins import await_all, collect

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 10_000
"""The longest description of a request, or note on a denial."""
MAX_PENDING = 50
"""Requests that may wait for the operator at once: each is stored, and listed to the operator."""
MAX_DRAFTS = 20
"""Drafts at once: each is a config repo and a state dir, bound into the manager's container."""


class Kind(enum.StrEnum):
    SPAWN = "spawn"
    SPAWN_COMMIT = "spawn_commit"
    APPLY_COMMIT = "apply_commit"
    DESTROY = "destroy"


class Status(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ApprovalError(HyperhiveError):
    """A request or a resolution the hive refuses; the message says what to do instead."""


@dataclass(frozen=True)
class Approval:
    """One request to the operator, with what it would change."""

    id: int
    agent: str
    kind: Kind
    commit_ref: str | None
    fetched_sha: str | None
    """The commit ``commit_ref`` named when the request was made: what gets applied."""
    requested_at: float
    requested_by: str
    status: Status
    description: str
    resolved_at: float | None
    note: str
    """The operator's note with the resolution (why a request was denied)."""
    diff: str = ""
    """From the applied commit (or nothing, for a new agent) to ``fetched_sha``."""
    problems: list[str] = field(default_factory=list)
    """Why the config at ``fetched_sha`` is invalid; an approval with problems can only be denied."""
    purge: bool = False
    """For ``destroy``: wipe the agent's state too."""
    error: str = ""
    """Why carrying out the approval failed (status ``failed``)."""
    host: str = ""
    """For ``spawn`` in a hive across hosts: the host the new agent is created on."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What events and the manager's inbox carry: everything but the diff."""
        return {key: value for key, value in asdict(self).items() if key != "diff"}


@dataclass(frozen=True)
class Draft:
    """An agent being prepared: a config repo and a state dir, no container yet."""

    name: str
    created_at: float
    created_by: str
    pending: int | None
    """The id of its pending ``spawn_commit`` approval, if there is one."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Approvals:
    """The approvals table and the flows around it: ``hive.approvals``."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self._resolving = trio.Lock()
        """One resolution at a time: each may build or remove an agent."""
        self._carrying: int | None = None
        """The approval being carried out, which its own effects must not cancel."""

    # -- reading ------------------------------------------------------------------------

    async def list(self, status: Status | str | None = None) -> builtins.list[Approval]:
        """Approvals, newest first; only those with ``status`` if given."""
        if status is not None and status not in set(Status):
            raise ApprovalError(f"unknown approval status {status!r}; use one of {', '.join(Status)}")
        where, args = ("status = ?", [str(status)]) if status else (None, [])
        rows = await self.hive.store.read(
            lambda db: list(db.table("approvals").rows_where(where, args, order_by="id desc"))
        )
        return [_approval(row) for row in rows]

    async def get(self, approval_id: int) -> Approval:
        rows = await self.hive.store.read(lambda db: list(db.table("approvals").rows_where("id = ?", [approval_id])))
        if not rows:
            raise ApprovalError(f"no approval {approval_id}; `hyperhive approvals` lists them")
        return _approval(rows[0])

    async def drafts(self) -> builtins.list[Draft]:
        """Agents drafted with ``request_spawn_draft`` and not spawned yet (DR4FTS)."""

        def read(db: sqlite_utils.Database) -> builtins.list[Draft]:
            pending = {
                row["agent"]: row["id"]
                for row in db.table("approvals").rows_where(
                    "kind = ? AND status = ?", [Kind.SPAWN_COMMIT, Status.PENDING]
                )
            }
            return [
                Draft(row["name"], row["created_at"], row["created_by"], pending.get(row["name"]))
                for row in db.table("drafts").rows_where(order_by="created_at")
            ]

        return await self.hive.store.read(read)

    async def is_draft(self, name: str) -> bool:
        return await self.hive.store.read(lambda db: bool(db.table("drafts").count_where("name = ?", [name])))

    # -- the manager's requests ---------------------------------------------------------

    async def request_spawn(self, requester: str, name: str, description: str, host: str = "") -> Approval:
        """Ask for a new agent with the template config; in a hive across hosts, on ``host``
        (default: the up host with the fewest agents)."""
        await self.check_free(check_agent_name(name))
        description = _required(description, "description", "say what the new agent is for")
        host = self._spawn_host(host)
        diff = _new_file_diff(AGENT_TOML, render_agent_toml(AgentConfig(), self.agent_sections()))
        return await self._insert(requester, name, Kind.SPAWN, description=description, diff=diff, host=host)

    def _spawn_host(self, host: str) -> str:
        """The host a new agent goes to: ``host`` if it is an up host of the hive, else the least busy one."""
        cluster = self.hive.cluster
        if cluster is None:
            if host:
                raise one_host_only(host)
            return ""
        if not host:
            return cluster.least_busy_host()
        if cluster.other_host(host) is not None and not cluster.is_up(host):
            raise ApprovalError(f"{cluster.down_reason(host)}; choose a host that is up, or leave host out")
        return host

    async def request_spawn_draft(self, requester: str, name: str) -> Draft:
        """Create a draft: its config repo (from the template) and state dir, no container."""
        await self.check_free(check_agent_name(name))
        hive = self.hive
        drafts = await hive.store.read(lambda db: db.table("drafts").count)
        if drafts >= MAX_DRAFTS:
            raise ApprovalError(
                f"there are {drafts} drafts already, the most there may be; spawn one "
                "(request_spawn_commit) or ask the operator to purge those not needed"
            )
        await hive.repos.create(name, AgentConfig(), self.agent_sections(), apply=False)
        hive.paths.agent_state(name).mkdir(parents=True, exist_ok=True, mode=0o700)
        now = time.time()
        await hive.store.write(
            lambda db: db.table("drafts").insert({"name": name, "created_at": now, "created_by": requester})
        )
        hive.container_changed(hive.agents.manager)
        hive.events.publish(name, "note", text=f"drafted by {requester}")
        await hive.notify(
            hive.agents.manager, "draft_created", agent=name, config_repo=self.repo_path_for_manager(name)
        )
        return Draft(name, now, requester, None)

    async def request_spawn_commit(self, requester: str, name: str, commit_ref: str) -> Approval:
        """Ask to start draft ``name`` from exactly the commit ``commit_ref`` names now."""
        check_agent_name(name)
        if not await self.is_draft(name):
            raise ApprovalError(
                f"{name!r} is not a draft; create one with request_spawn_draft({name!r}), "
                "or use request_apply_commit for a running agent"
            )
        await self._refuse_second(name, Kind.SPAWN_COMMIT)
        what = f"start draft {name} from {commit_ref}"
        return await self._request_commit(requester, name, Kind.SPAWN_COMMIT, commit_ref, description=what, base=None)

    async def request_apply_commit(self, requester: str, name: str, commit_ref: str, description: str) -> Approval:
        """Ask to apply exactly the commit ``commit_ref`` names now to running agent ``name``."""
        row = await self._applied_row(check_agent_name(name))
        description = _required(description, "description", "say what the change does and why")
        await self._refuse_second(name, Kind.APPLY_COMMIT)
        return await self._request_commit(
            requester, name, Kind.APPLY_COMMIT, commit_ref, description=description, base=row["applied_sha"]
        )

    async def request_destroy(self, requester: str, name: str, purge: bool) -> Approval:
        """Ask to destroy ``name`` (keeping its state unless ``purge``)."""
        check_agent_name(name)
        hive = self.hive
        if name == hive.agents.manager:
            raise ApprovalError(f"{name!r} is the manager; the hive always has one, so it cannot be destroyed")
        if name not in hive.agents:
            if name not in await hive.kept_state():
                raise ApprovalError(f"no agent or kept state named {name!r}; list_agents shows the agents")
            if not purge:
                raise ApprovalError(f"{name!r} is destroyed already, its state kept; ask with purge to wipe it")
        await self._refuse_second(name, Kind.DESTROY)
        what = "destroy it and wipe its state" if purge else "destroy it, keeping its state"
        return await self._insert(requester, name, Kind.DESTROY, description=what, purge=bool(purge))

    async def _request_commit(
        self, requester: str, name: str, kind: Kind, commit_ref: str, *, description: str, base: str | None
    ) -> Approval:
        repos = self.hive.repos
        sha = await repos.fetch(name, check_ref(commit_ref))
        if sha == base:
            raise ApprovalError(f"{commit_ref!r} is {sha[:12]}, which is what {name} runs already; commit a change")
        problems = []
        try:
            await self.checked_config(name, sha)
        except ConfigError as exc:
            problems.append(str(exc))
        diff = await repos.diff(name, base, sha)
        return await self._insert(
            requester, name, kind, commit_ref=commit_ref, fetched_sha=sha, description=description,
            diff=diff, problems=problems,
        )  # fmt: skip

    async def _insert(self, requester: str, name: str, kind: Kind, **columns: Any) -> Approval:
        row = {
            "agent": name,
            "kind": str(kind),
            "requested_at": time.time(),
            "requested_by": requester,
            "status": str(Status.PENDING),
            "note": "",
            "error": "",
            "purge": 0,
            **columns,
            "problems": json.dumps(columns.get("problems", [])),
        }

        def insert(db: sqlite_utils.Database) -> int:
            _refuse_pending(db, name, kind)
            pk = db.table("approvals").insert(row).last_pk
            assert isinstance(pk, int)  # the rowid of the row just inserted
            return pk

        approval = await self.get(await self.hive.store.write(insert))
        self.hive.events.publish(name, "approval_requested", **_event_data(approval))
        return approval

    async def _refuse_second(self, name: str, kind: Kind) -> None:
        """Fail early, before fetching anything; the insert checks again."""
        await self.hive.store.read(lambda db: _refuse_pending(db, name, kind))

    async def _applied_row(self, name: str) -> dict[str, Any]:
        """The stored row of running agent ``name`` whose config comes from its repos."""
        hive = self.hive
        if name not in hive.agents:
            raise ApprovalError(f"no running agent named {name!r}; list_agents shows the agents")
        row = (await hive.agents.stored())[name]
        if row["origin"] == "config":
            raise ApprovalError(
                f"{name!r} is configured in the operator's hyperhive.toml ([agents.{name}]), not by a config repo; "
                "ask the operator to change it there"
            )
        if row["origin"] != ORIGIN_APPLIED:
            raise ApprovalError(f"{name!r} was started without a config repo; only the operator can change it")
        return row

    # -- the operator's answers -----------------------------------------------------------

    async def approve(self, approval_id: int, note: str = "") -> Approval:
        """Carry the request out; on an error the approval is ``failed``, with the error."""
        async with self._resolving:
            approval = await self._pending(approval_id)
            if approval.problems:
                raise ApprovalError(
                    f"approval {approval_id} cannot be approved: {'; '.join(approval.problems)}. "
                    "Deny it with a note, so the manager can fix the commit and ask again"
                )
            self._carrying = approval.id
            try:
                await self._carry_out(approval)
            except Exception as exc:
                if not isinstance(exc, HyperhiveError):
                    log.exception("approval %d (%s of %s) failed", approval.id, approval.kind, approval.agent)
                return await self._resolve(approval, Status.FAILED, note, error=_describe(exc))
            finally:
                self._carrying = None
            return await self._resolve(approval, Status.APPROVED, note)

    async def settle_interrupted(self) -> None:
        """Record the pending requests a previous daemon carried out but died before recording.

        Run at startup, once the agents are up. Each is resolved ``approved`` (and the
        manager told) instead of waiting to be approved again, which would fail on
        the change being there already.
        """
        async with self._resolving:
            stored = await self.hive.agents.stored()
            for approval in await self.list(Status.PENDING):
                row = stored.get(approval.agent)
                if row is None or row["destroyed_at"] or row["origin"] != ORIGIN_APPLIED:
                    continue
                committed = approval.kind in (Kind.SPAWN_COMMIT, Kind.APPLY_COMMIT)
                if approval.kind is Kind.SPAWN or (committed and row["applied_sha"] == approval.fetched_sha):
                    log.warning("approval %d (%s of %s): %s", approval.id, approval.kind, approval.agent, SETTLED)
                    await self._resolve(approval, Status.APPROVED, SETTLED)

    async def deny(self, approval_id: int, note: str) -> Approval:
        """Refuse the request; ``note`` tells the manager why."""
        note = _required(note, "note", "say why, so the manager can do better")
        async with self._resolving:
            return await self._resolve(await self._pending(approval_id), Status.DENIED, note)

    async def agent_gone(self, name: str, purged: bool) -> None:
        """``name`` was destroyed: its other pending requests are moot; a purge ends its draft too."""
        if purged:
            await self.hive.store.write(lambda db: db.table("drafts").delete_where("name = ?", [name]))
            self.hive.container_changed(self.hive.agents.manager)  # its repo is gone from the manager's view
        for approval in await self.list(Status.PENDING):
            if approval.agent == name and approval.id != self._carrying:
                await self._resolve(approval, Status.CANCELLED, f"{name} was destroyed")

    async def _pending(self, approval_id: int) -> Approval:
        approval = await self.get(approval_id)
        if approval.status is not Status.PENDING:
            raise ApprovalError(f"approval {approval_id} is already {approval.status}; only a pending one can change")
        return approval

    async def _carry_out(self, approval: Approval) -> None:
        hive = self.hive
        name = approval.agent
        if approval.kind is Kind.SPAWN:
            if hive.cluster is not None and approval.host not in ("", hive.cluster.host):
                await hive.cluster.forward(approval.host, "spawn", {"agent": name}, name)
            else:
                await hive.spawn(name)
        elif approval.kind is Kind.DESTROY:
            await hive.destroy(name, purge=approval.purge)
        elif approval.kind is Kind.SPAWN_COMMIT:
            assert approval.fetched_sha is not None
            await self.check_free(name, draft_ok=True)
            config = await self.checked_config(name, approval.fetched_sha)
            await hive.repos.checkout(name, approval.fetched_sha)
            await hive.add_applied(name, config, approval.fetched_sha)
            await hive.store.write(lambda db: db.table("drafts").delete_where("name = ?", [name]))
        else:
            assert approval.fetched_sha is not None
            await hive.apply_config(name, await self.checked_config(name, approval.fetched_sha), approval.fetched_sha)

    async def _resolve(self, approval: Approval, status: Status, note: str, error: str = "") -> Approval:
        """Record the answer, tell the manager (which wakes it) and the ``on_approval_resolved`` hooks."""
        hive = self.hive
        now = time.time()
        changed = await hive.store.write(
            lambda db: (
                db.execute(
                    "UPDATE approvals SET status = ?, resolved_at = ?, note = ?, error = ? WHERE id = ? AND status = ?",
                    [str(status), now, note, error, approval.id, Status.PENDING],
                ).rowcount
            )
        )
        resolved = await self.get(approval.id)
        if not changed:  # resolved meanwhile, by someone else
            return resolved
        hive.events.publish(resolved.agent, "approval_resolved", **_event_data(resolved))
        fields = {"id": resolved.id, "agent": resolved.agent, "kind": str(resolved.kind), "status": str(status)}
        if resolved.fetched_sha:
            fields["commit"] = resolved.fetched_sha
        if note:
            fields["note"] = note
        if error:
            fields["error"] = error
        await hive.notify(hive.agents.manager, "approval_resolved", **fields)
        try:
            await await_all(hive.pm.hook.on_approval_resolved(hive=hive, approval=resolved))
        except Exception as exc:
            log.exception("an on_approval_resolved hook failed for approval %d", resolved.id)
            hive.events.publish(SYSTEM, "error", where="on_approval_resolved", approval=resolved.id, error=repr(exc))
        return resolved

    # -- shared checks ------------------------------------------------------------------

    async def check_free(self, name: str, *, draft_ok: bool = False) -> None:
        """Refuse a new agent's name that is live, kept, drafted (unless ``draft_ok``) or has a repo."""
        hive = self.hive
        if name in hive.agents:
            raise ApprovalError(f"an agent named {name!r} already exists")
        if hive.cluster is not None:
            hive.cluster.check_free(name)
        if name in await hive.kept_state():
            raise ApprovalError(
                f"{name!r} has kept state from a destroyed agent; restore it (hyperhive restore {name}) "
                f"or purge it first (hyperhive destroy {name} --purge)"
            )
        if not draft_ok and await self.is_draft(name):
            raise ApprovalError(
                f"{name!r} is a draft: commit its config in {self.repo_path_for_manager(name)} and call "
                f"request_spawn_commit({name!r}, <ref>); or purge it (hyperhive destroy {name} --purge)"
            )

    async def checked_config(self, name: str, sha: str) -> AgentConfig:
        """``agent.toml`` at ``sha``, checked by core and every plugin's ``validate_agent_config``."""
        config = await self.hive.repos.read_config(name, sha)
        where = f"{name}'s {AGENT_TOML} at {sha[:12]}"
        return check_agent_config(self.hive.pm, name, config, where, extra_models=self.hive.claude.extra_models)

    def agent_sections(self) -> builtins.list[str]:
        """The plugin sections an ``agent.toml`` may have."""
        return sorted(collect(self.hive.pm, "register_agent_sections", "agent config section", lambda k, s: (k, s)))

    def repo_path_for_manager(self, name: str) -> str:
        """Where the manager finds ``name``'s config repo: bound in its container, or the
        host path when the backend runs agents without isolation (and cannot bind)."""
        if self.hive.backend.isolated:
            return f"/agents/{name}/config"
        return str(self.hive.repos.proposed(name))


# The note of an approval the daemon carried out, then died before recording.
SETTLED = "carried out just before the daemon stopped; recorded at the next start"


def _refuse_pending(db: sqlite_utils.Database, name: str, kind: Kind) -> None:
    rows = list(db.table("approvals").rows_where("agent = ? AND kind = ? AND status = ?", [name, kind, Status.PENDING]))
    if rows:
        raise ApprovalError(
            f"approval {rows[0]['id']} ({kind} of {name}) is still waiting for the operator; "
            "wait for its approval_resolved event before asking again"
        )
    waiting = db.table("approvals").count_where("status = ?", [Status.PENDING])
    if waiting >= MAX_PENDING:
        raise ApprovalError(
            f"{waiting} requests already wait for the operator, the most there may be; "
            "wait for their approval_resolved events before asking for more"
        )


def _approval(row: dict[str, Any]) -> Approval:
    return Approval(
        id=row["id"],
        agent=row["agent"],
        kind=Kind(row["kind"]),
        commit_ref=row["commit_ref"],
        fetched_sha=row["fetched_sha"],
        requested_at=row["requested_at"],
        requested_by=row["requested_by"],
        status=Status(row["status"]),
        description=row["description"] or "",
        resolved_at=row["resolved_at"],
        note=row["note"] or "",
        diff=row["diff"] or "",
        problems=json.loads(row["problems"] or "[]"),
        purge=bool(row["purge"]),
        error=row["error"] or "",
        host=row.get("host") or "",
    )


def _event_data(approval: Approval) -> dict[str, Any]:
    """An approval as live-event data; the event's agent is the approval's."""
    return {key: value for key, value in approval.summary().items() if key != "agent"}


def _required(text: object, what: str, hint: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ApprovalError(f"{what} must not be empty: {hint}")
    text = text.strip()
    if len(text) > MAX_TEXT_CHARS:  # stored with the request, and shown on every listing
        raise ApprovalError(
            f"{what} is {len(text)} characters, over the {MAX_TEXT_CHARS}-character limit: "
            "say it in short, and put the details in the config repo's commit message"
        )
    return text


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HyperhiveError) else f"{type(exc).__name__}: {exc}"


def _new_file_diff(path: str, text: str) -> str:
    return "".join(difflib.unified_diff([], text.splitlines(keepends=True), "/dev/null", f"b/{path}"))


def m006_approvals(db: sqlite_utils.Database) -> None:
    db.table("approvals").create(
        {
            "id": int,
            "agent": str,
            "kind": str,
            "commit_ref": str,
            "fetched_sha": str,
            "requested_at": float,
            "requested_by": str,
            "status": str,
            "description": str,
            "resolved_at": float,
            "note": str,
            "diff": str,
            "problems": str,
            "purge": int,
            "error": str,
        },
        pk="id",
        not_null={"agent", "kind", "requested_at", "requested_by", "status"},
    )
    # At most one pending request per agent and kind, whatever races.
    db.execute("CREATE UNIQUE INDEX approvals_one_pending ON approvals (agent, kind) WHERE status = 'pending'")
    db.table("drafts").create({"name": str, "created_at": float, "created_by": str}, pk="name")


def m009_approval_host(db: sqlite_utils.Database) -> None:
    """The host a spawn request creates its agent on, in a hive across hosts."""
    db.table("approvals").add_column("host", str)
