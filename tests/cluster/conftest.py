"""Cluster fixtures: a three-node JetStream cluster of nats-servers from the wheel, on loopback
with free ports and a store directory each (trellis_core.embedded.EmbeddedNatsCluster)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis_core.embedded import EmbeddedNatsCluster


@pytest.fixture
def nats_cluster() -> Iterator[EmbeddedNatsCluster]:
    path = Path(tempfile.mkdtemp(prefix="trellis-cluster-"))
    cluster = EmbeddedNatsCluster(path, size=3)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(path, ignore_errors=True)
