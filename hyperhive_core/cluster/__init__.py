"""One hive across several hosts: placement, heartbeats, forwarded commands and events on NATS.

With ``[cluster] host`` set, each host runs its own daemon (its own state dir, uid
range and dashboard) and the hosts share the hive through the NATS cluster of
``[jetstream]`` (docs/cluster.md):

- the messages, in the JetStream broker every host uses, so a send by name reaches
  an agent wherever it runs;
- ``HIVE_<name>_PLACEMENT``, a KV bucket: agent name -> the host that runs it. A
  host claims a name with a create, which only one host can win: names are unique
  hive-wide. The manager runs on the host that holds its name;
- ``HIVE_<name>_HOSTS``, a KV bucket: host -> its last heartbeat. A host whose
  heartbeat is older than ``down_after_seconds`` is down;
- ``hive.<name>.host.<host>.cmd``: host commands forwarded to the host an agent is
  placed on, by request/reply; the answer is the one that host's socket gives;
- ``hive.<name>.events.<host>``: each host's live events, merged into every other
  host's event bus with the sending host in ``data["host"]``.

Only daemons connect; agents never hold NATS credentials, and an agent's identity
still comes from the socket it speaks on, never from anything on NATS. nats-py
runs on its own asyncio thread (``natsbridge``), as the broker's does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hyperhive_core.broker import BrokerSection
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.config import option
from hyperhive_core.errors import ConfigError, HyperhiveError

if TYPE_CHECKING:
    from hyperhive_core.cluster.hosts import Cluster
    from hyperhive_core.hive import Hive

HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")

_forwarded: ContextVar[bool] = ContextVar("forwarded", default=False)


@dataclass
class ClusterSection:
    """This host's place in a hive that spans hosts (docs/cluster.md#one-hive-on-several-hosts)."""

    host: str = option(
        "",
        help="This host's name in a hive that spans several hosts; empty: the hive runs on this host alone.\n"
        "Needs [broker] backend = \"jetstream\"; the NATS cluster's URLs and credentials are [jetstream]'s.",
    )
    heartbeat_seconds: float = option(2.0, help="How often this host tells the others it is up.")
    down_after_seconds: float = option(
        10.0, help="A host whose last heartbeat is older than this is down (its agents unreachable)."
    )
    forward_timeout_seconds: float = option(
        30.0, help="How long a command forwarded to another host's agent may take before it fails."
    )

    def __post_init__(self) -> None:
        if self.host and not HOST_NAME.fullmatch(self.host):
            raise ConfigError(
                f"[cluster] host must be 1-32 lowercase letters, digits or '-', starting with a letter "
                f"(it goes into NATS subjects), not {self.host!r}"
            )
        for key in ("heartbeat_seconds", "down_after_seconds", "forward_timeout_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"[cluster] {key} must be positive, not {getattr(self, key)}")
        if self.down_after_seconds < 2 * self.heartbeat_seconds:
            raise ConfigError(
                f"[cluster] down_after_seconds ({self.down_after_seconds}) must be at least twice "
                f"heartbeat_seconds ({self.heartbeat_seconds}), or one late heartbeat shows a host down"
            )


class PlacedElsewhere(HyperhiveError):
    """The name belongs to an agent on another host."""


class HostDown(HyperhiveError):
    """The host an agent is placed on does not answer."""


def one_host_only(host: object) -> HyperhiveError:
    """A host named where the hive has only this one."""
    return HyperhiveError(f"this hive runs on one host, so there is no host {host!r} to choose; leave the host out")


def make_cluster(hive: Hive) -> Cluster | None:
    """The hive's cluster membership when ``[cluster] host`` is set; a clear error if it cannot be."""
    section = hive.config.section("cluster", ClusterSection)
    if not section.host:
        return None
    backend = hive.config.section("broker", BrokerSection).backend
    if backend != "jetstream":
        raise ConfigError(
            f'{hive.config.path}: [cluster] host = {section.host!r} needs [broker] backend = "jetstream" '
            f"(it is {backend!r}): the hosts of a hive share its messages on the NATS cluster of [jetstream]"
        )
    from hyperhive_core.cluster.hosts import Cluster

    return Cluster(hive, section, hive.config.section("jetstream", JetStreamSection))


@contextmanager
def forwarded() -> Iterator[None]:
    """Run host commands as the host another forwarded them to: they act here and go nowhere else."""
    token = _forwarded.set(True)
    try:
        yield
    finally:
        _forwarded.reset(token)


def is_forwarded() -> bool:
    return _forwarded.get()
