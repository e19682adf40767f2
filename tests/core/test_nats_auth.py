"""Tenant isolation enforced by nats-server itself: a real server started in secure mode (the
generated config, nkey users, `agent_permissions`), tenant a's agent credentials against tenant
b's work, events, logs, KV, streams and key requests. Every refusal is the server's: the test
asserts on the permissions violation it reports."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from trellis_core import bus as bus_mod
from trellis_core import nats_auth, subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats
from trellis_core.settings import Settings

# ---- the pure part ---------------------------------------------------------------------------


def test_agent_permissions_name_only_its_tenant() -> None:
    perms = nats_auth.agent_permissions("acme")
    everything = perms["publish"]["allow"] + perms["subscribe"]["allow"]
    for subject in everything:
        assert "acme" in subject or subject == "$JS.API.INFO", subject
        assert not subject.startswith(("$KV", "$JS.API.STREAM.CREATE", "$JS.API.STREAM.DELETE")), subject
    assert perms["subscribe"]["deny"] == ["trellis.acme.keys.>"]
    assert "$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.*.trellis.acme.>" in perms["publish"]["allow"]
    assert "_INBOX_acme.>" in perms["subscribe"]["allow"]


def test_a_reserved_or_invalid_tenant_gets_no_permissions() -> None:
    with pytest.raises(subjects.InvalidSubjectToken, match="reserved"):
        nats_auth.agent_permissions("store")
    with pytest.raises(subjects.InvalidSubjectToken, match="cannot be used in a subject"):
        nats_auth.agent_permissions("a.>")


def test_seeds_and_keys_round_trip_and_bad_ones_are_named() -> None:
    seed, public = nats_auth.new_user_seed(bytes(range(32)))
    assert seed.startswith("SU")
    assert public.startswith("U")
    assert nats_auth.public_key_of(seed + "\n") == public
    with pytest.raises(nats_auth.NatsAuthError, match="not an nkey seed"):
        nats_auth.public_key_of("SUnotaseed")
    with pytest.raises(nats_auth.NatsAuthError, match="tenant 'a' agent key 'nope'"):
        nats_auth.users(public, [("a", "nope")])


def test_the_rendered_authorization_holds_every_user_and_its_permissions() -> None:
    _, control = nats_auth.new_user_seed()
    _, agent = nats_auth.new_user_seed()
    text = nats_auth.render_authorization(nats_auth.users(control, [("acme", agent)]))
    assert f'nkey: "{control}"' in text
    assert f'nkey: "{agent}"' in text
    assert '"$JS.ACK.TRELLIS_WORK_acme.>"' in text
    config = nats_auth.render_config(14222, "/data/js", "auth.conf", pid_file="/data/pid")
    assert 'listen: "127.0.0.1:14222"' in config
    assert 'include "auth.conf"' in config
    with pytest.raises(nats_auth.NatsAuthError, match="inside the config file's folder"):
        nats_auth.render_config(14222, "/data/js", "/etc/auth.conf")


# ---- on a real nats-server in secure mode ----------------------------------------------------


class Agent:
    """A raw connection with one tenant's agent credentials, keeping what the server reports."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def violation(self, what: str, within: float = 5.0) -> str:
        """Wait until the server reported a permissions violation naming `what`."""
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            for e in self.errors:
                if "permissions violation" in e.lower() and what.lower() in e.lower():
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation naming {what!r}; errors: {self.errors}")

    async def refused_request(self, subject: str, payload: bytes = b"") -> str:
        """A request the server must drop: no answer, and a violation naming its subject."""
        with pytest.raises(nats.errors.TimeoutError):
            await self.nc.request(subject, payload, timeout=0.5)
        return await self.violation(f'Publish to "{subject}"')


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("secure-nats"), secure=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def control(secure_nats: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Bus]:
    settings = Settings.from_env(
        {}, nats_url=secure_nats.url, data_dir=tmp_path, stream_storage="memory",
        nats_nkey_seed_file=str(secure_nats.control_seed_file),
    )
    bus = await Bus.connect(settings, name="control-plane")
    try:
        await bus.js.stream_info(subjects.STREAM_EVENTS)
    except nats.js.errors.NotFoundError:  # the first test on this server: make the shared streams
        await bus.ensure_streams()
    yield bus
    await bus.close()


async def connect_agent(url: str, seed_file: Path, tenant: str) -> Agent:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        servers=[url], nkeys_seed=str(seed_file), inbox_prefix=subjects.inbox_prefix(tenant),
        error_cb=on_error, allow_reconnect=False, connect_timeout=5,
    )
    return Agent(nc, errors)


@pytest.fixture
async def tenants(
    secure_nats: EmbeddedNats, control: Bus, tmp_path: Path
) -> AsyncIterator[tuple[str, str, Agent]]:
    """Tenants a and b, with their work streams, and tenant a's agent connected (its user added
    to the authorization and the server reloaded, as the store does)."""
    a, b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    for t in (a, b):
        await bus_mod.ensure_work_stream(control, t)
    seed_a, key_a = nats_auth.new_user_seed()
    _, key_b = nats_auth.new_user_seed()
    seed_file = tmp_path / "agent-a.nk"
    seed_file.write_text(seed_a)
    secure_nats.write_authorization([(a, key_a), (b, key_b)])
    secure_nats.reload()
    agent = await connect_with_retry(secure_nats.url, seed_file, a)
    yield a, b, agent
    await agent.nc.close()


async def connect_with_retry(url: str, seed_file: Path, tenant: str, within: float = 10.0) -> Agent:
    """The reload is asynchronous in the server: connect once it knows the new user."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await connect_agent(url, seed_file, tenant)
        except (nats.errors.Error, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"agent could not connect after reload: {exc}") from None
            await asyncio.sleep(0.05)


async def test_an_unknown_nkey_is_refused(secure_nats: EmbeddedNats, tmp_path: Path) -> None:
    seed, _ = nats_auth.new_user_seed()
    (tmp_path / "stranger.nk").write_text(seed)
    with pytest.raises((nats.errors.Error, OSError)):
        await connect_agent(secure_nats.url, tmp_path / "stranger.nk", "stranger")


async def test_without_credentials_nothing_connects(secure_nats: EmbeddedNats) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(servers=[secure_nats.url], allow_reconnect=False, connect_timeout=3)


async def test_a_cannot_subscribe_to_b_events_logs_or_work(tenants: tuple[str, str, Agent]) -> None:
    _, b, agent = tenants
    for subject in (f"trellis.{b}.>", f"trellis.{b}.run.>", f"trellis.{b}.logs.>", f"trellis.{b}.work.>", ">"):
        await agent.nc.subscribe(subject)
        await agent.violation(f'Subscription to "{subject}"')


async def test_a_cannot_read_b_streams_consumers_or_kv(tenants: tuple[str, str, Agent]) -> None:
    _, b, agent = tenants
    work_b = subjects.work_stream(b)
    for subject in (
        f"$JS.API.STREAM.INFO.{work_b}",
        f"$JS.API.CONSUMER.CREATE.{work_b}",
        f"$JS.API.CONSUMER.CREATE.{work_b}.pool.trellis.{b}.work.pool",
        f"$JS.API.CONSUMER.MSG.NEXT.{work_b}.pool",  # fetch b's work consumer
        f"$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.spy.trellis.{b}.>",  # b's events
        f"$JS.API.CONSUMER.CREATE.TRELLIS_LOGS.spy.trellis.{b}.>",  # b's logs
        "$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS",  # an unfiltered (every tenant's) consumer
        "$JS.API.STREAM.MSG.GET.TRELLIS_EVENTS",
        f"$JS.API.STREAM.INFO.KV_{subjects.KV_RUN_STATE}",
        f"$JS.API.DIRECT.GET.KV_{subjects.KV_RUN_STATE}.$KV.{subjects.KV_RUN_STATE}.{b}.x",
        f"$JS.API.STREAM.MSG.GET.KV_{subjects.KV_RUN_STATE}",
        f"$JS.API.CONSUMER.CREATE.KV_{subjects.KV_RUN_STATE}",
        f"$JS.API.STREAM.INFO.OBJ_{subjects.bundles_bucket(b)}",
        "$JS.API.STREAM.NAMES",
        f"$JS.API.CONSUMER.CREATE.OBJ_{subjects.bundles_bucket(b)}",
    ):
        await agent.refused_request(subject, b"{}")


async def test_a_cannot_create_update_or_delete_streams(tenants: tuple[str, str, Agent]) -> None:
    a, b, agent = tenants
    for subject in (
        "$JS.API.STREAM.CREATE.EVIL",
        f"$JS.API.STREAM.UPDATE.{subjects.work_stream(a)}",
        f"$JS.API.STREAM.DELETE.{subjects.work_stream(a)}",
        f"$JS.API.STREAM.DELETE.{subjects.work_stream(b)}",
        f"$JS.API.STREAM.PURGE.{subjects.STREAM_EVENTS}",
        f"$JS.API.CONSUMER.DELETE.{subjects.work_stream(b)}.pool",
    ):
        await agent.refused_request(subject, b"{}")
    with pytest.raises(nats.errors.TimeoutError):
        await agent.nc.jetstream(timeout=0.5).key_value(subjects.KV_RUN_STATE)


async def test_a_cannot_answer_key_requests(tenants: tuple[str, str, Agent]) -> None:
    a, b, agent = tenants
    for tenant in (a, b):
        await agent.nc.subscribe(subjects.keys_request(tenant))
        await agent.violation(f'Subscription to "{subjects.keys_request(tenant)}"')
    await agent.nc.subscribe(subjects.ALL_KEYS_REQUESTS)
    await agent.violation(f'Subscription to "{subjects.ALL_KEYS_REQUESTS}"')


async def test_a_forged_event_on_b_subject_is_refused_by_the_server(
    tenants: tuple[str, str, Agent], control: Bus
) -> None:
    a, b, agent = tenants
    forged = subjects.run_event(b, "r1", "activity.completed")
    await agent.nc.publish(forged, b'{"tenant": "%s"}' % a.encode())
    await agent.violation(f'Publish to "{forged}"')
    with pytest.raises(nats.js.errors.NotFoundError):
        await control.js.get_last_msg(subjects.STREAM_EVENTS, forged)
    with pytest.raises(nats.errors.TimeoutError):
        await agent.nc.jetstream(timeout=0.5).publish(subjects.logs(b, "r1", "x"), b"forged")
    for subject in (f"$KV.{subjects.KV_RUN_STATE}.{b}.r1", "$JS.ACK.TRELLIS_EVENTS.c.1.1.1.1.1.0"):
        await agent.nc.publish(subject, b"forged")  # a KV write, an ack on someone's consumer
        await agent.violation(f'Publish to "{subject}"')


async def test_a_cannot_decide_its_own_approvals_or_speak_for_the_control_plane(
    tenants: tuple[str, str, Agent], control: Bus
) -> None:
    """The agent runs the tenant's own code: a script holding its credentials may not approve
    its run, request or complete runs, dispatch work or cancel activities."""
    a, _, agent = tenants
    for subject in (
        subjects.run_event(a, "r1", "approval.decided"),
        subjects.run_event(a, "r1", "run.completed"),
        subjects.run_event(a, "r1", "activity.dispatched"),
        subjects.runs_requested(a),
        subjects.work(a, "default"),
        subjects.control(a, "default"),
    ):
        await agent.nc.publish(subject, b"forged")  # a KV write, an ack on someone's consumer
        await agent.violation(f'Publish to "{subject}"')


async def test_a_runs_its_own_work_reads_its_bundles_and_publishes_its_events(
    tenants: tuple[str, str, Agent], control: Bus
) -> None:
    a, _, agent = tenants
    js = agent.nc.jetstream(timeout=5)
    # the control plane dispatches, the agent pulls and acknowledges on its own stream
    await control.js.publish(subjects.work(a, "pool"), b"job", stream=subjects.work_stream(a))
    sub = await js.pull_subscribe(subjects.work(a, "pool"), durable="pool", stream=subjects.work_stream(a))
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.data == b"job"
    await msg.ack_sync(timeout=5)
    # its bundles (object store reads), written by the control plane
    await bus_mod.put_bundle(control, a, "digest1", b"bundle bytes")
    assert await read_object(js, subjects.bundles_bucket(a), "digest1") == b"bundle bytes"
    # its events and logs, acknowledged by the shared streams
    ack = await js.publish(subjects.run_event(a, "r1", "activity.started"), b"{}")
    assert ack.stream == subjects.STREAM_EVENTS
    # its approvals consumer: named, filtered on its own tenant
    psub = await js.subscribe(
        subjects.run_event(a, "r1", "approval.decided"), stream=subjects.STREAM_EVENTS,
        config=js_api.ConsumerConfig(name=f"appr{uuid.uuid4().hex[:8]}"),
    )
    await control.js.publish(subjects.run_event(a, "r1", "approval.decided"), b"yes")
    got = await psub.next_msg(timeout=5)
    assert got.data == b"yes"
    assert [e for e in agent.errors if "ermissions" in e] == []
    # it asks for its keys, and the control plane answers on its inbox
    async def answer(m: Msg) -> None:
        await m.respond(b"material")

    answered = await control.nc.subscribe(subjects.ALL_KEYS_REQUESTS, cb=answer)
    await control.nc.flush()
    try:
        reply = await agent.nc.request(subjects.keys_request(a), b"", timeout=5)
        assert reply.data == b"material"
    finally:
        await answered.unsubscribe()


async def read_object(js: JetStreamContext, bucket: str, name: str) -> bytes:
    """An object's bytes as an agent reads them (bus.get_bundle): message gets on the bucket's own
    stream. nats-py's ObjectStore.get subscribes by subject, which looks streams up with
    `$JS.API.STREAM.NAMES` (every tenant's stream names), an API agents may not call."""
    store = await js.object_store(bucket)
    info = await store.get_info(name)
    data, seq = b"", 1
    for _ in range(info.chunks or 0):
        raw = await js.get_msg(f"OBJ_{bucket}", seq=seq, subject=f"$O.{bucket}.C.{info.nuid}", next=True)
        data += raw.data or b""
        seq = (raw.seq or seq) + 1
    return data


async def test_a_revoked_agent_key_is_refused_after_reload(
    secure_nats: EmbeddedNats, tenants: tuple[str, str, Agent], tmp_path: Path
) -> None:
    a, _, _ = tenants
    seed, key = nats_auth.new_user_seed()
    (tmp_path / "second.nk").write_text(seed)
    secure_nats.write_authorization([(a, key)])
    secure_nats.reload()
    second = await connect_with_retry(secure_nats.url, tmp_path / "second.nk", a)
    await second.nc.close()
    secure_nats.write_authorization([])
    secure_nats.reload()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            nc = await connect_agent(secure_nats.url, tmp_path / "second.nk", a)
        except (nats.errors.Error, OSError):
            break
        await nc.nc.close()
        assert asyncio.get_running_loop().time() < deadline, "revoked key still accepted"
        await asyncio.sleep(0.05)
