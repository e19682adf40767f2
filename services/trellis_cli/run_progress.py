"""What `trellis run` shows: a run's events folded into a per-activity view, as a rich table
while it runs and as one JSON document or an outputs table at the end."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from rich.table import Table
from rich.text import Text

from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityDispatched,
    ActivityFailed,
    ActivityLost,
    ActivityStarted,
    ActivityTimedOut,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    Problem,
    RunCompiled,
    RunCompleted,
    RunQueued,
    RunRejected,
    RunStarted,
)

STYLES = {
    "pending": "dim",
    "dispatched": "cyan",
    "running": "bold cyan",
    "waiting": "magenta",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "timed_out": "red",
    "cancelled": "yellow",
    "skipped": "dim",
}
MASK = "********"


class ActivityView(msgspec.Struct, kw_only=True):
    id: str
    status: str = "pending"
    attempts: int = 0
    agent: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    outputs: dict[str, Any] = {}
    tolerated: bool = False  # `onFailure: continue`: a failure here does not fail the run

    @property
    def shown_status(self) -> str:
        tolerated = self.tolerated and self.status in ("failed", "timed_out")
        return f"{self.status} (tolerated)" if tolerated else self.status


class RunView(msgspec.Struct, kw_only=True):
    run_id: str
    environment: str
    action: str
    status: str = "requested"
    message: str = ""
    queued_reason: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    activities: list[ActivityView] = []
    outputs: dict[str, dict[str, Any]] = {}
    errors: list[str] = []

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled", "rejected")

    def apply(self, event: Event) -> None:
        if isinstance(event, RunCompiled):
            self.status = "compiled"
            self.activities = [
                ActivityView(id=a.id, tolerated=a.on_failure == "continue") for a in event.workflow.activities
            ]
        elif isinstance(event, RunRejected):
            self.status = "rejected"
            self.errors = [str(p) for p in event.errors]
        elif isinstance(event, RunQueued):
            self.status, self.queued_reason = "queued", event.reason
        elif isinstance(event, RunStarted):
            self.status, self.started_at = "running", event.occurred_at
        elif isinstance(event, RunCompleted):
            self.status, self.message, self.finished_at = event.status, event.message, event.occurred_at
            self.outputs = event.outputs
            for a in self.activities:
                if a.status in ("pending", "dispatched"):
                    a.status = "skipped" if a.status == "pending" else "cancelled"
        else:
            self._activity(event)

    def _activity(self, event: Event) -> None:
        activity_id = getattr(event, "activity_id", None)
        view = next((a for a in self.activities if a.id == activity_id), None)
        if view is None or getattr(event, "attempt", 0) < view.attempts:
            return  # another attempt's late news
        if isinstance(event, ActivityDispatched):
            view.status, view.attempts, view.finished_at = "dispatched", event.attempt, None
        elif isinstance(event, ActivityStarted):
            view.status, view.agent = "running", event.agent
            view.started_at = view.started_at or event.occurred_at
        elif isinstance(event, ActivityCompleted):
            view.status, view.finished_at, view.outputs = "succeeded", event.occurred_at, event.outputs
        elif isinstance(event, ActivityFailed | ActivityTimedOut | ActivityLost):
            view.status = {ActivityFailed: "failed", ActivityTimedOut: "timed_out"}.get(type(event), "retrying")
            view.finished_at = event.occurred_at
            view.message = getattr(event, "reason", "") or type(event).__name__
        elif isinstance(event, ActivityCancelled):
            view.status, view.finished_at, view.message = "cancelled", event.occurred_at, event.reason
        elif isinstance(event, ApprovalRequested):
            view.status = "waiting"
        elif isinstance(event, ApprovalDecided):
            view.status = "succeeded" if event.decision == "approved" else "failed"
            view.finished_at = event.occurred_at


def _elapsed(start: datetime | None, end: datetime | None, now: datetime) -> str:
    if start is None:
        return ""
    return f"{((end or now) - start).total_seconds():.1f}s"


def progress_table(view: RunView, now: datetime) -> Table:
    title = f"{view.action} {view.environment} — run {view.run_id} — {view.status}"
    if view.status == "queued":
        title += f" ({view.queued_reason})"
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("activity", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("elapsed", justify="right")
    table.add_column("note", no_wrap=True, overflow="ellipsis", max_width=48)
    for a in view.activities:
        note = a.message.splitlines()[0][:80] if a.message else ""
        table.add_row(
            a.id,
            Text(a.shown_status, style="yellow" if a.shown_status != a.status else STYLES.get(a.status, "")),
            str(a.attempts or ""),
            _elapsed(a.started_at, a.finished_at, now),
            note,
        )
    return table


def shown(output: Any) -> Any:
    """An output's value for people: masked when the tool marked it sensitive."""
    if isinstance(output, dict) and "value" in output:
        return MASK if output.get("sensitive") else output["value"]
    return output


def outputs_table(view: RunView) -> Table:
    table = Table(title="outputs", title_justify="left")
    for column in ("resource", "output", "value"):
        table.add_column(column)
    for resource, outputs in sorted(view.outputs.items()):
        for key, output in sorted(outputs.items()):
            value = shown(output)
            table.add_row(resource, key, value if isinstance(value, str) else msgspec.json.encode(value).decode())
    return table


def as_json(view: RunView) -> bytes:
    """The `--json` document: run status, and per activity status, times, attempts and outputs."""
    masked = {r: {k: {**o, "value": MASK} if isinstance(o, dict) and o.get("sensitive") else o
                  for k, o in outs.items()} for r, outs in view.outputs.items()}  # fmt: skip
    document = {
        "run_id": view.run_id,
        "environment": view.environment,
        "action": view.action,
        "status": view.status,
        "message": view.message,
        "errors": view.errors,
        "started_at": view.started_at,
        "finished_at": view.finished_at,
        "activities": [
            {
                "id": a.id,
                "status": a.status,
                "attempts": a.attempts,
                "agent": a.agent,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "message": a.message,
                "outputs": a.outputs,
            }
            for a in view.activities
        ],
        "outputs": masked,
    }
    return msgspec.json.format(msgspec.json.encode(document), indent=2)


def problems_text(problems: list[Problem] | list[str]) -> str:
    return "\n".join(f"  {p}" for p in problems)
