"""The compiler asks the state store for an environment's last deploy (a destroy always, a deploy
with `executeOnce` hooks): it waits out a store that does not answer, and rejects a run only when
the store refuses, saying why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import structlog
from scheduler_support import (
    Recorder,
    recording,
    request,
    running_agent,
    running_compiler,
    running_scheduler,
    running_store,
    sources_of,
)

from trellis_core import rpc
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunRejected
from trellis_core.settings import Settings
from trellis_store.api import DeployRecordGet, Reply, StoreError, subject_of

SIZED = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box}
spec:
  provider: custom
  variables:
    - {name: size, valueType: text, value: small}
  providerOptions:
    custom:
      tasks:
        - {name: make, type: script, options: {script: {script: "echo $TRELLIS_VAR_size"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: sized}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  variables:
    - {name: size, valueType: text, value: small}
  hooks:
    onInit: [{name: seed, type: script, executeOnce: ONCE, options: {script: {script: "true"}}}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: sized}
spec:
  template: {name: sized, version: v1}
"""
ONCE = sources_of(SIZED.replace("ONCE", "true"))
PLAIN = sources_of(SIZED.replace("ONCE", "false"))


async def outcome(rec: Recorder, run_id: str, within: float = 30.0) -> RunCompiled | RunRejected:
    def found() -> list[Any]:
        return rec.of(RunCompiled, run_id) + rec.of(RunRejected, run_id)

    await rec.wait(lambda: bool(found()), within)
    return found()[0]  # type: ignore[no-any-return]


async def logged(logs: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool], within: float = 15.0) -> None:
    """Wait until a captured log line matches (the compiler logs as it waits)."""
    async with asyncio.timeout(within):
        while not any(match(line) for line in logs):  # noqa: ASYNC110 - a log list has no event to wait on
            await asyncio.sleep(0.05)


async def test_a_destroy_compiles_with_the_last_deploys_variables_unless_it_gives_its_own(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path, database_url: str
) -> None:
    async with (
        running_store(bus, settings, database_url),
        running_compiler(bus),
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        deploy = await request(bus, unique, PLAIN, "sized", variables={"size": "large"})
        assert (await rec.completion(deploy, within=60)).status == "succeeded"
        reused = await outcome(rec, await request(bus, unique, PLAIN, "sized", action="destroy"))
        given = await outcome(rec, await request(bus, unique, PLAIN, "sized", "destroy", {"size": "huge"}))
    assert isinstance(reused, RunCompiled)
    assert isinstance(given, RunCompiled)
    assert reused.workflow.requested_variables == {"size": "large"}
    assert given.workflow.requested_variables == {"size": "huge"}
    assert reused.workflow.last_deploy is not None
    assert reused.workflow.last_deploy.run_id == deploy
    assert not any("no deploy" in w for w in reused.workflow.warnings)


async def test_a_destroy_of_an_environment_never_deployed_compiles_saying_so(
    bus: Bus, settings: Settings, unique: str, database_url: str
) -> None:
    async with running_store(bus, settings, database_url), running_compiler(bus), recording(bus, unique) as rec:
        compiled = await outcome(rec, await request(bus, unique, PLAIN, "sized", action="destroy"))
    assert isinstance(compiled, RunCompiled)
    assert compiled.workflow.last_deploy is None
    note = f"no deploy of environment 'sized' is recorded for tenant {unique!r}"
    assert any(note in warning for warning in compiled.workflow.warnings)


async def test_a_deploy_without_execute_once_hooks_compiles_with_no_store_running(bus: Bus, unique: str) -> None:
    async with running_compiler(bus), recording(bus, unique) as rec:
        compiled = await outcome(rec, await request(bus, unique, PLAIN, "sized"))
    assert isinstance(compiled, RunCompiled)
    assert compiled.workflow.last_deploy is None


async def test_while_no_store_answers_runs_that_need_it_wait_in_order_and_compile_once_one_does(
    bus: Bus, settings: Settings, unique: str, database_url: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running_compiler(bus), recording(bus, unique) as rec:
            waits = await request(bus, unique, ONCE, "sized")  # executeOnce: it must ask
            behind = await request(bus, unique, PLAIN, "sized")  # needs nothing, but comes after
            await logged(logs, lambda line: line["event"] == "store_unavailable_run_waits" and line["run"] == waits)
            await logged(logs, lambda line: line["event"] == "store_unavailable_run_waits" and line["attempt"] >= 2)
            assert rec.of(RunCompiled) == []
            assert rec.of(RunRejected) == []
            async with running_store(bus, settings, database_url):
                first, second = await outcome(rec, waits, within=30), await outcome(rec, behind, within=30)
    assert isinstance(first, RunCompiled)
    assert isinstance(second, RunCompiled)
    assert [e.run_id for e in rec.of(RunCompiled)] == [waits, behind]
    [line] = [x for x in logs if x["event"] == "store_unavailable_run_waits" and x["attempt"] == 1]
    assert line["environment"] == "sized"
    assert "not running" in line["error"]


@asynccontextmanager
async def refusing_store(bus: Bus, error: StoreError) -> AsyncIterator[None]:
    """A stand-in store on the real bus that refuses every DeployRecordGet with `error`."""

    async def answer(_: bytes) -> bytes:
        return msgspec.json.encode(Reply(error=error))

    sub = await rpc.serve(bus.nc, subject_of(DeployRecordGet), answer, queue="trellis-store")
    try:
        yield
    finally:
        await sub.unsubscribe()


async def test_a_store_that_refuses_rejects_the_run_saying_what_it_said(bus: Bus, unique: str) -> None:
    refusal = StoreError(code="internal", message="environment 'sized': its deployed variables do not open")
    async with refusing_store(bus, refusal), running_compiler(bus), recording(bus, unique) as rec:
        rejected = await outcome(rec, await request(bus, unique, PLAIN, "sized", action="destroy"))
    assert isinstance(rejected, RunRejected)
    [problem] = rejected.errors
    assert problem.message == (
        f"the state store refused to give the last deploy of environment 'sized' of tenant {unique!r}: "
        "internal: environment 'sized': its deployed variables do not open"
    )
