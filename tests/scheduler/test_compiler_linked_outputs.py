"""The compiler asks the state store for the outputs of the environments a template's static
resources of kind environment read (docs/static-resources.md): a store refusal rejects the run
saying what the store said; a template without such resources never asks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from scheduler_support import recording, request, running_compiler, sources_of
from test_compiler_last_deploy import outcome

from trellis_core import rpc
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunRejected
from trellis_store.api import LinkedOutputs, LinkedOutputsGet, LinkedState, Reply, StoreError, subject_of

READER = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: vpc, value: '$(resource.network.output.vpc_id.value)$'}
  providerOptions:
    custom:
      tasks:
        - {name: use, type: script, options: {script: {script: "echo $TRELLIS_VAR_vpc"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: reader}
spec:
  version: v1
  resources:
    - {name: network, kind: environment, type: static}
    - {name: app}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: app}
spec:
  template: {name: reader, version: v1}
"""


@asynccontextmanager
async def linked_store(
    bus: Bus, answer: LinkedOutputs | StoreError, asked: list[LinkedOutputsGet]
) -> AsyncIterator[None]:
    """A stand-in store on the real bus answering every linked.outputs with `answer`."""

    async def reply(data: bytes) -> bytes:
        asked.append(msgspec.json.decode(data, type=LinkedOutputsGet))
        if isinstance(answer, StoreError):
            return msgspec.json.encode(Reply(error=answer))
        return msgspec.json.encode(Reply(result=msgspec.Raw(msgspec.json.encode(answer))))

    sub = await rpc.serve(bus.nc, subject_of(LinkedOutputsGet), reply, queue="trellis-store")
    try:
        yield
    finally:
        await sub.unsubscribe()


async def test_the_compiler_reads_the_named_environments_outputs_of_the_requests_tenant(bus: Bus, unique: str) -> None:
    asked: list[LinkedOutputsGet] = []
    given = LinkedOutputs(
        environments={"network": LinkedState(deployed=True, outputs={"vpc": {"vpc_id": {"value": 7}}})}
    )
    async with linked_store(bus, given, asked), running_compiler(bus), recording(bus, unique) as rec:
        compiled = await outcome(rec, await request(bus, unique, sources_of(READER), "app"))
    assert isinstance(compiled, RunCompiled), compiled
    assert compiled.workflow.static["network"].outputs == {"vpc_id": {"value": 7}}
    assert [(a.tenant, a.environments) for a in asked] == [(unique, ("network",))]


async def test_a_store_that_refuses_the_outputs_rejects_the_run_saying_what_it_said(bus: Bus, unique: str) -> None:
    refusal = StoreError(code="internal", message="the outputs of 'network' do not decode")
    async with linked_store(bus, refusal, []), running_compiler(bus), recording(bus, unique) as rec:
        rejected = await outcome(rec, await request(bus, unique, sources_of(READER), "app"))
    assert isinstance(rejected, RunRejected)
    [problem] = rejected.errors
    assert "static resources" in problem.message
    assert "internal: the outputs of 'network' do not decode" in problem.message


async def test_an_environment_the_tenant_does_not_have_rejects_the_run_at_the_resource(bus: Bus, unique: str) -> None:
    async with (
        linked_store(bus, LinkedOutputs(environments={}), []),
        running_compiler(bus),
        recording(bus, unique) as rec,
    ):
        rejected = await outcome(rec, await request(bus, unique, sources_of(READER), "app"))
    assert isinstance(rejected, RunRejected)
    [problem] = rejected.errors
    assert problem.path == "spec.resources[0].name"
    assert f"no environment 'network' of tenant {unique!r}" in problem.message
