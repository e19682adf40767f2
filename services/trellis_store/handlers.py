"""One request in, one Reply out: decode the StoreRequest union, run its op, and turn every
outcome into a value. PostgreSQL down answers `unavailable` (with a generic message: the
details, naming the database's address, are logged only); a bug answers `internal` (logged
with its traceback); nothing raises across the bus."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from trellis_core.logs import get_logger
from trellis_store import agent_keys, api, commands, keys, links, queries, schedules, tfstate
from trellis_store.api import Reply, StoreError, StoreRequest
from trellis_store.client import RESULT_FRAME
from trellis_store.context import Encoded, StoreContext

log = get_logger("store")

# An op answers a Struct, or its answer already encoded (Encoded: run.get of a big run).
Op = Callable[[StoreContext, Any], Awaitable[msgspec.Struct | Encoded]]

OPS: dict[type[msgspec.Struct], Op] = {
    api.TenantCreate: commands.tenant_create,
    api.TokenCreate: commands.token_create,
    api.TokenVerify: queries.token_verify,
    api.TemplatePublish: commands.template_publish,
    api.TemplateList: queries.template_list,
    api.TemplateBundleGet: queries.template_bundle,
    api.EnvironmentPut: commands.environment_put,
    api.EnvironmentGet: queries.environment_get,
    api.EnvironmentList: queries.environment_list,
    api.WebhookRotate: commands.webhook_rotate,
    api.WebhookResolve: queries.webhook_resolve,
    api.RunCreate: commands.run_create,
    api.RunGet: queries.run_get,
    api.RunList: queries.run_list,
    api.LogsGet: queries.logs_get,
    api.ApprovalGet: queries.approval_get,
    api.CallbackRedeem: commands.callback_redeem,
    api.AuditRecord: commands.audit_record,
    api.AuditList: queries.audit_list,
    api.DeployRecordGet: queries.deploy_record,
    api.Ping: queries.ping,
    api.SealValues: keys.seal_values,
    api.KeysReseal: keys.keys_reseal,
    api.AgentCredentialsCreate: agent_keys.agent_credentials_create,
    api.AgentCredentialsRevoke: agent_keys.agent_credentials_revoke,
    api.NatsUsersList: agent_keys.nats_users_list,
    api.TfStateGet: tfstate.tfstate_get,
    api.TfStatePut: tfstate.tfstate_put,
    api.TfStateDelete: tfstate.tfstate_delete,
    api.TfStateLock: tfstate.tfstate_lock,
    api.TfStateUnlock: tfstate.tfstate_unlock,
    api.TfStateShow: tfstate.tfstate_show,
    api.LinkedOutputsGet: links.linked_outputs,
    api.ScheduleStale: schedules.schedule_stale,
    api.ScheduleSync: schedules.schedule_sync,
    api.ScheduleDue: schedules.schedule_due,
    api.ScheduleClaim: schedules.schedule_claim,
    api.ScheduleMark: schedules.schedule_mark,
    api.ScheduleList: schedules.schedule_list,
    api.ScheduleExtend: schedules.schedule_extend,
}

# What "PostgreSQL is not there" looks like from asyncpg: refused or lost connections, a server
# shutting down or starting, a pool being closed, an acquire that timed out.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

UNAVAILABLE_MESSAGE = "the state store's database is unavailable"

_request = msgspec.json.Decoder(StoreRequest)
_encoder = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def decode_error(exc: msgspec.MsgspecError) -> StoreError:
    """msgspec's `Expected str, got int - at `$.template.name`` as a message and a field path."""
    text = str(exc)
    match = _AT.search(text)
    path = match["path"] if match else ""
    message = _AT.sub("", text)
    if missing := _MISSING.search(message):  # the field is inside the object `at` names
        path = f"{path}.{missing['field']}" if path else missing["field"]
    if path:
        message = f"{path}: {message}"
    return StoreError(code="invalid", message=f"undecodable store request: {message}", path=path)


def encode_reply(answer: msgspec.Struct | Encoded) -> bytes:
    """`{"result": <answer>}` or `{"error": ...}`. The result frame is built by hand, one copy of
    the answer's bytes: it is exactly what encoding Reply(result=...) gives, and what
    StoreClient.ask_raw unwraps without decoding."""
    if isinstance(answer, StoreError):
        return _encoder.encode(Reply(error=answer))
    parts = answer.parts if isinstance(answer, Encoded) else (_encoder.encode(answer),)
    return b"".join((RESULT_FRAME[0], *parts, RESULT_FRAME[1]))


async def handle(ctx: StoreContext, payload: bytes) -> bytes:
    """The encoded Reply to one encoded request; never raises (but for cancellation).

    A request msgspec cannot decode answers `invalid`: malformed or mistyped (DecodeError,
    ValidationError among them), and nested too deep for the decoder (RecursionError: an
    AuditRecord.detail of 100,000 nested lists) - a request the caller must change."""
    try:
        request = _request.decode(payload)
    except msgspec.MsgspecError as exc:
        return encode_reply(decode_error(exc))
    except RecursionError:
        return encode_reply(StoreError(code="invalid", message="undecodable store request: nested too deeply"))
    return encode_reply(await answer(ctx, request))


async def answer(ctx: StoreContext, request: StoreRequest) -> msgspec.Struct | Encoded:
    op = api.op_of(request)
    try:
        return await OPS[type(request)](ctx, request)
    except UNAVAILABLE as exc:
        # the details (the database's host and port, the driver's words) stay in the log
        log.warning("store_unavailable", op=op, error=f"{type(exc).__name__}: {exc}")
        return StoreError(code="unavailable", message=UNAVAILABLE_MESSAGE)
    except Exception as exc:
        log.exception("store_op_failed", op=op, tenant=getattr(request, "tenant", ""))
        return StoreError(code="internal", message=f"{op} failed: {type(exc).__name__} (see the store's log)")
