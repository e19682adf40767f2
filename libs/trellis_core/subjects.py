"""Every NATS subject and stream name, built in one place (docs/architecture.md, "Subjects and streams")."""

from __future__ import annotations

import re

from trellis_core.errors import TrellisError

PREFIX = "trellis"

STREAM_RUNS = "TRELLIS_RUNS"
STREAM_EVENTS = "TRELLIS_EVENTS"
# The shared work stream of old: replaced by one a tenant (work_stream); ensure_streams removes it.
LEGACY_STREAM_WORK = "TRELLIS_WORK"
STREAM_LOGS = "TRELLIS_LOGS"
STREAM_DEADLETTER = "TRELLIS_DEADLETTER"

KV_RUN_STATE = "trellis_run_state"
KV_LEASES = "trellis_leases"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ACTIVITY_TOKEN = re.compile(r"^[A-Za-z0-9_~-]{1,256}$")


class InvalidSubjectToken(TrellisError):
    """A tenant, run, pool or agent name that cannot be one subject token."""


def token(value: str, what: str) -> str:
    """Return `value` if it is safe as one subject token (no dots, wildcards or spaces)."""
    if not _TOKEN.match(value):
        raise InvalidSubjectToken(
            f"{what} {value!r} cannot be used in a subject: use 1-128 letters, digits, '-' or '_'"
        )
    return value


def activity_token(activity_id: str) -> str:
    """Activity ids hold '/' (resource/vpc/plan); subjects get them with '/' as '~'."""
    value = activity_id.replace("/", "~")
    if not _ACTIVITY_TOKEN.match(value):
        raise InvalidSubjectToken(f"activity id {activity_id!r} cannot be used in a subject")
    return value


def subject_mismatch(subject: str, tenant: str, run_id: str | None = None) -> str:
    """Why a message claiming `tenant` (and `run_id`) may not travel on `subject`; "" if it may.

    Permissions scope a tenant by subject, so the subject is the authority: a message naming
    another tenant (or another run) than its subject is forged or misrouted."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != PREFIX:
        return f"subject {subject!r} is not a Trellis subject"
    if parts[1] != tenant:
        return f"message names tenant {tenant!r} but travels on tenant {parts[1]!r}'s subject {subject}"
    if run_id is not None and (len(parts) < 4 or parts[2] != "run" or parts[3] != run_id):
        return f"message names run {run_id!r} but travels on subject {subject}"
    return ""


def runs_requested(tenant: str) -> str:
    return f"{PREFIX}.{tenant_token(tenant)}.runs.requested"


def run_event(tenant: str, run_id: str, kind: str, route: str = "") -> str:
    """`kind` is the event's tag, e.g. `activity.completed` (two subject tokens). `route`, when
    given, is one more token after it: the scheduler partition an agent's events go to
    (WorkItem.route), so that only that partition's consumer reads them."""
    subject = f"{PREFIX}.{tenant_token(tenant)}.run.{token(run_id, 'run id')}.{kind}"
    return f"{subject}.{token(route, 'route')}" if route else subject


def run_events(tenant: str, run_id: str) -> str:
    """Every event of one run."""
    return f"{PREFIX}.{tenant_token(tenant)}.run.{token(run_id, 'run id')}.>"


def all_run_events(tenant: str = "*") -> str:
    t = tenant if tenant == "*" else token(tenant, "tenant")
    return f"{PREFIX}.{t}.run.>"


def work(tenant: str, pool: str, agent: str | None = None) -> str:
    base = f"{PREFIX}.{tenant_token(tenant)}.work.{token(pool, 'pool')}"
    return base if agent is None else f"{base}.{token(agent, 'agent id')}"


def logs(tenant: str, run_id: str, activity_id: str) -> str:
    return f"{PREFIX}.{tenant_token(tenant)}.logs.{token(run_id, 'run id')}.{activity_token(activity_id)}"


def run_logs(tenant: str, run_id: str) -> str:
    return f"{PREFIX}.{tenant_token(tenant)}.logs.{token(run_id, 'run id')}.>"


def control(tenant: str, pool: str) -> str:
    """Commands to the agents of one tenant's pool (cancel)."""
    return f"{PREFIX}.{tenant_token(tenant)}.control.{token(pool, 'pool')}"


RESERVED_TENANTS = frozenset({"store", "deadletter", "control"})


def tenant_token(tenant: str) -> str:
    if tenant in RESERVED_TENANTS:
        raise InvalidSubjectToken(f"tenant {tenant!r} is a reserved name: choose another")
    return token(tenant, "tenant")


def deadletter(original_subject: str) -> str:
    """`trellis.<t>.deadletter.<original subject>`, t the original subject's tenant token: under
    the tenant's prefix, so that an agent may be allowed to park its own tenant's letters only.

    A subject that names no tenant (not a Trellis subject, or a malformed one) files under the
    reserved tenant token `deadletter` itself, which no tenant can be given."""
    parts = original_subject.split(".")
    tenant = parts[1] if len(parts) >= 3 and parts[0] == PREFIX and _TOKEN.match(parts[1]) else "deadletter"
    if tenant in ("store", "control"):
        tenant = "deadletter"
    return f"{PREFIX}.{tenant}.deadletter.{original_subject}"


def tenant_deadletters(tenant: str = "*") -> str:
    """Every dead letter of one tenant (or of all with "*")."""
    t = tenant if tenant == "*" else tenant_token(tenant)
    return f"{PREFIX}.{t}.deadletter.>"


# ---- per-tenant names, so that a nats-server permission can pin every one to its tenant -------
# (docs/security.md, "Tenant isolation"): a JetStream API subject names its stream, never a
# filter a permission could match by prefix, so each tenant gets its own work stream and bundle
# bucket; the shared events, logs and requests streams are written by subject only.

WORK_STREAM_PREFIX = "TRELLIS_WORK_"
BUNDLES_BUCKET_PREFIX = "trellis_bundles_"


def work_stream(tenant: str) -> str:
    """The tenant's own work-queue stream, capturing `tenant_work(tenant)`."""
    return f"{WORK_STREAM_PREFIX}{tenant_token(tenant)}"


def tenant_work(tenant: str) -> str:
    """Every work subject of one tenant: what its work stream captures."""
    return f"{PREFIX}.{tenant_token(tenant)}.work.>"


def bundles_bucket(tenant: str) -> str:
    """The tenant's own object store of run bundles (the files beside its templates)."""
    return f"{BUNDLES_BUCKET_PREFIX}{tenant_token(tenant)}"


def inbox_prefix(tenant: str) -> str:
    """The inbox prefix a tenant's agents connect with: replies reach `_INBOX_<tenant>.>` only."""
    return f"_INBOX_{tenant_token(tenant)}"


def keys_request(tenant: str) -> str:
    """Core NATS request/reply: the tenant's agents ask the control plane for its data keys."""
    return f"{PREFIX}.{tenant_token(tenant)}.keys.get"


ALL_KEYS_REQUESTS = f"{PREFIX}.*.keys.get"


def store(query: str) -> str:
    return f"{PREFIX}.store.{query}"


# Shared stream name -> subjects it captures (each tenant's work stream: work_stream, tenant_work).
STREAM_SUBJECTS: dict[str, list[str]] = {
    STREAM_RUNS: [f"{PREFIX}.*.runs.>"],
    STREAM_EVENTS: [f"{PREFIX}.*.run.>"],
    STREAM_LOGS: [f"{PREFIX}.*.logs.>"],
    STREAM_DEADLETTER: [f"{PREFIX}.*.deadletter.>"],
}
