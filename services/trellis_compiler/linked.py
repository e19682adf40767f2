"""Static resources of kind environment (docs/static-resources.md): before a run is compiled, the
outputs of the environments its template reads, asked of the state store (always the request's
own tenant: another tenant's environment is never visible), and the refusal of a destroy while
other environments read the one destroyed.

The store is waited for as for the last deploy (last_deploy.py): while it does not answer the run
waits; any other store error rejects it.
"""

from __future__ import annotations

import asyncio

from trellis_compiler.last_deploy import ask_waiting
from trellis_core.bus import Delivery
from trellis_core.events import Problem, RunRequested
from trellis_store.api import DeployRecord, LinkedOutputs, LinkedOutputsGet, StoreError
from trellis_store.client import StoreClient
from trellis_templates.resolved import LinkedEnvironment
from trellis_templates.static import linked_environments


async def linked_outputs(
    store: StoreClient, request: RunRequested, delivery: Delivery, stop: asyncio.Event | None = None
) -> dict[str, LinkedEnvironment] | StoreError | None:
    """The environments the request's template reads, by name (one the tenant does not have is
    absent); None when it reads none. Raises StoreUnavailable if `stop` is set while waiting."""
    names = await asyncio.to_thread(linked_environments, request.sources, request.environment)
    if not names:
        return None
    asked = LinkedOutputsGet(tenant=request.tenant, environments=names)
    answer = await ask_waiting(store, asked, LinkedOutputs, request, delivery, stop)
    if isinstance(answer, StoreError):
        return answer
    return {
        name: LinkedEnvironment(exists=True, deployed=state.deployed, outputs=state.outputs)
        for name, state in answer.environments.items()
    }


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
