"""Broker backends: ``[broker] backend`` picks one of those registered with ``register_broker_backends``.

Core registers ``sqlite`` (``hyperhive_core.broker.SqliteBroker``, the default) and
``jetstream`` (``hyperhive_core.brokers.jetstream``, imported only when chosen, so
nothing else pays for nats-py). ``[jetstream]`` configures the latter.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperhive_core.broker import BrokerSection, Message, MessageBroker, RecipientPolicy, SqliteBroker
from hyperhive_core.config import option
from hyperhive_core.errors import ConfigError
from hyperhive_core.plugins import Registry, collect

if TYPE_CHECKING:
    from hyperhive_core.hive import Hive
    from hyperhive_core.plugins import HivePluginManager

HIVE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
STORAGE = ("file", "memory")


@dataclass
class JetStreamSection:
    """The NATS JetStream cluster that holds the messages when [broker] backend = "jetstream"."""

    urls: list[str] = option(
        ["nats://127.0.0.1:4222"],
        help="The cluster's nodes, this host's own first: the client connects to the first that answers,\n"
        "in this order, and fails over and reconnects among them.",
    )
    credentials_file: Path | None = option(
        None,
        help="user:password on one line, an nkey seed (SU...), or a NATS .creds file.\n"
        "Must be mode 0600 (only the daemon's user may read it). Default: no credentials.",
    )
    tls_ca: Path | None = option(None, help="CA certificate (PEM) that signed the servers' certificates.")
    tls_cert: Path | None = option(None, help="Client certificate (PEM), when the servers ask for one.")
    tls_key: Path | None = option(None, help="The client certificate's private key (PEM).")
    name: str = option(
        "main",
        help="This hive's name on the cluster: subjects hive.<name>.*, streams HIVE_<name>_INBOX, _ACKED, _DEAD.",
    )
    replicas: int = option(3, help="Copies of each stream, on that many nodes (1, 3 or 5).")
    storage: str = option("file", help="Where streams are kept: file, or memory (lost when a node stops).")
    duplicate_window_seconds: float = option(
        86400.0, help="How long an idempotency key holds: the inbox stream's duplicate window."
    )
    ack_wait_seconds: float = option(
        30.0, help="A lease not acked, released or kept alive this long is delivered again."
    )
    heartbeat_seconds: float = option(10.0, help="How often a running turn's lease is kept alive.")
    request_timeout_seconds: float = option(
        5.0, help="How long a send waits for the cluster (to reconnect, then to confirm) before it fails."
    )

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("[jetstream] urls must name at least one server, such as nats://127.0.0.1:4222")
        for url in self.urls:
            if not re.fullmatch(r"(nats|tls)://[^\s/]+", url):
                raise ConfigError(f"[jetstream] urls: {url!r} is not a NATS URL; write it as nats://HOST:PORT")
        if not HIVE_NAME.fullmatch(self.name):
            raise ConfigError(
                f"[jetstream] name must be 1-32 letters, digits, '_' or '-' (it goes into subjects), not {self.name!r}"
            )
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"[jetstream] replicas must be 1, 3 or 5, not {self.replicas}")
        if self.storage not in STORAGE:
            raise ConfigError(f"[jetstream] storage must be file or memory, not {self.storage!r}")
        for key in ("duplicate_window_seconds", "ack_wait_seconds", "heartbeat_seconds", "request_timeout_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"[jetstream] {key} must be positive, not {getattr(self, key)}")
        if self.heartbeat_seconds >= self.ack_wait_seconds:
            raise ConfigError(
                f"[jetstream] heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than ack_wait_seconds "
                f"({self.ack_wait_seconds}), or a running turn's lease runs out"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("[jetstream] tls_cert and tls_key go together; set both or neither")


BrokerFactory = Callable[..., MessageBroker]
"""``factory(hive, *, policy, on_commit, on_dead)`` returns the hive's broker."""


def collect_broker_backends(pm: HivePluginManager) -> Registry:
    """Every broker factory from ``register_broker_backends``, by name."""
    return collect(pm, "register_broker_backends", "broker backend", lambda name, factory: (name, factory))


def make_broker(
    hive: Hive,
    *,
    policy: RecipientPolicy,
    on_commit: Callable[[Message], Awaitable[None]],
    on_dead: Callable[[list[Message]], Awaitable[None]],
) -> MessageBroker:
    """The broker ``[broker] backend`` names, from those plugins registered."""
    backends = collect_broker_backends(hive.pm)
    name = hive.config.section("broker", BrokerSection).backend
    if name not in backends:
        raise ConfigError(
            f"{hive.config.path}: broker.backend = {name!r} is not available; "
            f"registered backends: {', '.join(sorted(backends))}"
        )
    return backends[name](hive, policy=policy, on_commit=on_commit, on_dead=on_dead)


def make_sqlite_broker(hive: Hive, **callbacks: Any) -> SqliteBroker:
    return SqliteBroker(hive.store, hive.config.section("broker", BrokerSection), **callbacks)


def make_jetstream_broker(hive: Hive, **callbacks: Any) -> MessageBroker:
    from hyperhive_core.brokers.jetstream import JetStreamBroker

    section = hive.config.section("jetstream", JetStreamSection)
    return JetStreamBroker(section, hive.config.section("broker", BrokerSection), **callbacks)
