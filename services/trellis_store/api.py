"""The state store's request/reply API: every request and answer, as msgspec Structs.

A caller (the gateway, the compiler, the CLI) sends one request on `trellis.store.api.<op>` (the op
is the request's tag, dots kept: `trellis.store.api.run.get`) and gets one `Reply`. The `api` token
keeps store subjects out of the streams: `trellis.store.run.get` would match TRELLIS_EVENTS'
`trellis.*.run.>` (and `logs.get` TRELLIS_LOGS'), so JetStream would store the request and answer
it with a PubAck racing the store's reply. Every request but
`TenantCreate` and `TokenVerify` names its tenant, and every query is filtered by it: another
tenant's object answers `not_found`, never its data. These Structs are the one definition of
the store's API; the gateway's OpenAPI document is generated from the ones it returns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from trellis_core.events import Problem, SourceFile
from trellis_core.workflow import Action, Workflow
from trellis_store.drift_view import EnvironmentDrift
from trellis_templates.schedules import EffectiveSchedule

Role = Literal["viewer", "operator", "admin"]
EnvironmentStatus = Literal["new", "deploying", "deployed", "failed", "destroying", "destroyed"]
RunRowStatus = Literal["requested", "rejected", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
ActivityRowStatus = Literal[
    "pending", "dispatched", "running", "waiting", "succeeded", "failed", "cancelled", "skipped", "lost", "timed_out"
]
ErrorCode = Literal["not_found", "conflict", "invalid", "precondition_failed", "forbidden", "unavailable", "internal"]

SUBJECT_PREFIX = "trellis.store.api."
MASK = "********"


class _Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of every request; the tag is the op (`run.get`), the subject's tail."""


class _TenantRequest(_Request, frozen=True, kw_only=True):
    tenant: str


class StoreError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why a request was refused: `path` names the field (`variables.region`) when one was wrong."""

    code: ErrorCode
    message: str
    path: str = ""
    problems: tuple[Problem, ...] = ()


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Exactly one of `result` (the op's answer type, encoded) and `error`. `result` is empty (falsy)
    when absent: msgspec decodes no `Raw | None` (an answer object would be refused)."""

    result: msgspec.Raw = msgspec.Raw(b"")
    error: StoreError | None = None


# ---- tenants and tokens -----------------------------------------------------------------------


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who a bearer token speaks for."""

    tenant: str
    role: Role
    user: str  # an e-mail or a name: what approvals' `emails` are checked against
    token_id: str


class TenantCreate(_Request, frozen=True, kw_only=True, tag="tenant.create"):
    """Create a tenant and its first admin token (`conflict` if the tenant exists)."""

    name: str
    admin_user: str = "admin"
    actor: str = "platform-admin"


class TokenCreate(_TenantRequest, frozen=True, kw_only=True, tag="token.create"):
    role: Role
    user: str
    actor: str = ""


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A new token: shown once, stored only as its SHA-256."""

    tenant: str
    role: Role
    user: str
    token_id: str
    token: str


class TokenVerify(_Request, frozen=True, kw_only=True, tag="token.verify"):
    """`token_sha256` is the hex SHA-256 of the presented token; answers a Principal or not_found."""

    token_sha256: str


# ---- templates --------------------------------------------------------------------------------


class TemplateDocument(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    name: str
    version: str
    description: str = ""
    path: str = ""  # the file it came from in the published bundle
    digest: str = ""  # sha256 of its canonical content: the same version must keep it
    published_at: datetime | None = None
    published_by: str = ""


class TemplatePublish(_TenantRequest, frozen=True, kw_only=True, tag="template.publish"):
    """Store every document of one validated bundle, all or none; `conflict` names each published
    version whose content differs. Re-publishing identical documents is a no-op."""

    sources: tuple[SourceFile, ...]
    documents: tuple[TemplateDocument, ...]
    actor: str = ""
    remote: str = ""


class TemplateList(_TenantRequest, frozen=True, kw_only=True, tag="template.list"):
    kind: str = ""
    name: str = ""


class TemplateBundleGet(_TenantRequest, frozen=True, kw_only=True, tag="template.bundle"):
    """The sources published together with EnvironmentTemplate `name`@`version`: a run's bundle."""

    name: str
    version: str


class TemplateBundle(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    sources: tuple[SourceFile, ...]


class Documents(msgspec.Struct, frozen=True, kw_only=True):
    documents: tuple[TemplateDocument, ...]


# ---- environments -----------------------------------------------------------------------------


class TemplateRef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str


class EnvironmentPut(_TenantRequest, frozen=True, kw_only=True, tag="environment.put"):
    """Create or update. `variables` as the caller gave them; `sensitive` names the ones stored sealed
    (never in clear). `if_match` is the ETag the caller read (empty: create only if absent, or any
    update when `force`)."""

    name: str
    template: TemplateRef
    variables: dict[str, str] = {}
    sensitive: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    if_match: str = ""
    force: bool = False  # replace an existing environment without `if_match` (the CLI's `env apply`)
    actor: str = ""
    remote: str = ""


class EnvironmentGet(_TenantRequest, frozen=True, kw_only=True, tag="environment.get"):
    name: str
    reveal: bool = False  # only for the gateway starting a run: sealed values opened for the request


class EnvironmentList(_TenantRequest, frozen=True, kw_only=True, tag="environment.list"):
    limit: int = 100
    after: str = ""  # the last name of the previous page


class EnvironmentLink(msgspec.Struct, frozen=True, kw_only=True):
    """One environment reading another's outputs through a static resource (static-resources.md)."""

    environment: str  # the other environment: the one read (dependsOn) or the reader (dependents)
    resource: str  # the static resource of kind environment, in the reader's template


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    """An environment as the API shows it: sensitive variables and outputs read `********`
    unless the request asked to `reveal` them. `depends_on`/`dependents` (omitted when empty):
    the environments it reads through static resources, and those reading it."""

    name: str
    template: TemplateRef
    status: EnvironmentStatus
    etag: str
    variables: dict[str, str] = {}
    sensitive: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    outputs: dict[str, dict[str, Any]] = {}
    last_run_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    depends_on: tuple[EnvironmentLink, ...] | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="dependsOn")
    dependents: tuple[EnvironmentLink, ...] | msgspec.UnsetType = msgspec.UNSET
    drift: EnvironmentDrift | msgspec.UnsetType = msgspec.UNSET  # the last drift check; omitted: none


class WebhookRotate(_TenantRequest, frozen=True, kw_only=True, tag="webhook.rotate"):
    """Set a new webhook secret for `environment` (returned once, stored hashed)."""

    environment: str
    actor: str = ""
    remote: str = ""


class WebhookSecret(msgspec.Struct, frozen=True, kw_only=True):
    environment: str
    secret: str


class WebhookResolve(_Request, frozen=True, kw_only=True, tag="webhook.resolve"):
    """Which tenant's `environment` the secret (hex SHA-256 of it) belongs to; not_found if none."""

    environment: str
    secret_sha256: str


class WebhookTarget(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    environment: str


# ---- runs ---------------------------------------------------------------------------------------


class RunCreate(_TenantRequest, frozen=True, kw_only=True, tag="run.create"):
    """Record a requested run before it is published. With an `idempotency_key` already used for the
    same request, answers the first run (`created` false); used for another request: `conflict`."""

    run_id: str
    environment: str
    action: Action
    requested_by: str = ""
    idempotency_key: str = ""
    request_digest: str = ""  # sha256 of the request's body, to tell a retry from a different request
    purpose: str = ""  # RunPurpose.label: "", "action:<name>", "force-destroy", "drift", "schedule:<name>", "expiring"
    remote: str = ""


class RunCreated(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    created: bool


class RunGet(_TenantRequest, frozen=True, kw_only=True, tag="run.get"):
    run_id: str
    with_workflow: bool = False


class RunList(_TenantRequest, frozen=True, kw_only=True, tag="run.list"):
    environment: str = ""
    limit: int = 50
    before: str = ""  # a run id: runs requested before it (ids are time-ordered uuid7s)


class ActivityRow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    kind: str
    status: ActivityRowStatus
    resource: str = ""
    stage: str = ""
    depends_on: tuple[str, ...] = ()
    attempts: int = 0
    agent: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: dict[str, Any] = {}
    reason: str = ""
    exit_code: int | None = None


class RunSummary(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    run_id: str
    environment: str
    action: Action
    status: RunRowStatus
    requested_by: str = ""
    requested_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    purpose: str = ""  # RunPurpose.label: "", "action:<name>", "force-destroy", "drift", "schedule:<name>", "expiring"


class RunDetail(RunSummary, frozen=True, kw_only=True, omit_defaults=True):
    activities: tuple[ActivityRow, ...] = ()
    errors: tuple[Problem, ...] = ()  # a rejected run's problems
    outputs: dict[str, dict[str, Any]] = {}
    workflow: Workflow | None = None


class Runs(msgspec.Struct, frozen=True, kw_only=True):
    runs: tuple[RunSummary, ...]


class EnvironmentListed(Environment, frozen=True, kw_only=True):
    """An environment as the list shows it: also its newest run of any kind, whatever it is doing
    (`latest_run`: a run in progress shows at once, where `last_run_id` changes when a run ends),
    and when its time to live ends (`expires_at`; None: no time to live, or not armed yet)."""

    latest_run: RunSummary | None = None
    expires_at: datetime | None = None


class Environments(msgspec.Struct, frozen=True, kw_only=True):
    environments: tuple[EnvironmentListed, ...]


# ---- logs ---------------------------------------------------------------------------------------


class LogsGet(_TenantRequest, frozen=True, kw_only=True, tag="logs.get"):
    run_id: str
    activity_id: str = ""
    after: int = 0  # the `position` of the last chunk already seen
    limit: int = 1000


class LogChunkRow(msgspec.Struct, frozen=True, kw_only=True):
    position: int  # the chunk's TRELLIS_LOGS stream sequence: a total order, and the SSE event id
    activity_id: str
    attempt: int
    sequence: int
    stream: str
    data: str
    occurred_at: datetime


class LogChunks(msgspec.Struct, frozen=True, kw_only=True):
    chunks: tuple[LogChunkRow, ...]


# ---- approvals ----------------------------------------------------------------------------------


class ApprovalGet(_TenantRequest, frozen=True, kw_only=True, tag="approval.get"):
    run_id: str
    activity_id: str


class Approval(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    run_id: str
    activity_id: str
    attempt: int
    approvers: tuple[str, ...] = ()  # empty: any operator or admin of the tenant
    requested_at: datetime | None = None
    expires_at: datetime | None = None
    decision: Literal["", "approved", "rejected"] = ""
    decided_by: str = ""
    comment: str = ""


class CallbackRedeem(_TenantRequest, frozen=True, kw_only=True, tag="callback.redeem"):
    """Mark a signed callback token used; `conflict` if it was used before (a replay)."""

    token_id: str
    expires_at: datetime


class Redeemed(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str


# ---- audit --------------------------------------------------------------------------------------


class AuditRecord(_TenantRequest, frozen=True, kw_only=True, tag="audit.record"):
    """Something done through the API (or refused there), kept with who, what, when and from where."""

    actor: str
    action: str  # `environment.put`, `run.create`, `approval.refused`, ...
    target: str = ""
    detail: dict[str, Any] = {}
    remote: str = ""


class AuditList(_TenantRequest, frozen=True, kw_only=True, tag="audit.list"):
    limit: int = 100


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: int
    at: datetime
    actor: str
    action: str
    target: str = ""
    detail: dict[str, Any] = {}
    remote: str = ""


class AuditEntries(msgspec.Struct, frozen=True, kw_only=True):
    entries: tuple[AuditEntry, ...]


# ---- the scheduler's and compiler's questions ---------------------------------------------------


class DeployRecordGet(_TenantRequest, frozen=True, kw_only=True, tag="deploy.record"):
    """The last successful deploy of `environment` (outputs and the variables it was asked with),
    after the projection has caught up with every run event published before the request."""

    environment: str


class DeployRecord(msgspec.Struct, frozen=True, kw_only=True):
    """`deployed` false: never deployed, or destroyed since (outputs and variables are then empty)."""

    deployed: bool
    run_id: str = ""
    outputs: dict[str, dict[str, Any]] = {}
    variables: dict[str, str] = {}
    dependents: tuple[str, ...] = ()  # environments reading this one's outputs: a destroy is refused


class LinkedOutputsGet(_TenantRequest, frozen=True, kw_only=True, tag="linked.outputs"):
    """The outputs of `environments` (static resources of kind environment read them), after the
    projection has caught up with every run event published before the request."""

    environments: tuple[str, ...]


class LinkedState(msgspec.Struct, frozen=True, kw_only=True):
    deployed: bool
    outputs: dict[str, dict[str, Any]] = {}  # resource -> output -> entry (sensitive ones: tokens)


class LinkedOutputs(msgspec.Struct, frozen=True, kw_only=True):
    environments: dict[str, LinkedState]  # an environment of the tenant that does not exist is absent


class Ping(_Request, frozen=True, kw_only=True, tag="ping"):
    """Readiness: answers `Pong` when PostgreSQL answers and migrations are applied."""


class Pong(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: int
    projected_events: int  # the TRELLIS_EVENTS sequence projected so far
    projected_logs: int


class Ok(msgspec.Struct, frozen=True, kw_only=True):
    pass


# ---- sealing, keys and agent credentials (docs/security.md) -------------------------------------


class SealValues(_TenantRequest, frozen=True, kw_only=True, tag="seal"):
    """Seal `values` (name -> plain text) under the tenant's current data key: how the CLI and
    the gateway seal a sensitive value where it enters. A value already sealed stays as it is."""

    values: dict[str, str]


class Sealed(msgspec.Struct, frozen=True, kw_only=True):
    values: dict[str, str]  # name -> sealed token


class KeysReseal(_Request, frozen=True, kw_only=True, tag="keys.reseal"):
    """Re-seal every stored token under the current master key (`trellis keys rotate`), for one
    tenant or (`tenant` empty) all of them; audited."""

    tenant: str = ""
    actor: str = "platform-admin"


class Resealed(msgspec.Struct, frozen=True, kw_only=True):
    tenants: int  # tenants whose stored values were looked at
    values: int  # tokens sealed again under the current key
    current: str  # the current key id
    still_sealed_with: tuple[str, ...] = ()  # retired key ids some stored value still needs (expect none)


class AgentCredentialsCreate(_TenantRequest, frozen=True, kw_only=True, tag="agent.credentials.create"):
    """A new nkey for the tenant's agents: the store keeps its public key (nats-server's
    authorization is generated from those), the seed is in the answer only, once."""

    name: str = "agent"  # a label: which cluster or pool these credentials are for
    actor: str = ""


class AgentCredentials(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    name: str
    public_key: str  # U...: the nkey user nats-server knows
    seed: str  # SU...: shown once, never stored
    inbox_prefix: str  # what the agent connects with (trellis_core.subjects.inbox_prefix)


class AgentCredentialsRevoke(_TenantRequest, frozen=True, kw_only=True, tag="agent.credentials.revoke"):
    public_key: str
    actor: str = ""


class NatsUser(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    name: str
    public_key: str


class NatsUsersList(_Request, frozen=True, kw_only=True, tag="nats.users"):
    """Every tenant's agent nkeys not revoked: what nats-server's authorization is made from."""


class NatsUsers(msgspec.Struct, frozen=True, kw_only=True):
    users: tuple[NatsUser, ...]


# ---- managed OpenTofu/Terraform state (docs/state-backend.md) ------------------------------------


class _TfStateRequest(_TenantRequest, frozen=True, kw_only=True):
    """One resource's state. `run_id`: the run whose credential the gateway verified (the store
    refuses it unless that run of this environment is still going); empty for an operator's bearer
    token, which the gateway has checked itself."""

    environment: str
    resource: str
    run_id: str = ""


class TfStateGet(_TfStateRequest, frozen=True, kw_only=True, tag="tfstate.get"):
    pass


class TfStateData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The newest state of a resource; `found` false when none was saved (or it was deleted)."""

    found: bool
    state: bytes = b""
    serial: int = 0
    lineage: str = ""
    saved_at: datetime | None = None
    run_id: str = ""


class TfStatePut(_TfStateRequest, frozen=True, kw_only=True, tag="tfstate.put"):
    """Save a new state (a new history row). `lock_id`: the `?ID=` the client sent; while a lock is
    held the write needs its id."""

    state: bytes
    lock_id: str = ""


class TfStateDelete(_TfStateRequest, frozen=True, kw_only=True, tag="tfstate.delete"):
    lock_id: str = ""


class TfStateLock(_TfStateRequest, frozen=True, kw_only=True, tag="tfstate.lock"):
    """Take the resource's lock with the client's lock info (its `ID` is the lock id)."""

    lock_id: str
    info: dict[str, Any] = {}


class TfStateUnlock(_TfStateRequest, frozen=True, kw_only=True, tag="tfstate.unlock"):
    """Release the lock `lock_id`. `force` (an admin's `trellis env state --unlock`): release it
    whoever holds it, if its id is `lock_id`; audited."""

    lock_id: str
    force: bool = False
    actor: str = ""
    remote: str = ""


class TfLockHolder(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A held lock, with what became of the run holding it: `ended` when that run is over (it
    crashed or was cancelled holding the lock, which stays until someone unlocks it)."""

    lock_id: str
    info: dict[str, Any] = {}
    locked_at: datetime | None = None
    run_id: str = ""
    run_status: str = ""
    run_finished_at: datetime | None = None
    ended: bool = False
    hint: str = ""  # how to release a lock its ended run left behind


class TfStateWritten(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Whether a write, lock or unlock was done; when refused, the lock in the way (`holder`), or
    none (`missing`: unlocking a lock that is not held)."""

    done: bool
    holder: TfLockHolder | None = None


class TfStateShow(_TenantRequest, frozen=True, kw_only=True, tag="tfstate.show"):
    """What an operator sees of an environment's managed state: each resource (or `resource`)
    with its newest save, history and lock."""

    environment: str
    resource: str = ""


class TfStateVersion(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    serial: int
    lineage: str = ""
    saved_at: datetime | None = None
    run_id: str = ""
    actor: str = ""
    deleted: bool = False
    size: int = 0


class TfStateResource(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    resource: str
    history: tuple[TfStateVersion, ...] = ()  # newest first
    lock: TfLockHolder | None = None


class TfStateSummary(msgspec.Struct, frozen=True, kw_only=True):
    environment: str
    resources: tuple[TfStateResource, ...]
# ---- schedules (trellis_store.schedules, docs/schedules.md) -------------------------------------


class ScheduleStale(_Request, frozen=True, kw_only=True, tag="schedule.stale"):
    """Environments, of every tenant, whose schedules were not synced at their current revision."""

    limit: int = 100


class StaleEnvironment(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    name: str
    revision: int


class StaleEnvironments(msgspec.Struct, frozen=True, kw_only=True):
    environments: tuple[StaleEnvironment, ...]


class SyncedSchedule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    schedule: EffectiveSchedule
    next_due_at: datetime | None = None  # cron: the next slot after `now`; ttl: None (armed by a deploy)


class ScheduleSync(_TenantRequest, frozen=True, kw_only=True, tag="schedule.sync"):
    """The environment's schedules at `revision`: new ones armed, changed ones re-armed, the same
    ones kept (with the Environment's new opt-outs applied), the others removed."""

    environment: str
    revision: int
    schedules: tuple[SyncedSchedule, ...] = ()
    problems: tuple[Problem, ...] = ()  # why some of its schedules do not run
    now: datetime


class ScheduleDue(_Request, frozen=True, kw_only=True, tag="schedule.due"):
    """What the schedule loop has to do at `now`, every tenant: slots due, fired runs not yet
    published, expiries within their warning time. Time to live schedules of environments
    deployed since are armed first."""

    now: datetime
    limit: int = 100


DueReason = Literal["due", "unpublished", "expiring"]


class DueSchedule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    tenant: str
    environment: str
    reason: DueReason
    schedule: EffectiveSchedule
    next_due_at: datetime | None = None
    optout_until: datetime | None = None
    last_due_at: datetime | None = None
    last_run_id: str = ""


class DueSchedules(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    due: tuple[DueSchedule, ...]
    next_due_at: datetime | None = None  # the earliest slot or expiry after `now`: when to look again


class ScheduleClaim(_TenantRequest, frozen=True, kw_only=True, tag="schedule.claim"):
    """Take the firing due at `due_at` (moving next_due_at to `next_due_at`) only if next_due_at
    still is `due_at`; with `run`, record that run in the same transaction. `claimed` false: another
    replica took it, or the schedule changed."""

    environment: str
    name: str
    due_at: datetime
    next_due_at: datetime | None = None
    run: RunCreate | None = None  # None: the slot is skipped (an opt-out)
    now: datetime


class ScheduleClaimed(msgspec.Struct, frozen=True, kw_only=True):
    claimed: bool
    run_id: str = ""


class ScheduleMark(_TenantRequest, frozen=True, kw_only=True, tag="schedule.mark"):
    """`published`: `run_id` is on the bus (or given up on); `warned`: the expiry at `due_at` was announced."""

    environment: str
    name: str
    mark: Literal["published", "warned"]
    run_id: str = ""
    due_at: datetime | None = None


class ScheduleList(_TenantRequest, frozen=True, kw_only=True, tag="schedule.list"):
    environment: str


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One schedule of an environment as the API shows it."""

    name: str
    type: str
    kind: Literal["cron", "ttl"]
    cron: str = ""
    timezone: str = ""
    time_to_live: str = ""
    staggered: bool = False
    next_due_at: datetime | None = None  # cron: the next firing (before opt-outs); ttl: see expires_at
    expires_at: datetime | None = None  # ttl: when the destroy starts (None: not deployed yet)
    opted_out_until: datetime | None = None
    last_fired_at: datetime | None = None
    last_run_id: str = ""
    optouts: int = 0  # opt-outs used: the Environment's and the API's
    allow_opt_out: bool = False
    max_allowed_duration: str = ""
    max_allowed_times: int = 0


class ScheduleStates(msgspec.Struct, frozen=True, kw_only=True):
    environment: str
    schedules: tuple[ScheduleState, ...]
    problems: tuple[Problem, ...] = ()
    synced: bool = False  # false: the schedule loop has not read this revision of the environment yet


class ScheduleExtend(_TenantRequest, frozen=True, kw_only=True, tag="schedule.extend"):
    """Postpone schedule `name` (empty: the environment's time to live) by `seconds`, within its
    optOutOptions (`invalid` naming the limit otherwise); audited."""

    environment: str
    name: str = ""
    seconds: int
    admin: bool = False  # the caller is an admin (optOutOptions.approval asks for one)
    actor: str = ""
    remote: str = ""
    now: datetime


StoreRequest = (
    TenantCreate
    | TokenCreate
    | TokenVerify
    | TemplatePublish
    | TemplateList
    | TemplateBundleGet
    | EnvironmentPut
    | EnvironmentGet
    | EnvironmentList
    | WebhookRotate
    | WebhookResolve
    | RunCreate
    | RunGet
    | RunList
    | LogsGet
    | ApprovalGet
    | CallbackRedeem
    | AuditRecord
    | AuditList
    | DeployRecordGet
    | Ping
    | SealValues
    | KeysReseal
    | AgentCredentialsCreate
    | AgentCredentialsRevoke
    | NatsUsersList
    | TfStateGet
    | TfStatePut
    | TfStateDelete
    | TfStateLock
    | TfStateUnlock
    | TfStateShow
    | LinkedOutputsGet
    | ScheduleStale
    | ScheduleSync
    | ScheduleDue
    | ScheduleClaim
    | ScheduleMark
    | ScheduleList
    | ScheduleExtend
)

# What each op answers (the `result` of its Reply).
RESULT_TYPES: dict[type[msgspec.Struct], type[msgspec.Struct]] = {
    TenantCreate: IssuedToken,
    TokenCreate: IssuedToken,
    TokenVerify: Principal,
    TemplatePublish: Documents,
    TemplateList: Documents,
    TemplateBundleGet: TemplateBundle,
    EnvironmentPut: Environment,
    EnvironmentGet: Environment,
    EnvironmentList: Environments,
    WebhookRotate: WebhookSecret,
    WebhookResolve: WebhookTarget,
    RunCreate: RunCreated,
    RunGet: RunDetail,
    RunList: Runs,
    LogsGet: LogChunks,
    ApprovalGet: Approval,
    CallbackRedeem: Redeemed,
    AuditRecord: Ok,
    AuditList: AuditEntries,
    DeployRecordGet: DeployRecord,
    Ping: Pong,
    SealValues: Sealed,
    KeysReseal: Resealed,
    AgentCredentialsCreate: AgentCredentials,
    AgentCredentialsRevoke: Ok,
    NatsUsersList: NatsUsers,
    TfStateGet: TfStateData,
    TfStatePut: TfStateWritten,
    TfStateDelete: TfStateWritten,
    TfStateLock: TfStateWritten,
    TfStateUnlock: TfStateWritten,
    TfStateShow: TfStateSummary,
    LinkedOutputsGet: LinkedOutputs,
    ScheduleStale: StaleEnvironments,
    ScheduleSync: Ok,
    ScheduleDue: DueSchedules,
    ScheduleClaim: ScheduleClaimed,
    ScheduleMark: Ok,
    ScheduleList: ScheduleStates,
    ScheduleExtend: ScheduleState,
}


def op_of(request: type[msgspec.Struct] | msgspec.Struct) -> str:
    return str(request.__struct_config__.tag)


def subject_of(request: type[msgspec.Struct] | msgspec.Struct) -> str:
    return SUBJECT_PREFIX + op_of(request)
