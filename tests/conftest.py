"""Fixtures for core tests: a real three-node nats-server cluster with JetStream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperhive_core.brokers.localcluster import LocalCluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three nats-server nodes on loopback, random free ports, store dirs in ``tmp_path``, fsync on every write.

    ``stop()``/``start()`` take the whole cluster away and bring it back as it was.
    """
    cluster = LocalCluster(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()
