"""What the engine asks the scheduler service to do: dispatch, cancel, publish, wake up later."""

from __future__ import annotations

import msgspec

from trellis_core.events import CancelActivity, RunEvent, WorkItem
from trellis_core.workflow import Action, Activity


class Dispatch(msgspec.Struct, frozen=True, kw_only=True):
    """Hand `activity` (rendered) to the agents of `pool`, or to `agent` when it holds the workspace."""

    tenant: str
    run_id: str
    environment: str
    action: Action
    activity: Activity
    attempt: int
    pool: str
    agent: str = ""

    def work_item(self, route: str = "") -> WorkItem:
        return WorkItem(
            tenant=self.tenant,
            run_id=self.run_id,
            environment=self.environment,
            action=self.action,
            attempt=self.attempt,
            activity=self.activity,
            route=route,
        )


class Cancel(msgspec.Struct, frozen=True, kw_only=True):
    """Tell the agents of `pool` to stop `attempt` of an activity."""

    tenant: str
    run_id: str
    activity_id: str
    attempt: int
    pool: str
    reason: str = ""

    def control(self) -> CancelActivity:
        return CancelActivity(
            tenant=self.tenant,
            run_id=self.run_id,
            activity_id=self.activity_id,
            attempt=self.attempt,
            reason=self.reason,
        )


class PublishEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event the scheduler itself emits (already folded into the state)."""

    event: RunEvent


class ScheduleWake(msgspec.Struct, frozen=True, kw_only=True):
    """Call `decide` again at `at` (epoch seconds) even if no event arrives."""

    at: float


Command = Dispatch | Cancel | PublishEvent | ScheduleWake
