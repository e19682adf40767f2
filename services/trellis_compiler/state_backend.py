"""`backendType: system` resources: the address of their managed state and the run's credential.

The pure compiler marks such IaC stages (`IacSpec.state_backend`); this fills each in at the
service edge, where the clock and the keys are: the state backend's address on the gateway and one
state credential for the run and its environment (trellis_core.state_credentials), sealed under
the tenant's key so that only the agent running the stage opens it (and masks it in its logs).
Without TRELLIS_CALLBACK_KEY (to sign with) or TRELLIS_SEAL_KEY (to seal with) the run is rejected.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from trellis_core import state_credentials
from trellis_core.errors import ConfigError
from trellis_core.events import Problem
from trellis_core.sealed import TenantKeys
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, IacSpec, StateBackend
from trellis_templates.compiler import CompileResult


def backend_base_url(settings: Settings) -> str:
    """Where agents reach the gateway's state backend."""
    return settings.state_backend_url or settings.gateway_public_url or f"http://{settings.gateway_listen}"


def _system_stages(activities: tuple[Activity, ...]) -> list[Activity]:
    return [a for a in activities if isinstance(a.spec, IacSpec) and a.spec.state_backend is not None]


def attach_state_backend(
    result: CompileResult, *, tenant: str, run_id: str, settings: Settings, keys: TenantKeys | None, now: datetime
) -> CompileResult:
    """`result` with every `backendType: system` stage given its address and the sealed credential,
    or rejected naming the setting that is missing."""
    workflow = result.workflow
    if workflow is None or result.errors:
        return result
    stages = _system_stages(workflow.activities)
    if not stages:
        return result
    names = ", ".join(sorted({a.resource for a in stages}))
    try:
        if not settings.callback_key:
            raise ConfigError("TRELLIS_CALLBACK_KEY is not set on the compiler: it signs the runs' state credentials")
        if keys is None:
            raise ConfigError("TRELLIS_SEAL_KEY is not set on the compiler: it seals the runs' state credentials")
        key = state_credentials.state_key(settings.callback_key)
    except ConfigError as exc:
        problem = Problem(message=f"resource(s) {names} use backendType: system, but {exc}")
        return CompileResult(None, result.warnings, (problem,))
    expires = now + timedelta(seconds=settings.state_credential_ttl_seconds)
    credential = state_credentials.mint(
        key, tenant=tenant, environment=workflow.environment, run_id=run_id, expires_at=expires
    )
    sealed = keys.seal(credential)
    base = backend_base_url(settings)

    def filled(activity: Activity) -> Activity:
        spec = activity.spec
        if not isinstance(spec, IacSpec) or spec.state_backend is None:
            return activity
        address = state_credentials.state_address(base, tenant, workflow.environment, activity.resource)
        backend = StateBackend(address=address, credential=sealed)
        return msgspec.structs.replace(activity, spec=msgspec.structs.replace(spec, state_backend=backend))

    activities = tuple(filled(a) for a in workflow.activities)
    return CompileResult(msgspec.structs.replace(workflow, activities=activities), result.warnings, ())


def utc_now() -> datetime:
    return datetime.now(UTC)
