"""Every message on the bus, catalog v1: one tagged union of msgspec Structs.

Run events travel on `trellis.<tenant>.run.<run>.<kind>` where `<kind>` is the event's tag.
Work items and control commands are not run events; they are defined here too so that no
message is defined anywhere else. `trellis schemas export` writes their JSON Schema.
"""

from __future__ import annotations

import hashlib
import typing
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from trellis_core.ids import uuid7
from trellis_core.workflow import NO_PURPOSE, Action, Activity, RunPurpose, Workflow

SCHEMA_VERSION = 1

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
TerminalRunStatus = Literal["succeeded", "failed", "cancelled"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One template problem, with where it is: `file:line:col: path: message (hint)`."""

    message: str
    file: str = ""
    line: int = 0
    column: int = 0
    path: str = ""
    hint: str = ""
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}: " if self.file else ""
        path = f"{self.path}: " if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{path}{self.message}{hint}"


class SourceFile(msgspec.Struct, frozen=True, kw_only=True):
    """One template file of a run request's bundle, as text."""

    path: str
    text: str


class BundleFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file beside the templates, shipped with the run: its workspace-relative POSIX path,
    its `st_mode` (a regular file's type and permission bits; anything else is refused) and its bytes."""

    path: str
    mode: int = 0o100644
    data: bytes = b""


class BundleArchive(msgspec.Struct, frozen=True, kw_only=True):
    """A run's files as stored once in the bundle object store, under the digest of these bytes."""

    files: tuple[BundleFile, ...]
    schema_version: int = SCHEMA_VERSION


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every run event carries. `msg_id` is its identity for JetStream dedupe."""

    tenant: str
    run_id: str
    event_id: str = msgspec.field(default_factory=uuid7)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    @property
    def kind(self) -> str:
        """The event's tag (`activity.completed`): also the tail of its subject."""
        return str(self.__struct_config__.tag)

    def msg_id(self) -> str:
        return f"{self.tenant}/{self.run_id}/-/-/{self.kind}"


class ActivityEvent(Event, frozen=True, kw_only=True):
    activity_id: str
    attempt: int

    def msg_id(self) -> str:
        return f"{self.tenant}/{self.run_id}/{self.activity_id}/{self.attempt}/{self.kind}"


# ---- runs -------------------------------------------------------------------------------------


class RunRequested(Event, frozen=True, kw_only=True, tag="run.requested"):
    """Someone asked for a run: the template bundle, the environment, the inputs."""

    environment: str
    action: Action = "deploy"
    sources: tuple[SourceFile, ...] = ()
    variables: dict[str, str] = {}
    requested_by: str = ""
    files: tuple[BundleFile, ...] = ()  # the non-template files beside the templates
    purpose: RunPurpose = NO_PURPOSE  # a day-2 action, a force-destroy or a drift check
    # What started it, as templates read `trigger.*`: {"type": "api" | "webhook" | "schedule" | "cli",
    # "payload": <the webhook's or API call's JSON body>, "schedule": <name>}; empty: not given.
    trigger: dict[str, Any] = {}


class RunCompiled(Event, frozen=True, kw_only=True, tag="run.compiled"):
    """The compiled run. A large workflow is stored once in the workflow object store:
    `workflow_ref` names it by digest and `workflow` holds only its header (no activities)."""

    workflow: Workflow
    requested_by: str = ""
    workflow_ref: str = ""


class RunRejected(Event, frozen=True, kw_only=True, tag="run.rejected"):
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...] = ()


class RunQueued(Event, frozen=True, kw_only=True, tag="run.queued"):
    """The run waits; `reason` says why (another run holds the environment's lock)."""

    reason: str


class RunStarted(Event, frozen=True, kw_only=True, tag="run.started"):
    """The scheduler took the run (it holds the environment's lock)."""


class RunCancelRequested(Event, frozen=True, kw_only=True, tag="run.cancel_requested"):
    reason: str = ""
    requested_by: str = ""


class RunCompleted(Event, frozen=True, kw_only=True, tag="run.completed"):
    status: TerminalRunStatus
    message: str = ""
    outputs: dict[str, dict[str, Any]] = {}  # resource -> output name -> {"value": ...}


# ---- activities -------------------------------------------------------------------------------


class ActivityDispatched(ActivityEvent, frozen=True, kw_only=True, tag="activity.dispatched"):
    pool: str
    agent: str = ""  # set when pinned to the agent holding the workspace


class ActivityStarted(ActivityEvent, frozen=True, kw_only=True, tag="activity.started"):
    agent: str


class ActivityHeartbeat(ActivityEvent, frozen=True, kw_only=True, tag="activity.heartbeat"):
    agent: str
    sequence: int = 0

    def msg_id(self) -> str:
        return f"{super().msg_id()}/{self.sequence}"


class ActivityLogChunk(ActivityEvent, frozen=True, kw_only=True, tag="activity.log"):
    """Lines of output, numbered per activity attempt from 0 so a reader can detect gaps."""

    sequence: int
    stream: Literal["stdout", "stderr", "system"] = "stdout"
    data: str

    def msg_id(self) -> str:
        return f"{super().msg_id()}/{self.sequence}"


class ActivityCompleted(ActivityEvent, frozen=True, kw_only=True, tag="activity.completed"):
    outputs: dict[str, Any] = {}
    exit_code: int | None = None


class ActivityFailed(ActivityEvent, frozen=True, kw_only=True, tag="activity.failed"):
    """The attempt failed. `retryable` false means retrying cannot help (a bad spec)."""

    reason: str
    exit_code: int | None = None
    retryable: bool = True
    timed_out: bool = False


class ActivityCancelled(ActivityEvent, frozen=True, kw_only=True, tag="activity.cancelled"):
    reason: str = ""


class ActivityLost(ActivityEvent, frozen=True, kw_only=True, tag="activity.lost"):
    """The scheduler heard no heartbeat in time: the agent is presumed dead."""

    agent: str = ""


class ActivityTimedOut(ActivityEvent, frozen=True, kw_only=True, tag="activity.timed_out"):
    timeout_seconds: float


class ApprovalRequested(ActivityEvent, frozen=True, kw_only=True, tag="approval.requested"):
    approvers: tuple[str, ...] = ()
    expires_at: datetime | None = None


class ApprovalDecided(ActivityEvent, frozen=True, kw_only=True, tag="approval.decided"):
    decision: Literal["approved", "rejected"]
    decided_by: str = ""
    comment: str = ""


RunEvent = (
    RunRequested
    | RunCompiled
    | RunRejected
    | RunQueued
    | RunStarted
    | RunCancelRequested
    | RunCompleted
    | ActivityDispatched
    | ActivityStarted
    | ActivityHeartbeat
    | ActivityLogChunk
    | ActivityCompleted
    | ActivityFailed
    | ActivityCancelled
    | ActivityLost
    | ActivityTimedOut
    | ApprovalRequested
    | ApprovalDecided
)

RUN_EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(RunEvent)


# ---- work and control -------------------------------------------------------------------------


class WorkItem(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="work.item"):
    """An activity handed to an agent, its late-bound expressions already rendered."""

    tenant: str
    run_id: str
    environment: str
    action: Action
    attempt: int
    activity: Activity
    schema_version: int = SCHEMA_VERSION
    # The token an agent appends to the subjects of this attempt's events: the scheduler partition
    # that walks the run (docs/scaling.md). Empty with one partition: the subjects are as ever.
    route: str = ""

    def msg_id(self) -> str:
        return f"{self.tenant}/{self.run_id}/{self.activity.id}/{self.attempt}/work"


class CancelActivity(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="control.cancel"):
    tenant: str
    run_id: str
    activity_id: str
    attempt: int
    reason: str = ""
    schema_version: int = SCHEMA_VERSION


ControlCommand = CancelActivity


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="deadletter"):
    """A message a consumer gave up on, with why, where it came from and its bytes."""

    subject: str
    stream: str
    consumer: str
    reason: str
    deliveries: int
    data: str  # the original payload, decoded as UTF-8 with replacement
    headers: dict[str, str] = {}
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


# ---- encoding ---------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_run_event_decoder: msgspec.json.Decoder[RunEvent] = msgspec.json.Decoder(RunEvent)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_run_event(data: bytes) -> RunEvent:
    return _run_event_decoder.decode(data)


_bundle_encoder = msgspec.msgpack.Encoder()
_bundle_decoder = msgspec.msgpack.Decoder(BundleArchive)


def pack_bundle(files: typing.Iterable[BundleFile]) -> tuple[str, bytes]:
    """The stored form of a run's files (sorted by path) and its digest, `sha256:<hex>` of those bytes."""
    blob = _bundle_encoder.encode(BundleArchive(files=tuple(sorted(files, key=lambda f: f.path))))
    return bundle_digest(blob), blob


def bundle_digest(blob: bytes) -> str:
    return f"sha256:{hashlib.sha256(blob).hexdigest()}"


def unpack_bundle(blob: bytes) -> tuple[BundleFile, ...]:
    """The files of a stored bundle; raises msgspec.DecodeError or ValidationError if it is not one."""
    return _bundle_decoder.decode(blob).files


_ALL_TYPES: tuple[type[msgspec.Struct], ...] = (*RUN_EVENT_TYPES, WorkItem, CancelActivity, DeadLetter)
EVENT_TYPES_BY_TAG: dict[str, type[msgspec.Struct]] = {str(t.__struct_config__.tag): t for t in _ALL_TYPES}
