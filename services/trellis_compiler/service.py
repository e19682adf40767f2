"""The compiler service: run requests in, compiled workflows or rejections out.

Thin: it wires the bus to the pure compiler. A bad bundle becomes a `run.rejected` event; an
unexpected exception inside the compiler is reported the same way, so no request stops it.
The files beside the templates are stored once, by digest, in the bundle object store, and
every activity of the compiled run names that digest for the agents.
A destroy compiles with the variables of the environment's last successful deploy (the state
store's record, see last_deploy.py), overridden by those the destroy request gives; the compiled
workflow carries that deploy (`last_deploy`) for executeOnce hooks and a destroy's outputs.
A compiled workflow larger than WORKFLOW_INLINE_MAX_BYTES is stored once, by digest, in the
workflow object store and `run.compiled` names it; one over TRELLIS_WORKFLOW_MAX_BYTES is rejected.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import nats.errors

from trellis_compiler.last_deploy import (
    as_last_deploy,
    last_deploy,
    needs_last_deploy,
    never_deployed,
    store_refusal,
)
from trellis_compiler.linked import destroy_refused, linked_outputs, linked_refusal
from trellis_compiler.state_backend import attach_state_backend, utc_now
from trellis_core import subjects
from trellis_core.bus import Bus, Delivery, PermanentError, decoder, put_bundle, put_workflow
from trellis_core.errors import ConfigError
from trellis_core.events import Problem, RunCompiled, RunRejected, RunRequested, encode, pack_bundle
from trellis_core.logs import get_logger
from trellis_core.sealed import MasterKeyring, TenantKeys
from trellis_core.settings import WORKFLOW_INLINE_MAX_BYTES
from trellis_store.api import DeployRecord, StoreError
from trellis_store.client import StoreClient
from trellis_templates.bundle import file_problems
from trellis_templates.compiler import CompileResult, compile_sources
from trellis_templates.resolved import LinkedEnvironment

DURABLE = "trellis-compiler"
REQUESTS = f"{subjects.PREFIX}.*.runs.requested"
log = get_logger("compiler")


NO_SEAL_KEY = (
    "TRELLIS_SEAL_KEY is not set on the compiler, and the run gives this value in clear: "
    "seal it first (`trellis run` and the gateway do, asking the state store) or give the compiler the key"
)


@dataclass
class Sealing:
    """The compiler's sealer: tenant keys derived from the master key (cached per tenant), or
    none (no TRELLIS_SEAL_KEY: a sensitive value in clear then rejects its run)."""

    keyring: MasterKeyring | None
    _tenants: dict[str, TenantKeys] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: object) -> Sealing:
        """Raises ConfigError when TRELLIS_SEAL_KEY is set but unreadable: better not to start."""
        if not getattr(settings, "seal_key", ""):
            return cls(None)
        return cls(MasterKeyring.from_settings(settings))

    def for_request(self, tenant: str) -> RequestSealer:
        if self.keyring is None:
            return RequestSealer(None)
        keys = self._tenants.get(tenant)
        if keys is None:
            keys = self._tenants[tenant] = self.keyring.for_tenant(tenant)
        return RequestSealer(keys)


@dataclass
class RequestSealer:
    """The sealer of one request: remembers whether anything was in clear (the request message
    then holds a secret and is deleted once the run is compiled or rejected)."""

    keys: TenantKeys | None
    used: bool = False

    def __call__(self, plain: str) -> str:
        self.used = True
        if self.keys is None:
            raise ConfigError(NO_SEAL_KEY)
        return self.keys.seal(plain)


def compile_request(
    request: RunRequested,
    *,
    email_relay_url: str = "",
    seal: RequestSealer | None = None,
    linked: Mapping[str, LinkedEnvironment] | None = None,
) -> CompileResult:
    """Compile a run request's bundle; a bug in the compiler becomes an error, not an exception.
    `seal`: seals each sensitive value given in clear (none: values are kept as they are);
    `linked`: the environments its static resources read (linked.py; None: it reads none)."""
    try:
        return compile_sources(
            request.sources,
            request.environment,
            request.variables,
            request.action,
            tenant=request.tenant,
            run_id=request.run_id,
            requested_by=request.requested_by,
            email_relay_url=email_relay_url,
            strict_inputs=True,  # a misspelt variable must not be dropped silently from a run
            seal=seal,
            purpose=request.purpose,
            trigger=request.trigger or None,
            linked=linked if linked is not None else {},
        )
    except Exception as exc:  # the compiler is pure: this is a bug, reported on the run
        log.exception("compiler_crashed", tenant=request.tenant, run=request.run_id)
        return CompileResult(None, (), (Problem(message=f"internal compiler error: {exc!r}"),))


def with_deploy_variables(request: RunRequested, record: DeployRecord | None) -> RunRequested:
    """A destroy request with its environment's last deploy's variables under its own; a drift
    check with them over its own (it checks what was deployed)."""
    if record is None or not record.deployed or not record.variables:
        return request
    if request.purpose.drift:
        return msgspec.structs.replace(request, variables={**request.variables, **record.variables})
    if request.action != "destroy":
        return request
    return msgspec.structs.replace(request, variables={**record.variables, **request.variables})


def no_deploy_note(request: RunRequested, record: DeployRecord | None) -> tuple[str, ...]:
    if request.action != "destroy" or (record is not None and record.deployed):
        return ()
    return (
        f"no deploy of environment {request.environment!r} is recorded for tenant {request.tenant!r}: "
        "the destroy runs without a deploy's variables and outputs",
    )


def outcome(
    request: RunRequested, result: CompileResult, notes: tuple[str, ...] = (), record: DeployRecord | None = None
) -> RunCompiled | RunRejected:
    """The run's compiled workflow, stamped with the request's variables (a later destroy reuses
    them), `notes` as warnings and the environment's last deploy (`record`); or its rejection."""
    if result.workflow is not None and not result.errors:
        workflow = msgspec.structs.replace(
            result.workflow,
            # the request's variables (a later destroy reuses them), sensitive ones as sealed
            requested_variables=result.workflow.requested_variables or dict(request.variables),
            warnings=(*result.workflow.warnings, *notes),
            last_deploy=as_last_deploy(request, record),
        )
        return RunCompiled(
            tenant=request.tenant,
            run_id=request.run_id,
            workflow=workflow,
            requested_by=request.requested_by,
        )
    return RunRejected(tenant=request.tenant, run_id=request.run_id, errors=result.errors, warnings=result.warnings)


async def attach_files(bus: Bus, request: RunRequested, result: CompileResult) -> CompileResult:
    """Store the request's files once under their digest and name it on every activity; a file
    that may not be written into a workspace rejects the run instead."""
    if result.workflow is None or result.errors or not request.files:
        return result
    if problems := file_problems(request.files):
        errors = tuple(Problem(message=f"file beside the templates {why}") for why in problems)
        return CompileResult(None, result.warnings, errors)
    digest, blob = pack_bundle(request.files)
    written = await put_bundle(bus, request.tenant, digest, blob)
    log.info("bundle_stored" if written else "bundle_known", run=request.run_id, bundle=digest, size=len(blob))
    activities = tuple(msgspec.structs.replace(a, bundle=digest) for a in result.workflow.activities)
    return CompileResult(msgspec.structs.replace(result.workflow, activities=activities), result.warnings, ())


async def handle(
    bus: Bus,
    request: RunRequested,
    delivery: Delivery,
    *,
    store: StoreClient,
    stop: asyncio.Event | None = None,
    email_relay_url: str = "",
    sealing: Sealing | None = None,
) -> None:
    """Compile one request and publish its outcome; ack follows (the bus acks after we return).
    The store is asked for the environment's last deploy only when the run needs it. A request
    that held a sensitive value in clear is deleted from its stream once its outcome is out."""
    try:
        subjects.run_event(request.tenant, request.run_id, "run.compiled")
    except subjects.InvalidSubjectToken as exc:
        raise PermanentError(str(exc)) from None
    if reason := subjects.subject_mismatch(delivery.subject, request.tenant):
        raise PermanentError(reason)
    record: DeployRecord | StoreError | None = None
    if needs_last_deploy(request):
        record = await last_deploy(store, request, delivery, stop)
        request = with_deploy_variables(request, record) if isinstance(record, DeployRecord) else request
    linked = await linked_outputs(store, request, delivery, stop)
    sealer = (sealing or Sealing.from_settings(bus.settings)).for_request(request.tenant)
    if isinstance(linked, StoreError):
        result = CompileResult(None, (), (linked_refusal(request, linked),))
    elif (refused := destroy_refused(request, record)) is not None:
        result = CompileResult(None, (), (refused,))
    else:
        result = await asyncio.to_thread(
            compile_request, request, email_relay_url=email_relay_url, seal=sealer, linked=linked
        )
    if record is None and result.workflow is not None and needs_last_deploy(request, result.workflow.activities):
        record = await last_deploy(store, request, delivery, stop)
    if isinstance(record, StoreError):
        log.error("store_refused_last_deploy", tenant=request.tenant, run=request.run_id, code=record.code)
        result = CompileResult(None, result.warnings, (Problem(message=store_refusal(request, record)),))
        record = None
    if isinstance(record, DeployRecord | None) and (why := never_deployed(request, record)):
        result = CompileResult(None, result.warnings, (Problem(message=why),))
    result = await attach_files(bus, request, result)
    result = attach_state_backend(
        result, tenant=request.tenant, run_id=request.run_id, settings=bus.settings, keys=sealer.keys, now=utc_now()
    )
    event = outcome(request, result, no_deploy_note(request, record), record)
    if isinstance(event, RunCompiled):
        event = await by_reference(bus, event)
    await delivery.in_progress()
    await bus.publish_event(event)  # its msg id dedupes a republish after a redelivery
    if sealer.used:
        await forget_request(bus, request, delivery)
    if isinstance(event, RunCompiled):
        log.info(
            "run_compiled",
            tenant=request.tenant,
            run=request.run_id,
            activities=len(result.workflow.activities) if result.workflow is not None else 0,
            workflow_ref=event.workflow_ref,
            warnings=len(result.warnings),
        )
    else:
        log.info("run_rejected", tenant=request.tenant, run=request.run_id, errors=len(event.errors))


async def forget_request(bus: Bus, request: RunRequested, delivery: Delivery) -> None:
    """Delete the request message: it held a sensitive value in clear, which must not rest in
    TRELLIS_RUNS for its 30 days. Its outcome is published (a redelivery would only publish the
    same event again), so a failure here is logged, not raised."""
    try:
        await bus.js.delete_msg(subjects.STREAM_RUNS, delivery.stream_sequence)
    except (nats.errors.Error, ValueError) as exc:
        log.error("request_not_deleted", tenant=request.tenant, run=request.run_id, error=str(exc))
        return
    log.info("request_deleted", tenant=request.tenant, run=request.run_id, why="it held a sensitive value in clear")


async def by_reference(bus: Bus, event: RunCompiled) -> RunCompiled | RunRejected:
    """The event as published: its workflow inline when small, else stored once and named by
    digest (the event keeps the workflow's header); a rejection when it is over the limit."""
    blob = encode(event.workflow)
    limit = bus.settings.workflow_max_bytes
    if len(blob) > limit:
        why = (
            f"the compiled workflow is {len(blob)} bytes, over the {limit}-byte limit "
            f"(TRELLIS_WORKFLOW_MAX_BYTES; it has {len(event.workflow.activities)} activities)"
        )
        return RunRejected(tenant=event.tenant, run_id=event.run_id, errors=(Problem(message=why),))
    if len(blob) <= min(WORKFLOW_INLINE_MAX_BYTES, bus.nc.max_payload // 2):  # a server may allow less
        return event
    digest = hashlib.sha256(blob).hexdigest()
    written = await put_workflow(bus, digest, blob)
    log.info("workflow_stored" if written else "workflow_known", run=event.run_id, workflow=digest, size=len(blob))
    header = msgspec.structs.replace(event.workflow, activities=(), scope={}, requested_variables={}, last_deploy=None)
    return msgspec.structs.replace(event, workflow=header, workflow_ref=digest)


async def serve(
    bus: Bus, stop: asyncio.Event, *, ready: asyncio.Event | None = None, email_relay_url: str = ""
) -> None:
    """Consume `runs.requested` of every tenant until `stop` is set."""
    store = StoreClient(bus.nc)
    sealing = Sealing.from_settings(bus.settings)
    if sealing.keyring is None:
        log.warning("no_seal_key", effect="runs giving a sensitive value in clear are rejected")

    async def handler(request: RunRequested, delivery: Delivery) -> None:
        await handle(
            bus, request, delivery, store=store, stop=stop, email_relay_url=email_relay_url, sealing=sealing
        )

    consumer = bus.consumer(
        stream=subjects.STREAM_RUNS,
        durable=DURABLE,
        subjects=[REQUESTS],
        decode=decoder(RunRequested),
        handler=handler,
        ack_wait=60.0,
    )
    log.info("compiler_started")
    try:
        await consumer.run(stop, ready=ready)
    finally:
        await store.close()
    log.info("compiler_stopped")
