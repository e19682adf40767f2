"""The compiler service seals sensitive values given in clear, rejects them without a seal key,
and deletes a request that held one from TRELLIS_RUNS once the run is compiled or rejected."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest

from trellis_compiler.service import serve
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunEvent, RunRejected, RunRequested, SourceFile, decode_run_event
from trellis_core.sealed import MasterKeyring, contains_token, new_master_key
from trellis_core.settings import Settings

TIMEOUT = 10.0
_barriers = itertools.count()
SECRET = "hunter2-very-secret"

BUNDLE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables: [{name: pw}]
  providerOptions:
    custom:
      tasks:
        - name: connect
          type: script
          options: {script: {script: "psql postgres://app:$(variables.pw)$@db"}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: app}]
  variables:
    - {name: pw, options: {sensitive: true}}
    - {name: region, value: eu-west-1}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: prod}
spec:
  template: {name: stack, version: v1}
"""


@pytest.fixture
def seal_key() -> str:
    return new_master_key()


@pytest.fixture
async def keyed_bus(settings: Settings, seal_key: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(msgspec.structs.replace(settings, seal_key=seal_key), name="tests-keyed")
    yield bus
    await bus.close()


async def _serving(bus: Bus) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), TIMEOUT)
    yield
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)


@pytest.fixture
async def keyed_compiler(keyed_bus: Bus) -> AsyncIterator[None]:
    async for _ in _serving(keyed_bus):
        yield


@pytest.fixture
async def keyless_compiler(bus: Bus) -> AsyncIterator[None]:
    async for _ in _serving(bus):
        yield


@pytest.fixture
async def run_events(bus: Bus, unique: str) -> AsyncIterator[asyncio.Queue[tuple[bytes, RunEvent]]]:
    queue: asyncio.Queue[tuple[bytes, RunEvent]] = asyncio.Queue()

    async def collect(msg: object) -> None:
        data = msg.data  # type: ignore[attr-defined]
        await queue.put((data, decode_run_event(data)))

    sub = await bus.nc.subscribe(subjects.all_run_events(unique), cb=collect)
    yield queue
    await sub.unsubscribe()


async def _request(bus: Bus, tenant: str, run_id: str, **variables: str) -> int:
    """Publish a run request; its stream sequence."""
    event = RunRequested(
        tenant=tenant,
        run_id=run_id,
        environment="prod",
        sources=(SourceFile(path="stack.yaml", text=BUNDLE),),
        variables=variables,
        requested_by="tester",
    )
    ack = await bus.publish(subjects.runs_requested(tenant), event, msg_id=f"{run_id}/request")
    return ack.seq


async def _stored(bus: Bus, seq: int) -> bool:
    try:
        await bus.js.get_msg(subjects.STREAM_RUNS, seq)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _handled(bus: Bus, tenant: str, events: asyncio.Queue[tuple[bytes, RunEvent]]) -> None:
    """Wait until the compiler is done with every request before: it handles one at a time, so
    once a request published now has its outcome, the ones before are handled to the end (the
    deleting after their outcome included)."""
    await _request(bus, tenant, f"{tenant}-barrier-{next(_barriers)}", pw="")
    while True:
        _, event = await asyncio.wait_for(events.get(), TIMEOUT)
        if "barrier" in event.run_id:
            return


async def test_a_clear_sensitive_variable_is_sealed_everywhere_and_its_request_deleted(
    bus: Bus, keyed_compiler: None, run_events: asyncio.Queue[tuple[bytes, RunEvent]], unique: str, seal_key: str
) -> None:
    seq = await _request(bus, unique, f"{unique}-clear", pw=SECRET, region="us-east-1")
    data, event = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(event, RunCompiled), event
    assert SECRET.encode() not in data
    keys = MasterKeyring(seal_key).for_tenant(unique)
    token = event.workflow.requested_variables["pw"]
    assert keys.open(token) == SECRET
    assert event.workflow.requested_variables["region"] == "us-east-1"  # not sensitive: as given
    assert event.workflow.scope["environment"]["variables"]["pw"] == token
    task = event.workflow.activities[0]
    assert task.spec.command[-1] == f"psql postgres://app:{token}@db"  # type: ignore[union-attr]
    assert keys.open_text(task.spec.command[-1]) == f"psql postgres://app:{SECRET}@db"  # type: ignore[union-attr]
    assert "pw" in task.sensitive
    await _handled(bus, unique, run_events)
    assert not await _stored(bus, seq), "the request holding the secret in clear is still in TRELLIS_RUNS"


async def test_a_sealed_variable_passes_as_it_is_and_its_request_is_kept(
    bus: Bus, keyed_compiler: None, run_events: asyncio.Queue[tuple[bytes, RunEvent]], unique: str, seal_key: str
) -> None:
    token = MasterKeyring(seal_key).for_tenant(unique).seal(SECRET)
    seq = await _request(bus, unique, f"{unique}-sealed", pw=token)
    _, event = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(event, RunCompiled), event
    assert event.workflow.requested_variables["pw"] == token
    assert contains_token(event.workflow.activities[0].spec.command)  # type: ignore[union-attr]
    await _handled(bus, unique, run_events)
    assert await _stored(bus, seq), "a request with nothing in clear needs no deleting"


async def test_without_a_seal_key_a_clear_sensitive_value_rejects_the_run_naming_it_not_its_value(
    bus: Bus, keyless_compiler: None, run_events: asyncio.Queue[tuple[bytes, RunEvent]], unique: str
) -> None:
    assert not bus.settings.seal_key
    seq = await _request(bus, unique, f"{unique}-keyless", pw=SECRET)
    data, event = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(event, RunRejected), event
    assert SECRET.encode() not in data
    [error] = event.errors
    assert error.message.startswith("sensitive variable 'pw' cannot be sealed: TRELLIS_SEAL_KEY is not set")
    assert error.path == "--var pw"
    await _handled(bus, unique, run_events)
    assert not await _stored(bus, seq), "the rejected request holding the secret in clear is still in TRELLIS_RUNS"

    # nothing in clear: the same compiler compiles it
    await _request(bus, unique, f"{unique}-keyless-ok", pw="")
    _, event = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(event, RunCompiled), event
