"""TRELLIS_NATS_URL naming a cluster's nodes: several URLs separated by commas; a service reaches
the cluster through any node that answers, and moves to another when its node dies."""

from __future__ import annotations

import asyncio

import pytest

from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNatsCluster, free_port
from trellis_core.errors import ConfigError
from trellis_core.settings import Settings


def test_a_comma_separated_list_is_every_node() -> None:
    settings = Settings.from_env({"TRELLIS_NATS_URL": "nats://a:4222, nats://b:4222,nats://c:4222"})
    assert settings.nats_servers() == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert Settings.from_env({"TRELLIS_NATS_URL": "nats://a:4222"}).nats_servers() == ["nats://a:4222"]
    assert Settings.from_env({}).nats_servers() == []


def test_every_url_of_the_list_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"TRELLIS_NATS_URL=.*nats:// URL, or several separated by commas"):
        Settings.from_env({"TRELLIS_NATS_URL": "nats://a:4222,http://b:4222"})


async def test_a_service_connects_through_a_live_node_and_moves_on_when_its_node_dies(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    settings = Settings.from_env({}, nats_url=f"{dead},{nats_cluster.urls[0]}", stream_replicas=3)
    bus = await Bus.connect(settings, name="tests")
    try:
        await bus.ensure_streams()
        assert bus.nc.connected_url is not None
        assert bus.nc.connected_url.port == nats_cluster.client_ports[0]
        await asyncio.to_thread(nats_cluster.kill, 0)
        async with asyncio.timeout(30):
            while not (bus.nc.is_connected and bus.nc.connected_url.port != nats_cluster.client_ports[0]):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert bus.nc.connected_url.port in nats_cluster.client_ports[1:]  # learnt from the cluster's INFO
        async with asyncio.timeout(30):
            while True:  # the stream's leader may be moving off the dead node: JetStream says so a while
                try:
                    ack = await bus.publish("trellis.tests.runs.requested", b"{}", msg_id="after-the-node-died")
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        assert ack.stream == "TRELLIS_RUNS"
    finally:
        await bus.close()

