"""What one batch of run events and log chunks writes: pure translation to rows, and the SQL.

Every write is keyed (events by stream sequence and event id, log chunks by position and their
own numbering, rows by their primary key) and every status change is guarded by `status_seq`:
only an event with a later stream sequence changes a row, so a replay or a redelivery, in any
order, leaves the rows as they were. `Batch.add_event` takes events in stream order; the
statements of `write` run in an order where a run's row exists before its environment reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityDispatched,
    ActivityEvent,
    ActivityFailed,
    ActivityHeartbeat,
    ActivityLogChunk,
    ActivityLost,
    ActivityStarted,
    ActivityTimedOut,
    ApprovalDecided,
    ApprovalRequested,
    RunCancelRequested,
    RunCompiled,
    RunCompleted,
    RunEvent,
    RunQueued,
    RunRejected,
    RunRequested,
    RunStarted,
    encode,
)
from trellis_core.sealed import mask_tokens
from trellis_core.workflow import Workflow
from trellis_store import drift_rows
from trellis_store.outputs import Seal, masked_last_deploy, masked_outputs, seal_outputs, seal_resources

MASK = "********"
# (tenant, plain text) -> that tenant's token: how the projection seals a sensitive output an old
# agent sent in clear. None (a projection without keys: tests) masks it instead.
TenantSeal = Callable[[str, str], str]
_json = msgspec.json.Encoder()

# ---- SQL ----------------------------------------------------------------------------------------

TENANTS = "INSERT INTO tenants (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"

EVENTS = """
INSERT INTO events (seq, event_id, tenant, run_id, kind, activity_id, attempt, occurred_at, body)
SELECT s, i, t, r, k, a, n, o, b::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
            $8::timestamptz[], $9::text[]) AS u(s, i, t, r, k, a, n, o, b)
ON CONFLICT DO NOTHING
"""

LOGS = """
INSERT INTO log_chunks (position, tenant, run_id, activity_id, attempt, sequence, stream, data, occurred_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[], $7::text[],
                     $8::text[], $9::timestamptz[])
ON CONFLICT DO NOTHING
"""

_NEWER = "r.status_seq < excluded.status_seq AND r.status NOT IN ('succeeded', 'failed', 'cancelled', 'rejected')"
RUNS = f"""
INSERT INTO runs AS r (tenant, run_id, environment, action, status, status_seq, requested_by, requested_at,
                       started_at, finished_at, message, errors, outputs, purpose)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13::jsonb, $14)
ON CONFLICT (tenant, run_id) DO UPDATE SET
    environment  = CASE WHEN r.environment = '' THEN excluded.environment ELSE r.environment END,
    purpose      = CASE WHEN r.purpose = '' THEN excluded.purpose ELSE r.purpose END,
    action       = CASE WHEN r.action = '' THEN excluded.action ELSE r.action END,
    requested_by = CASE WHEN r.requested_by = '' THEN excluded.requested_by ELSE r.requested_by END,
    requested_at = COALESCE(r.requested_at, excluded.requested_at),
    started_at   = COALESCE(r.started_at, excluded.started_at),
    finished_at  = COALESCE(r.finished_at, excluded.finished_at),
    status       = CASE WHEN {_NEWER} THEN excluded.status ELSE r.status END,
    message      = CASE WHEN {_NEWER} THEN excluded.message ELSE r.message END,
    errors       = CASE WHEN {_NEWER} AND excluded.errors <> '[]' THEN excluded.errors ELSE r.errors END,
    outputs      = CASE WHEN {_NEWER} AND excluded.outputs <> '{{}}' THEN excluded.outputs ELSE r.outputs END,
    status_seq   = GREATEST(r.status_seq, excluded.status_seq)
"""

RUN_WORKFLOW = "UPDATE runs SET workflow = $3::jsonb, variables = $4::jsonb WHERE tenant = $1 AND run_id = $2"

# Rows of a run already finished (its end written first: replicas, redeliveries) start skipped.
COMPILED_ACTIVITIES = """
INSERT INTO activities (tenant, run_id, activity_id, ordinal, kind, resource, stage, depends_on, status)
SELECT $1, $2, u.id, u.ord, u.kind, u.res, u.stage, ARRAY(SELECT jsonb_array_elements_text(u.deps::jsonb)),
       CASE WHEN EXISTS (SELECT 1 FROM runs WHERE tenant = $1 AND run_id = $2
                         AND status IN ('succeeded', 'failed', 'cancelled')) THEN 'skipped' ELSE 'pending' END
FROM unnest($3::text[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[]) AS u(id, ord, kind, res, stage, deps)
ON CONFLICT (tenant, run_id, activity_id) DO UPDATE SET
    ordinal = excluded.ordinal, kind = excluded.kind, resource = excluded.resource, stage = excluded.stage,
    depends_on = excluded.depends_on
WHERE activities.kind = ''
"""

_A_NEWER = "a.status_seq < excluded.status_seq"
# One row per activity of the batch (`Batch` folds its events first): `unnest` may not name a row twice.
ACTIVITIES = f"""
INSERT INTO activities AS a (tenant, run_id, activity_id, kind, status, status_seq, attempts, agent, started_at,
                             finished_at, outputs, reason, exit_code)
SELECT t, r, i, '', s, q, n, g, st, fi, o::jsonb, re, x
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::int[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::int[])
     AS u(t, r, i, s, q, n, g, st, fi, o, re, x)
ON CONFLICT (tenant, run_id, activity_id) DO UPDATE SET
    status      = CASE WHEN {_A_NEWER} THEN excluded.status ELSE a.status END,
    agent       = CASE WHEN {_A_NEWER} THEN COALESCE(NULLIF(excluded.agent, ''), a.agent)
                       ELSE COALESCE(NULLIF(a.agent, ''), excluded.agent) END,
    started_at  = CASE WHEN {_A_NEWER} THEN COALESCE(excluded.started_at, a.started_at)
                       ELSE COALESCE(a.started_at, excluded.started_at) END,
    finished_at = CASE WHEN {_A_NEWER} THEN excluded.finished_at ELSE a.finished_at END,
    outputs     = CASE WHEN {_A_NEWER} THEN excluded.outputs ELSE a.outputs END,
    reason      = CASE WHEN {_A_NEWER} THEN excluded.reason ELSE a.reason END,
    exit_code   = CASE WHEN {_A_NEWER} THEN excluded.exit_code ELSE a.exit_code END,
    attempts    = GREATEST(a.attempts, excluded.attempts),
    status_seq  = GREATEST(a.status_seq, excluded.status_seq)
"""

# A run that finished leaves the activities it never reached pending: they were skipped. Their
# status_seq stays: any event of theirs (one written after this, by another replica) says more.
SKIPPED = """
UPDATE activities SET status = 'skipped' WHERE tenant = $1 AND run_id = $2 AND status = 'pending'
"""

APPROVAL_REQUESTED = """
INSERT INTO approvals AS p (tenant, run_id, activity_id, attempt, approvers, requested_at, expires_at, status_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (tenant, run_id, activity_id) DO UPDATE SET
    approvers    = excluded.approvers,
    requested_at = excluded.requested_at,
    expires_at   = excluded.expires_at,
    decision     = CASE WHEN p.attempt < excluded.attempt THEN '' ELSE p.decision END,
    decided_by   = CASE WHEN p.attempt < excluded.attempt THEN '' ELSE p.decided_by END,
    comment      = CASE WHEN p.attempt < excluded.attempt THEN '' ELSE p.comment END,
    decided_at   = CASE WHEN p.attempt < excluded.attempt THEN NULL ELSE p.decided_at END,
    attempt      = excluded.attempt,
    status_seq   = GREATEST(p.status_seq, excluded.status_seq)
WHERE p.attempt < excluded.attempt OR (p.attempt = excluded.attempt AND p.requested_at IS NULL)
"""

# The first decision of an attempt stands (the scheduler acts on the first one too).
APPROVAL_DECIDED = """
INSERT INTO approvals AS p (tenant, run_id, activity_id, attempt, decision, decided_by, comment, decided_at, status_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (tenant, run_id, activity_id) DO UPDATE SET
    attempt = excluded.attempt, decision = excluded.decision, decided_by = excluded.decided_by,
    comment = excluded.comment, decided_at = excluded.decided_at,
    status_seq = GREATEST(p.status_seq, excluded.status_seq)
WHERE p.attempt < excluded.attempt OR (p.attempt = excluded.attempt AND p.decision = '')
"""

ENV_REQUESTED = """
INSERT INTO environments AS e (tenant, name, template_name, template_version, status, status_seq, last_run_id,
                               created_at, updated_at)
VALUES ($1, $2, '', '', $3, $4, $5, $6, $6)
ON CONFLICT (tenant, name) DO UPDATE SET
    status = excluded.status, status_seq = excluded.status_seq, last_run_id = excluded.last_run_id,
    updated_at = excluded.updated_at
WHERE e.status_seq < excluded.status_seq
"""

ENV_TEMPLATE = """
INSERT INTO environments AS e (tenant, name, template_name, template_version, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $5)
ON CONFLICT (tenant, name) DO UPDATE SET
    template_name = excluded.template_name, template_version = excluded.template_version
WHERE e.template_name = ''
"""

# A finished run's outcome on its environment, from the run's row (written first in the batch).
# Run for every run whose request, compilation or end the batch holds: whichever of them is
# written last (replicas, redeliveries) brings the environment to the run's end. Status follows
# the latest run (status_seq); outputs and deployed follow the latest successful one (deploy_seq).
_E_NEWER = "e.status_seq < r.status_seq"
_D_NEWER = "r.status = 'succeeded' AND e.deploy_seq < r.status_seq"
ENV_FINISHED = f"""
UPDATE environments AS e SET
    status = CASE WHEN NOT ({_E_NEWER}) THEN e.status WHEN r.status <> 'succeeded' THEN 'failed'
                  WHEN r.action = 'destroy' THEN 'destroyed' ELSE 'deployed' END,
    last_run_id = CASE WHEN {_E_NEWER} THEN r.run_id ELSE e.last_run_id END,
    updated_at = CASE WHEN {_E_NEWER} THEN COALESCE(r.finished_at, e.updated_at) ELSE e.updated_at END,
    status_seq = GREATEST(e.status_seq, r.status_seq),
    outputs = CASE WHEN NOT ({_D_NEWER}) THEN e.outputs WHEN r.action = 'destroy' THEN '{{}}'::jsonb
                   ELSE r.outputs END,
    deployed = CASE WHEN {_D_NEWER} THEN r.action = 'deploy' ELSE e.deployed END,
    deployed_variables = CASE WHEN NOT ({_D_NEWER}) THEN e.deployed_variables
                              WHEN r.action = 'destroy' THEN '{{}}'::jsonb ELSE r.variables END,
    deploy_run_id = CASE WHEN {_D_NEWER} THEN r.run_id ELSE e.deploy_run_id END,
    deploy_seq = CASE WHEN {_D_NEWER} THEN r.status_seq ELSE e.deploy_seq END
FROM runs AS r
WHERE r.tenant = $1 AND r.run_id = $2 AND r.status IN ('succeeded', 'failed', 'cancelled', 'rejected')
  AND r.purpose IN ('', 'force-destroy')
  AND e.tenant = r.tenant AND e.name = r.environment AND ({_E_NEWER} OR ({_D_NEWER}))
"""

PROGRESS = """
INSERT INTO projection_progress (stream, seq) VALUES ($1, $2)
ON CONFLICT (stream) DO UPDATE SET seq = GREATEST(projection_progress.seq, excluded.seq)
"""


# ---- translation --------------------------------------------------------------------------------


@dataclass
class Batch:
    """The rows one batch writes, gathered per statement."""

    seal: TenantSeal | None = None
    tenants: set[str] = field(default_factory=set)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    logs: list[tuple[Any, ...]] = field(default_factory=list)
    runs: list[tuple[Any, ...]] = field(default_factory=list)
    workflows: list[tuple[Any, ...]] = field(default_factory=list)
    compiled: list[tuple[Any, ...]] = field(default_factory=list)
    activities: dict[tuple[str, str, str], Patch] = field(default_factory=dict)
    skipped: list[tuple[Any, ...]] = field(default_factory=list)
    approvals_requested: list[tuple[Any, ...]] = field(default_factory=list)
    approvals_decided: list[tuple[Any, ...]] = field(default_factory=list)
    env_requested: list[tuple[Any, ...]] = field(default_factory=list)
    env_template: list[tuple[Any, ...]] = field(default_factory=list)
    env_finished: set[tuple[str, str]] = field(default_factory=set)
    drift_compiled: list[tuple[Any, ...]] = field(default_factory=list)  # drift checks' plans (drift_rows)
    drift_finished: set[tuple[str, str]] = field(default_factory=set)  # runs whose drift results to write

    def add_log(self, chunk: ActivityLogChunk, seq: int) -> None:
        self.tenants.add(chunk.tenant)
        self.logs.append(
            (seq, chunk.tenant, chunk.run_id, chunk.activity_id, chunk.attempt, chunk.sequence, chunk.stream,
             chunk.data.replace("\x00", "\ufffd"), chunk.occurred_at)
        )

    def add_event(self, event: RunEvent, seq: int, workflow: Workflow | None = None) -> None:
        """The rows of one event; `workflow` is a by-reference run.compiled's fetched workflow."""
        if isinstance(event, ActivityHeartbeat):
            return  # liveness only: kept neither in the events table nor on the rows
        self.tenants.add(event.tenant)
        seal = self.sealer(event.tenant)
        self.events.append(_event_row(event, seq, seal))
        match event:
            case RunRequested():
                self._run(event, seq, "requested", environment=event.environment, action=event.action,
                          requested_by=event.requested_by, requested_at=event.occurred_at,
                          purpose=event.purpose.label)
                if event.purpose.ordinary:  # a day-2 action or a drift check leaves the status as it is
                    status = "deploying" if event.action == "deploy" else "destroying"
                    self.env_requested.append(
                        (event.tenant, event.environment, status, seq, event.run_id, event.occurred_at)
                    )
                self.env_finished.add((event.tenant, event.run_id))
            case RunCompiled():
                self._compiled(event, seq, workflow or event.workflow)
            case RunRejected():
                message = mask_tokens("; ".join(str(p) for p in event.errors))[:4000]  # display only
                self._run(event, seq, "rejected", finished_at=event.occurred_at, message=message,
                          errors=encode_json(event.errors))
                self.env_finished.add((event.tenant, event.run_id))
            case RunQueued():
                self._run(event, seq, "queued", message=event.reason)
            case RunStarted():
                self._run(event, seq, "running", started_at=event.occurred_at)
            case RunCancelRequested():
                self._run(event, seq, "cancelling", message=event.reason)
            case RunCompleted():
                outputs = encode_json(seal_resources(event.outputs, seal))  # tokens, as deploy.record returns them
                self._run(event, seq, event.status, finished_at=event.occurred_at, message=event.message,
                          outputs=outputs)
                self.skipped.append((event.tenant, event.run_id))
                self.env_finished.add((event.tenant, event.run_id))
                self.drift_finished.add((event.tenant, event.run_id))
            case ApprovalRequested():
                self._activity(event, seq, "waiting")
                self.approvals_requested.append(
                    (event.tenant, event.run_id, event.activity_id, event.attempt, list(event.approvers),
                     event.occurred_at, event.expires_at, seq)
                )
            case ApprovalDecided():
                self.approvals_decided.append(
                    (event.tenant, event.run_id, event.activity_id, event.attempt, event.decision, event.decided_by,
                     event.comment, event.occurred_at, seq)
                )
            case ActivityEvent():
                if (patch := _activity_patch(event, seal)) is not None:
                    self._activity(event, seq, *patch)

    def sealer(self, tenant: str) -> Seal | None:
        """How this batch seals one tenant's values (None: it masks them)."""
        if self.seal is None:
            return None
        seal = self.seal
        return lambda plain: seal(tenant, plain)

    def _run(self, event: RunEvent, seq: int, status: str, **fields: Any) -> None:
        self.runs.append(
            (event.tenant, event.run_id, fields.get("environment", ""), fields.get("action", ""), status, seq,
             fields.get("requested_by", ""), fields.get("requested_at"), fields.get("started_at"),
             fields.get("finished_at"), fields.get("message", ""), fields.get("errors", "[]"),
             fields.get("outputs", "{}"), fields.get("purpose", ""))
        )

    def _compiled(self, event: RunCompiled, seq: int, workflow: Workflow) -> None:
        self._run(event, seq, "requested", environment=workflow.environment, action=workflow.action,
                  requested_by=event.requested_by, purpose=workflow.purpose.label)
        variables = encode_json(workflow.requested_variables)  # sensitive ones: tokens (the compiler sealed them)
        self.workflows.append((event.tenant, event.run_id, encode_json(masked(workflow)), variables))
        acts = workflow.activities
        self.compiled.append(
            (event.tenant, event.run_id, [a.id for a in acts], list(range(len(acts))), [a.kind for a in acts],
             [a.resource for a in acts], [a.stage for a in acts], [encode_json(a.depends_on) for a in acts])
        )
        self.env_template.append(
            (event.tenant, workflow.environment, workflow.template.name, workflow.template.version, event.occurred_at)
        )
        if workflow.purpose.ordinary:  # its request travels on TRELLIS_RUNS, which the store does not read
            status = "deploying" if workflow.action == "deploy" else "destroying"
            self.env_requested.append(
                (event.tenant, workflow.environment, status, seq, event.run_id, event.occurred_at)
            )
        self.env_finished.add((event.tenant, event.run_id))
        if workflow.purpose.drift:
            self.drift_compiled.append(drift_rows.compiled_row(event.tenant, event.run_id, workflow))
            self.drift_finished.add((event.tenant, event.run_id))

    def _activity(
        self, event: ActivityEvent, seq: int, status: str, agent: str = "", started: datetime | None = None,
        finished: datetime | None = None, outputs: str = "{}", reason: str = "", exit_code: int | None = None,
    ) -> None:
        key = (event.tenant, event.run_id, event.activity_id)
        patch = Patch(status, seq, event.attempt, agent, started, finished, outputs, reason, exit_code)
        before = self.activities.get(key)
        self.activities[key] = patch if before is None else before.then(patch)

    def activity_columns(self) -> list[list[Any]]:
        """The folded activity rows as the columns of ACTIVITIES."""
        rows = [(*key, *p.values()) for key, p in self.activities.items()]
        return [[r[i] for r in rows] for i in range(12)]


@dataclass(frozen=True)
class Patch:
    """What activity events write on a row; `then` folds a second one in as ACTIVITIES would
    apply the two one after the other (so a batch writes each activity once)."""

    status: str
    seq: int
    attempts: int
    agent: str
    started: datetime | None
    finished: datetime | None
    outputs: str
    reason: str
    exit_code: int | None

    def then(self, other: Patch) -> Patch:
        attempts = max(self.attempts, other.attempts)
        if other.seq > self.seq:  # the later event: it sets the row, keeping what it does not say
            return Patch(
                other.status, other.seq, attempts, other.agent or self.agent, other.started or self.started,
                other.finished, other.outputs, other.reason, other.exit_code,
            )
        # an earlier one (redelivered within the batch): it only fills what is missing
        return Patch(self.status, self.seq, attempts, self.agent or other.agent, self.started or other.started,
                     self.finished, self.outputs, self.reason, self.exit_code)

    def values(self) -> tuple[Any, ...]:
        return (self.status, self.seq, self.attempts, self.agent, self.started, self.finished, self.outputs,
                self.reason, self.exit_code)


def _activity_patch(event: ActivityEvent, seal: Seal | None) -> tuple[Any, ...] | None:
    """(status, agent, started_at, finished_at, outputs, reason, exit_code) an activity event sets."""
    at = event.occurred_at
    match event:
        case ActivityDispatched():
            return ("dispatched", event.agent)
        case ActivityStarted():
            return ("running", event.agent, at)
        case ActivityCompleted():
            return ("succeeded", "", None, at, encode_json(seal_outputs(event.outputs, seal)), "", event.exit_code)
        case ActivityFailed():
            return ("timed_out" if event.timed_out else "failed", "", None, at, "{}", event.reason, event.exit_code)
        case ActivityCancelled():
            return ("cancelled", "", None, at, "{}", event.reason)
        case ActivityLost():
            return ("lost", event.agent, None, at, "{}", f"agent {event.agent or '(unknown)'} stopped answering")
        case ActivityTimedOut():
            return ("timed_out", "", None, at, "{}", f"timed out after {event.timeout_seconds:g} s")
    return None  # a log chunk on the events stream: kept as an event only


def _event_row(event: RunEvent, seq: int, seal: Seal | None) -> tuple[Any, ...]:
    body = event
    if isinstance(event, RunRequested):
        body = msgspec.structs.replace(event, sources=(), files=(), variables={})
    elif isinstance(event, RunCompiled):
        last = masked_last_deploy(event.workflow)
        header = msgspec.structs.replace(event.workflow, activities=(), scope={}, requested_variables={},
                                         last_deploy=last)
        body = msgspec.structs.replace(event, workflow=header)
    elif isinstance(event, RunCompleted):  # sensitive outputs: tokens, as on the run's row
        body = msgspec.structs.replace(event, outputs=seal_resources(event.outputs, seal))
    elif isinstance(event, ActivityCompleted):
        body = msgspec.structs.replace(event, outputs=seal_outputs(event.outputs, seal))
    activity_id = event.activity_id if isinstance(event, ActivityEvent) else ""
    attempt = event.attempt if isinstance(event, ActivityEvent) else 0
    return (seq, event.event_id, event.tenant, event.run_id, event.kind, activity_id, attempt, event.occurred_at,
            _pg_json(encode(body).decode()))


def encode_json(value: Any) -> str:
    return _pg_json(_json.encode(value).decode())


def _pg_json(text: str) -> str:
    """PostgreSQL's jsonb refuses the NUL character: it reads as the replacement character."""
    return text.replace("\\u0000", "\\ufffd") if "\\u0000" in text else text


def masked(workflow: Workflow) -> Workflow:
    """The workflow as `runs.workflow` keeps it: each activity's sensitive inputs and env values
    masked, checkout and state-backend credentials masked, no rendering scope and no requested
    variables, and the last deploy's sensitive outputs (a destroy's, from deploy.record) masked."""
    activities = tuple(
        _masked_activity(a) if a.sensitive or _has_credentials(a.spec) else a for a in workflow.activities
    )
    static = {
        name: msgspec.structs.replace(given, outputs=masked_outputs(given.outputs))
        for name, given in workflow.static.items()
    }
    return msgspec.structs.replace(
        workflow,
        activities=activities,
        scope={},
        requested_variables={},
        last_deploy=masked_last_deploy(workflow),
        static=static,
    )


def _has_credentials(spec: Any) -> bool:
    backend = getattr(spec, "state_backend", None)  # a managed-state stage's sealed run credential
    return bool(getattr(spec, "password", "") or getattr(spec, "ssh_key", "") or (backend and backend.credential))


def _masked_activity(activity: Any) -> Any:
    names = set(activity.sensitive)
    inputs = {k: MASK if k in names else v for k, v in activity.inputs.items()}
    spec = activity.spec
    changes: dict[str, Any] = {}
    env = getattr(spec, "env", None)
    if env and names & env.keys():
        changes["env"] = {k: MASK if k in names else v for k, v in env.items()}
    for secret in ("password", "ssh_key"):
        if getattr(spec, secret, ""):
            changes[secret] = MASK
    backend = getattr(spec, "state_backend", None)
    if backend is not None and backend.credential:
        changes["state_backend"] = msgspec.structs.replace(backend, credential=MASK)
    if changes:
        spec = msgspec.structs.replace(spec, **changes)
    return msgspec.structs.replace(activity, inputs=inputs, spec=spec)
