"""Static resources of kind environment (docs/static-resources.md): before a run is compiled, the
outputs of the environments its template reads, asked of the state store (always the request's
own tenant: another tenant's environment is never visible), and the refusal of a destroy while
other environments read the one destroyed.

The store is waited for as for the last deploy (last_deploy.py): while it does not answer the run
waits; any other store error rejects it.
"""

from __future__ import annotations

import asyncio
import itertools

from trellis_compiler.last_deploy import RETRY_SECONDS, StoreUnavailable, _stopped
from trellis_core.bus import Delivery
from trellis_core.events import Problem, RunRequested
from trellis_core.logs import get_logger
from trellis_store.api import DeployRecord, LinkedOutputs, LinkedOutputsGet, StoreError
from trellis_store.client import StoreClient
from trellis_templates.resolved import LinkedEnvironment
from trellis_templates.static import linked_environments

log = get_logger("compiler.linked")


async def linked_outputs(
    store: StoreClient, request: RunRequested, delivery: Delivery, stop: asyncio.Event | None = None
) -> dict[str, LinkedEnvironment] | StoreError | None:
    """The environments the request's template reads, by name (one the tenant does not have is
    absent); None when it reads none. Raises StoreUnavailable if `stop` is set while waiting."""
    names = await asyncio.to_thread(linked_environments, request.sources, request.environment)
    if not names:
        return None
    asked = LinkedOutputsGet(tenant=request.tenant, environments=names)
    for attempt in itertools.count(1):
        answer = await store.ask(asked, LinkedOutputs)
        if isinstance(answer, LinkedOutputs):
            return {
                name: LinkedEnvironment(exists=True, deployed=state.deployed, outputs=state.outputs)
                for name, state in answer.environments.items()
            }
        if answer.code != "unavailable":
            return answer
        delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS)) - 1]
        log.warning(
            "store_unavailable_run_waits",
            tenant=request.tenant,
            run=request.run_id,
            attempt=attempt,
            retry_in=delay,
            error=answer.message,
            asked="linked.outputs",
        )
        await delivery.in_progress()
        if await _stopped(stop, delay):
            raise StoreUnavailable(f"the state store did not answer for run {request.run_id}: {answer.message}")
    raise AssertionError("unreachable")  # pragma: no cover


def linked_refusal(request: RunRequested, error: StoreError) -> Problem:
    where = f" (at {error.path})" if error.path else ""
    return Problem(
        message=f"the state store refused to give the outputs of the environments environment "
        f"{request.environment!r} reads through static resources: {error.code}: {error.message}{where}"
    )


def destroy_refused(request: RunRequested, record: DeployRecord | StoreError | None) -> Problem | None:
    """A destroy of an environment other environments read: refused, naming them (a force-destroy
    too: it would leave them reading outputs of something gone)."""
    if request.action != "destroy" or not isinstance(record, DeployRecord) or not record.dependents:
        return None
    names = ", ".join(record.dependents)
    return Problem(
        message=f"environment {request.environment!r} cannot be destroyed: environment(s) {names} read its "
        "outputs through static resources of kind environment (force does not override this)",
        hint="destroy those environments first, or deploy them without the static resource",
    )
