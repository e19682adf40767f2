"""Picks the executor for an activity by its spec: the agent drives this one Executor."""

from __future__ import annotations

from trellis_agent.executors.base import Executor, Outcome, Sink, Workspace
from trellis_core.events import WorkItem
from trellis_core.workflow import ApprovalSpec, CheckoutSpec, ContainerSpec, FunctionSpec, HttpSpec, IacSpec


class Router:
    def __init__(
        self, *, container: Executor, iac: Executor, http: Executor, function: Executor, approval: Executor
    ) -> None:
        self._by_spec: dict[type, Executor] = {
            ContainerSpec: container,
            CheckoutSpec: iac,
            IacSpec: iac,
            HttpSpec: http,
            FunctionSpec: function,
            ApprovalSpec: approval,
        }

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        executor = self._by_spec.get(type(work.activity.spec))
        if executor is None:
            return Outcome.failed(f"no executor for {type(work.activity.spec).__name__}", retryable=False)
        return await executor.run(work, workspace, sink)
