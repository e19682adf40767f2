"""An environment's last successful deploy, asked of the state store for the run being compiled.

A destroy compiles with that deploy's variables and renders with its outputs; a deploy with
`executeOnce` hooks must know whether there was one. The store answers after its projection has
caught up with every run event published before the question. While no store answers the run
waits (retried with backoff, logged, its message kept in progress, and the runs requested after
it wait behind it, in order); it is never rejected for that. Any other store error rejects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TypeVar

from trellis_core.bus import Delivery
from trellis_core.events import RunRequested
from trellis_core.logs import get_logger
from trellis_core.workflow import Activity, LastDeploy
from trellis_store.api import DeployRecord, DeployRecordGet, StoreError, StoreRequest, op_of
from trellis_store.client import StoreClient

log = get_logger("compiler.last_deploy")
T = TypeVar("T")
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)  # then every 10 s until the store answers


class StoreUnavailable(Exception):
    """The compiler is stopping while the store still does not answer: the request is handed
    back to the bus (a nak) and compiled by whoever consumes it next."""


def needs_last_deploy(request: RunRequested, activities: tuple[Activity, ...] | None = None) -> bool:
    """A destroy, a day-2 action and a drift check always do; a deploy when it has an
    `executeOnce` activity (pass its activities)."""
    if request.action == "destroy" or request.purpose.reads_deploy or request.purpose.drift:
        return True
    return activities is not None and any(a.execute_once for a in activities)


def as_last_deploy(request: RunRequested, record: DeployRecord | None) -> LastDeploy | None:
    """What the compiled workflow carries of the record; the outputs only for a destroy, a day-2
    action and a drift check (which read or render with them)."""
    if record is None or not record.deployed:
        return None
    purpose = request.purpose
    outputs = record.outputs if request.action == "destroy" or purpose.reads_deploy or purpose.drift else {}
    return LastDeploy(run_id=record.run_id, outputs=outputs)


async def last_deploy(
    store: StoreClient, request: RunRequested, delivery: Delivery, stop: asyncio.Event | None = None
) -> DeployRecord | StoreError:
    """The store's record of the request's environment, or the store's refusal (never
    `unavailable`: that is waited out; raises StoreUnavailable if `stop` is set meanwhile)."""
    asked = DeployRecordGet(tenant=request.tenant, environment=request.environment)
    return await ask_waiting(store, asked, DeployRecord, request, delivery, stop)


async def ask_waiting(
    store: StoreClient,
    asked: StoreRequest,
    into: type[T],
    request: RunRequested,
    delivery: Delivery,
    stop: asyncio.Event | None = None,
) -> T | StoreError:
    """The store's answer to `asked` for the run being compiled, or its refusal; while it answers
    `unavailable` the run waits (backoff, logged, its message kept in progress). Raises
    StoreUnavailable if `stop` is set meanwhile."""
    for attempt in itertools.count(1):
        answer = await store.ask(asked, into)
        if not isinstance(answer, StoreError) or answer.code != "unavailable":
            return answer
        delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS)) - 1]
        log.warning(
            "store_unavailable_run_waits",
            tenant=request.tenant,
            run=request.run_id,
            environment=request.environment,
            attempt=attempt,
            retry_in=delay,
            error=answer.message,
            asked=op_of(asked),
        )
        await delivery.in_progress()  # keep the message: the run waits, it is not redelivered
        if await _stopped(stop, delay):
            raise StoreUnavailable(f"the state store did not answer for run {request.run_id}: {answer.message}")
    raise AssertionError("unreachable")  # pragma: no cover


async def _stopped(stop: asyncio.Event | None, delay: float) -> bool:
    if stop is None:
        await asyncio.sleep(delay)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
    return stop.is_set()


def never_deployed(request: RunRequested, record: DeployRecord | None) -> str:
    """Why a day-2 action cannot run: its environment has no deploy to act on ("" when it has)."""
    purpose = request.purpose
    if not purpose.on_deployed or (record is not None and record.deployed):
        return ""
    what = f"action {purpose.day2_action!r}" if purpose.day2_action else f"schedule {purpose.scheduled_tasks!r}"
    return (
        f"environment {request.environment!r} has no successful deploy that no destroy undid: "
        f"{what} runs on a deployed environment (deploy it first)"
    )


def store_refusal(request: RunRequested, error: StoreError) -> str:
    """Why the run is rejected when the store refused to say what was deployed."""
    where = f" (at {error.path})" if error.path else ""
    return (
        f"the state store refused to give the last deploy of environment {request.environment!r} "
        f"of tenant {request.tenant!r}: {error.code}: {error.message}{where}"
    )
