"""Approval activities, held by the agent: notify, publish ApprovalRequested, wait for the decision.

The agent (not the scheduler) waits, so an approval is one activity like any other: it
heartbeats while waiting, its timeout is the activity's, a cancel stops it. The scheduler sees
`approval.requested` and shows the activity as waiting. The bus side is an `ApprovalChannel`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_agent.executors.http import HttpExecutor, call_and_judge
from trellis_core.events import ApprovalDecided, ApprovalRequested, WorkItem, utcnow
from trellis_core.workflow import ApprovalSpec

NOTIFY_TIMEOUT_SECONDS = 60.0


def _expiry(timeout_seconds: float | None) -> datetime | None:
    return utcnow() + timedelta(seconds=timeout_seconds) if timeout_seconds else None


class ApprovalChannel(Protocol):
    async def request_and_wait(self, request: ApprovalRequested) -> ApprovalDecided:
        """Publish `request`, then return the first decision for its activity and attempt."""
        ...


class ApprovalExecutor:
    def __init__(self, http: HttpExecutor, channel: ApprovalChannel | None) -> None:
        self._http = http
        self._channel = channel

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        if not isinstance(spec, ApprovalSpec):
            return Outcome.failed(f"not an approval spec: {spec.__struct_config__.tag}", retryable=False)
        if self._channel is None:
            return Outcome.failed("this agent has no bus to wait for approvals on", retryable=False)
        if spec.notify is not None:
            notified = await call_and_judge(await self._http.session(), spec.notify, NOTIFY_TIMEOUT_SECONDS, sink)
            if not notified.ok:
                return Outcome.failed(f"notifying approvers failed: {notified.reason}", retryable=notified.retryable)
        request = ApprovalRequested(
            tenant=work.tenant,
            run_id=work.run_id,
            activity_id=work.activity.id,
            attempt=work.attempt,
            approvers=spec.approvers,
            expires_at=_expiry(work.activity.timeout_seconds),
        )
        who = ", ".join(spec.approvers) or "anyone allowed"
        await sink.system(f"waiting for approval by {who}")
        decision = await self._channel.request_and_wait(request)
        by = decision.decided_by or "someone"
        await sink.system(f"{decision.decision} by {by}" + (f": {decision.comment}" if decision.comment else ""))
        outputs = {
            "decision": decision.decision,
            "decidedBy": decision.decided_by,
            "comment": decision.comment,
        }
        if decision.decision == "approved":
            return Outcome.succeeded(outputs)
        reason = f"rejected by {by}" + (f": {decision.comment}" if decision.comment else "")
        return Outcome.failed(reason, retryable=False)
