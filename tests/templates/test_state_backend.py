"""`backendType: system`: the compiler marks a resource's OpenTofu/Terraform stages as using the
managed state, and the compiler service gives them its address and a sealed per-run credential."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from template_support import BASE, mutate, only, run

from trellis_compiler.service import serve
from trellis_compiler.state_backend import attach_state_backend, backend_base_url
from trellis_core import state_credentials, subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats
from trellis_core.events import RunCompiled, RunEvent, RunRejected, RunRequested, SourceFile, decode_run_event
from trellis_core.sealed import MasterKeyring, new_master_key
from trellis_core.settings import Settings
from trellis_core.workflow import IacSpec, StateBackend, Workflow
from trellis_store.projection_rows import MASK, masked

SYSTEM = mutate(("openTofu: {refresh: true}", "openTofu: {refresh: true, backendType: system}"))
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CALLBACK_KEY = "k" * 40


def iac_specs(workflow: Workflow | None, resource: str) -> list[IacSpec]:
    assert workflow is not None
    return [a.spec for a in workflow.activities if a.resource == resource and isinstance(a.spec, IacSpec)]


def test_a_system_backend_marks_every_stage_of_its_resource_only() -> None:
    result = run(SYSTEM)
    assert not result.errors, result.errors
    specs = iac_specs(result.workflow, "vpc")
    assert [s.stage for s in specs] == ["init", "plan", "apply", "output"]
    assert all(s.state_backend == StateBackend() for s in specs)
    assert all(s.state_backend is None for s in iac_specs(run(BASE).workflow, "vpc"))
    destroy = iac_specs(run(SYSTEM, action="destroy").workflow, "vpc")
    assert all(s.state_backend == StateBackend() for s in destroy)


def test_rafays_use_system_state_store_is_the_same_switch() -> None:
    text = mutate(("openTofu: {refresh: true}", "openTofu: {refresh: true, useSystemStateStore: true}"))
    result = run(text)
    assert not result.errors, result.errors
    assert all(s.state_backend == StateBackend() for s in iac_specs(result.workflow, "vpc"))


def test_backend_configs_with_a_system_backend_are_an_error_naming_the_field() -> None:
    text = mutate(
        ("openTofu: {refresh: true}", "openTofu: {refresh: true, backendType: system, backendConfigs: [bucket=b]}")
    )
    problem = only(run(text).errors, "spec.providerOptions.openTofu.backendConfigs")
    assert "backendType: system" in problem.message
    assert problem.file == "bundle.yaml"


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"callback_key": CALLBACK_KEY, "gateway_public_url": "https://trellis.example"}
    return Settings.from_env({}, **(values | overrides))


def test_the_service_fills_in_the_address_and_one_sealed_credential_for_the_run() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    result = attach_state_backend(run(SYSTEM), tenant="acme", run_id="run-7", settings=_settings(), keys=keys, now=NOW)
    assert not result.errors
    backends = [s.state_backend for s in iac_specs(result.workflow, "vpc")]
    assert {b.address for b in backends if b} == {"https://trellis.example/v1/tfstate/acme/dev/vpc"}
    (token,) = {b.credential for b in backends if b}
    assert token.startswith("[[trellis-sealed:")
    claims = state_credentials.verify(state_credentials.state_key(CALLBACK_KEY), keys.open(token), NOW)
    assert isinstance(claims, state_credentials.StateClaims)
    assert (claims.tenant, claims.environment, claims.run_id) == ("acme", "dev", "run-7")
    assert claims.expires_at == NOW + timedelta(days=7)
    assert "tfs1." not in msgspec.json.encode(result.workflow).decode()  # only ever sealed


def test_the_run_as_the_store_keeps_and_shows_it_has_the_credential_masked() -> None:
    """`runs.workflow` (what GET /v1/runs/{id} shows any viewer) keeps the address, never the
    sealed credential: an agent opens sealed tokens wherever it finds them."""
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    result = attach_state_backend(run(SYSTEM), tenant="acme", run_id="run-7", settings=_settings(), keys=keys, now=NOW)
    kept = masked(result.workflow)  # type: ignore[arg-type]
    backends = {s.state_backend for s in iac_specs(kept, "vpc")}
    assert backends == {StateBackend(address="https://trellis.example/v1/tfstate/acme/dev/vpc", credential=MASK)}
    assert "[[trellis-sealed:" not in msgspec.json.encode(kept).decode()


def test_the_agents_url_setting_wins_over_the_public_url() -> None:
    assert (
        backend_base_url(_settings(state_backend_url="http://gateway.internal:8080")) == "http://gateway.internal:8080"
    )
    assert backend_base_url(_settings()) == "https://trellis.example"


def test_without_a_callback_or_seal_key_a_system_backend_run_is_rejected_naming_the_setting() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    no_key = attach_state_backend(
        run(SYSTEM), tenant="acme", run_id="r", settings=_settings(callback_key=""), keys=keys, now=NOW
    )
    assert no_key.workflow is None
    assert "vpc use backendType: system" in no_key.errors[0].message
    assert "TRELLIS_CALLBACK_KEY" in no_key.errors[0].message
    no_seal = attach_state_backend(run(SYSTEM), tenant="acme", run_id="r", settings=_settings(), keys=None, now=NOW)
    assert "TRELLIS_SEAL_KEY" in no_seal.errors[0].message
    plain = run(BASE)
    assert (
        attach_state_backend(plain, tenant="acme", run_id="r", settings=_settings(callback_key=""), keys=None, now=NOW)
        is plain
    )


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of this module's own. On the session's, the compiler's durable may still hold
    other tests' requests (a destroy asking for a store that no longer runs), which a compiler
    started here would take first, past these tests' timeouts."""
    server = EmbeddedNats(tmp_path_factory.mktemp("state-backend-nats"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


async def _compile_on_the_bus(bus: Bus, tenant: str, run_id: str) -> RunEvent:
    """Publish a request of the SYSTEM bundle to a compiler service on `bus`; its outcome."""
    queue: asyncio.Queue[RunEvent] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        await queue.put(decode_run_event(msg.data))

    sub = await bus.nc.subscribe(subjects.all_run_events(tenant), cb=collect)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        event = RunRequested(
            tenant=tenant, run_id=run_id, environment="dev", sources=(SourceFile(path="bundle.yaml", text=SYSTEM),)
        )
        await bus.publish(subjects.runs_requested(tenant), event, msg_id=f"{run_id}/request")
        return await asyncio.wait_for(queue.get(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await sub.unsubscribe()


async def test_the_compiler_service_gives_a_system_backend_run_its_sealed_credential(
    settings: Settings, own_nats: str, unique: str
) -> None:
    master = new_master_key()
    keyed = msgspec.structs.replace(
        settings, nats_url=own_nats, callback_key=CALLBACK_KEY, seal_key=master,
        state_backend_url="http://gw.internal:8080",
    )  # fmt: skip
    bus = await Bus.connect(keyed, name="state-backend-test")
    await bus.ensure_streams()
    try:
        compiled = await _compile_on_the_bus(bus, unique, "run-1")
    finally:
        await bus.close()
    assert isinstance(compiled, RunCompiled), compiled
    backends = {s.state_backend for s in iac_specs(compiled.workflow, "vpc")}
    (backend,) = backends
    assert backend is not None
    assert backend.address == f"http://gw.internal:8080/v1/tfstate/{unique}/dev/vpc"
    plain = MasterKeyring(master).for_tenant(unique).open(backend.credential)
    claims = state_credentials.verify(state_credentials.state_key(CALLBACK_KEY), plain, datetime.now(UTC))
    assert isinstance(claims, state_credentials.StateClaims)
    assert claims.run_id == "run-1"


async def test_the_compiler_service_without_a_callback_key_rejects_a_system_backend_run(
    settings: Settings, own_nats: str, unique: str
) -> None:
    keyed = msgspec.structs.replace(settings, nats_url=own_nats, callback_key="", seal_key=new_master_key())
    bus = await Bus.connect(keyed, name="state-backend-test")
    await bus.ensure_streams()
    try:
        rejected = await _compile_on_the_bus(bus, unique, "run-2")
    finally:
        await bus.close()
    assert isinstance(rejected, RunRejected), rejected
    assert "TRELLIS_CALLBACK_KEY" in rejected.errors[0].message
