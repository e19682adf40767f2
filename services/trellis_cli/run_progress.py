"""What `trellis run` shows: a run's events folded into a per-activity view at O(1) an event,
drawn as at most a screenful of rows a refresh, and one JSON document or a summary at the end.

Nothing secret is shown: what is folded in is masked as it comes (`for_display`): the value of
every output marked sensitive, and every sealed token anywhere (outputs, reasons, log lines, a
log line's unfinished end), read `********`, in the live view, the summary and `--json` alike."""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trellis_core import sealed
from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityDispatched,
    ActivityFailed,
    ActivityLogChunk,
    ActivityLost,
    ActivityStarted,
    ActivityTimedOut,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    Problem,
    RunCompiled,
    RunCompleted,
    RunEvent,
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
ACTIVE = frozenset({"dispatched", "running", "waiting", "retrying"})
FAILED = frozenset({"failed", "timed_out"})
ENDED = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped"})
MASK = sealed.MASK
_TOKEN_START = "[[trellis-sealed:"
LOG_TAIL_LINES = 20
REFRESH_SECONDS = 0.25  # the live table is redrawn at most this often, whatever the event rate
MIN_ROWS = 10


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
    log_attempt: int = 0  # the attempt whose lines `log_tail` holds (the newest seen)
    log_tail: deque[str] = msgspec.field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    log_partial: str = ""  # a line whose end has not arrived yet

    @property
    def shown_status(self) -> str:
        tolerated = self.tolerated and self.status in FAILED
        return f"{self.status} (tolerated)" if tolerated else self.status

    def log_lines(self) -> list[str]:
        """The last lines of the newest attempt's log (secrets masked by the agent, tokens here)."""
        lines = list(self.log_tail) + ([unfinished_line(self.log_partial)] if self.log_partial else [])
        return lines[-LOG_TAIL_LINES:]

    def add_log(self, chunk: ActivityLogChunk) -> list[str]:
        """Fold one chunk in; the complete lines it ended (for `--follow`)."""
        if chunk.attempt < self.log_attempt:
            return []
        if chunk.attempt > self.log_attempt:
            self.log_attempt, self.log_partial = chunk.attempt, ""
            self.log_tail.clear()
        *lines, self.log_partial = (self.log_partial + chunk.data).split("\n")
        lines = [sealed.mask_tokens(line) for line in lines]
        self.log_tail.extend(lines)
        return lines


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
    warnings: list[str] = []
    # Kept up to date by `apply` so that a screenful is drawn without walking every activity.
    by_id: dict[str, ActivityView] = {}
    counts: dict[str, int] = {}
    active: dict[str, None] = {}  # ids in ACTIVE, in the order they became so
    ended: deque[str] = msgspec.field(default_factory=lambda: deque(maxlen=64))  # the latest ends

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled", "rejected")

    def apply(self, event: Event) -> None:
        if isinstance(event, RunCompiled):
            self.status = "compiled"
            self.warnings = [sealed.mask_tokens(w) for w in event.workflow.warnings]
            self.activities = [
                ActivityView(id=a.id, tolerated=a.on_failure == "continue") for a in event.workflow.activities
            ]
            self.by_id = {a.id: a for a in self.activities}
            self.counts = {"pending": len(self.activities)}
        elif isinstance(event, RunRejected):
            self.status = "rejected"
            self.errors = [sealed.mask_tokens(str(p)) for p in event.errors]
            self.warnings = [sealed.mask_tokens(str(p)) for p in event.warnings]
        elif isinstance(event, RunQueued):
            self.status, self.queued_reason = "queued", sealed.mask_tokens(event.reason)
        elif isinstance(event, RunStarted):
            self.status, self.started_at = "running", event.occurred_at
        elif isinstance(event, RunCompleted):
            self.status, self.finished_at = event.status, event.occurred_at
            self.message = sealed.mask_tokens(event.message)
            self.outputs = for_display(event.outputs)
            for a in self.activities:
                if a.status in ("pending", "dispatched"):
                    self._set(a, "skipped" if a.status == "pending" else "cancelled")
        else:
            self._activity(event)

    def add_log(self, chunk: ActivityLogChunk) -> list[str]:
        view = self.by_id.get(chunk.activity_id)
        return view.add_log(chunk) if view is not None else []

    def _set(self, view: ActivityView, status: str) -> None:
        if view.status == status:
            return
        self.counts[view.status] = self.counts.get(view.status, 0) - 1
        self.counts[status] = self.counts.get(status, 0) + 1
        self.active.pop(view.id, None)
        if status in ACTIVE:
            self.active[view.id] = None
        elif status in ENDED:
            self.ended.append(view.id)
        view.status = status

    def _activity(self, event: Event) -> None:
        view = self.by_id.get(getattr(event, "activity_id", ""))
        if view is None or getattr(event, "attempt", 0) < view.attempts:
            return  # another attempt's late news
        if isinstance(event, ActivityDispatched):
            self._set(view, "dispatched")
            view.attempts, view.finished_at = event.attempt, None
        elif isinstance(event, ActivityStarted):
            self._set(view, "running")
            view.agent = event.agent
            view.started_at = view.started_at or event.occurred_at
        elif view.status in ENDED:
            return  # the attempt has its verdict: a cancel confirmed after a timeout stays timed_out
        elif isinstance(event, ActivityCompleted):
            self._set(view, "succeeded")
            view.finished_at, view.outputs = event.occurred_at, for_display(event.outputs)
        elif isinstance(event, ActivityFailed | ActivityTimedOut | ActivityLost):
            self._set(view, _failure_status(event))
            view.finished_at = event.occurred_at
            view.message = sealed.mask_tokens(_failure_message(event))
        elif isinstance(event, ActivityCancelled):
            self._set(view, "cancelled")
            view.finished_at, view.message = event.occurred_at, sealed.mask_tokens(event.reason)
        elif isinstance(event, ApprovalRequested):
            self._set(view, "waiting")
        elif isinstance(event, ApprovalDecided):
            self._set(view, "succeeded" if event.decision == "approved" else "failed")
            view.finished_at = event.occurred_at


def for_display(value: Any) -> Any:
    """`value` (JSON-like: outputs, a run, an environment) as people may see it: the value of
    every output marked sensitive (`{"value": ..., "sensitive": true}`, at any depth) and every
    sealed token anywhere read `********`."""
    if isinstance(value, dict):
        if value.get("sensitive") is True and "value" in value:
            value = {**value, "value": MASK}
        return {sealed.mask_tokens(k): for_display(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [for_display(v) for v in value]
    return sealed.mask_tokens(value)


def unfinished_line(text: str) -> str:
    """A line whose end has not come yet, tokens masked, and a token it ends inside (the rest of
    it still to come) masked too: a piece of one is not shown either."""
    text = sealed.mask_tokens(text)
    start = text.rfind(_TOKEN_START[:2])
    if start != -1 and _TOKEN_START.startswith(text[start:][: len(_TOKEN_START)]) and "]]" not in text[start:]:
        return text[:start] + MASK
    if text.endswith("["):
        return text[:-1]
    return text


def _failure_status(event: ActivityFailed | ActivityTimedOut | ActivityLost) -> str:
    if isinstance(event, ActivityTimedOut) or (isinstance(event, ActivityFailed) and event.timed_out):
        return "timed_out"
    return "failed" if isinstance(event, ActivityFailed) else "retrying"


def _failure_message(event: ActivityFailed | ActivityTimedOut | ActivityLost) -> str:
    if isinstance(event, ActivityTimedOut):
        return f"timed out after {event.timeout_seconds:g}s"
    return getattr(event, "reason", "") or type(event).__name__


def _elapsed(start: datetime | None, end: datetime | None, now: datetime) -> str:
    if start is None:
        return ""
    return f"{((end or now) - start).total_seconds():.1f}s"


def summary_line(view: RunView) -> str:
    """`12/1000 done: 10 succeeded, 2 failed; 4 running, 984 pending`, from the counts."""
    done = sum(n for s, n in view.counts.items() if s in ENDED)
    ended = ", ".join(f"{n} {s}" for s, n in sorted(view.counts.items()) if n and s in ENDED)
    rest = ", ".join(f"{n} {s}" for s, n in sorted(view.counts.items()) if n and s not in ENDED)
    return f"{done}/{len(view.activities)} done" + (f": {ended}" if ended else "") + (f"; {rest}" if rest else "")


def shown_rows(view: RunView, max_rows: int) -> list[ActivityView]:
    """Every activity when they fit; else the running ones, the dispatched ones, the failures
    among the latest ends, then the latest ends: at most `max_rows`, whatever the run's size."""
    if len(view.activities) <= max_rows:
        return view.activities
    running = [i for i in view.active if view.by_id[i].status != "dispatched"]
    picked: dict[str, None] = {}
    for activity_id in running + list(view.active):
        if len(picked) >= max_rows:
            break
        picked.setdefault(activity_id, None)
    latest = list(reversed(view.ended))
    for activity_id in [i for i in latest if view.by_id[i].status in FAILED] + latest:
        if len(picked) >= max_rows:
            break
        picked.setdefault(activity_id, None)
    return [view.by_id[i] for i in picked]


def progress_text(view: RunView, now: datetime, max_rows: int = 40) -> Text:
    """The live view: a title with the counts and at most `max_rows` aligned rows (plain text:
    a rich Table of a screenful costs ten times as much to draw)."""
    title = f"{view.action} {view.environment} — run {view.run_id} — {view.status}"
    if view.status == "queued":
        title += f" ({view.queued_reason})"
    text = Text(title + "\n", style="bold")
    if view.activities:
        text.append(summary_line(view) + "\n")
    rows = shown_rows(view, max_rows)
    id_width = max((len(a.id) for a in rows), default=8)
    status_width = max((len(a.shown_status) for a in rows), default=6)
    for a in rows:
        note = a.message.splitlines()[0][:60] if a.message else ""
        text.append(f"  {a.id:<{id_width}}  ")
        style = "yellow" if a.shown_status != a.status else STYLES.get(a.status, "")
        text.append(f"{a.shown_status:<{status_width}}", style=style)
        attempt = f"#{a.attempts}" if a.attempts > 1 else ""
        text.append(f" {attempt:>3} {_elapsed(a.started_at, a.finished_at, now):>7}  {note}".rstrip() + "\n")
    if len(rows) < len(view.activities):
        text.append(f"  … {len(view.activities) - len(rows)} more not shown\n", style="dim")
    return text


def shown(output: Any) -> Any:
    """An output's value for people: masked when the tool marked it sensitive, tokens masked."""
    if isinstance(output, dict) and "value" in output:
        return MASK if output.get("sensitive") else for_display(output["value"])
    return for_display(output)


def outputs_table(view: RunView) -> Table:
    table = Table(title="outputs", title_justify="left")
    for column in ("resource", "output", "value"):
        table.add_column(column)
    for resource, outputs in sorted(view.outputs.items()):
        for key, output in sorted(outputs.items()):
            value = shown(output)
            table.add_row(resource, key, value if isinstance(value, str) else msgspec.json.encode(value).decode())
    return table


def failures_text(view: RunView) -> Text:
    """Every failed or timed-out activity with its reason and the last lines of its log."""
    text = Text()
    for a in view.activities:
        if a.status not in FAILED:
            continue
        text.append(f"{a.id} {a.shown_status}", style="yellow" if a.tolerated else "bold red")
        text.append(f": {a.message}\n" if a.message else "\n")
        lines = a.log_lines()
        if lines:
            text.append(
                "  its last log line:\n" if len(lines) == 1 else f"  its last {len(lines)} log lines:\n", style="dim"
            )
            text.append("".join(f"  | {line}\n" for line in lines))
    return text


def as_json(view: RunView) -> bytes:
    """The `--json` document: run status, warnings, and per activity status, times, attempts,
    outputs and the last lines of its log."""
    masked = for_display(view.outputs)  # folded in masked already; the document is the last line of defence
    document = {
        "run_id": view.run_id,
        "environment": view.environment,
        "action": view.action,
        "status": view.status,
        "message": view.message,
        "errors": view.errors,
        "warnings": view.warnings,
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
                "outputs": for_display(a.outputs),
                "log_tail": a.log_lines(),
            }
            for a in view.activities
        ],
        "outputs": masked,
    }
    return msgspec.json.format(msgspec.json.encode(document), indent=2)


def problems_text(problems: list[Problem] | list[str]) -> str:
    return "\n".join(f"  {p}" for p in problems)


def print_summary(console: Console, view: RunView) -> None:
    if view.status == "rejected":
        console.print(f"[bold red]the templates have errors:[/]\n{problems_text(view.errors)}", highlight=False)
        if view.warnings:
            console.print(f"[yellow]warnings:[/]\n{problems_text(view.warnings)}", highlight=False)
        return
    failures = failures_text(view)
    if failures:
        console.print(failures, highlight=False)
    if view.outputs:
        console.print(outputs_table(view))
    style = "green" if view.status == "succeeded" else "bold red"
    elapsed = ""
    if view.started_at and view.finished_at:
        elapsed = f" in {(view.finished_at - view.started_at).total_seconds():.1f}s"
    counts = f" ({summary_line(view)})" if view.activities else ""
    console.print(
        f"[{style}]run {view.run_id} {view.status}{elapsed}[/]{counts}" + (f": {view.message}" if view.message else ""),
        highlight=False,
    )


class Screen:
    """Where the run shows: a live table redrawn at most every REFRESH_SECONDS on a terminal,
    one line per status change otherwise, nothing until the end with --json; log lines as they
    come with --follow."""

    def __init__(self, console: Console, view: RunView, *, follow: bool, as_document: bool) -> None:
        self.console, self.view, self.follow = console, view, follow
        self.live = not as_document and console.is_terminal
        self.lines = not as_document and not console.is_terminal
        self.quiet = as_document
        self._display: Live | None = None
        self._drawn_at = 0.0
        self._interval = REFRESH_SECONDS
        self._stale = False

    def __enter__(self) -> Screen:
        if self.live:
            self._display = Live(console=self.console, auto_refresh=False, transient=False)
            self._display.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._display is not None:
            self.refresh(force=True)
            self._display.__exit__(None, None, None)
            self._display = None

    def apply(self, event: RunEvent) -> None:
        activity_id = getattr(event, "activity_id", None)
        before = self.view.by_id[activity_id].shown_status if activity_id in self.view.by_id else None
        self.view.apply(event)
        self._stale = True
        if event.kind == "run.compiled" and not self.quiet:
            for warning in self.view.warnings:
                self.note(f"[yellow]warning:[/] {escape(warning)}")
        if self.lines and activity_id in self.view.by_id:
            status = self.view.by_id[activity_id].shown_status
            if status != before and event.kind not in ("activity.dispatched", "activity.heartbeat"):
                self.console.file.write(f"{event.occurred_at:%H:%M:%S} {activity_id} {status}\n")

    def log(self, chunk: ActivityLogChunk) -> None:
        lines = self.view.add_log(chunk)
        if self.follow:
            for line in lines:
                self.console.print(Text(f"{chunk.activity_id} | {line}"), highlight=False, soft_wrap=True)

    def note(self, markup: str) -> None:
        self.console.print(markup, highlight=False)

    def refresh(self, *, force: bool = False) -> None:
        if self._display is None or not (self._stale or force or self.view.status == "running"):
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < self._interval:
            return
        rows = max(MIN_ROWS, self.console.height - 8)
        self._display.update(progress_text(self.view, datetime.now(UTC), rows), refresh=True)
        self._drawn_at, self._stale = time.monotonic(), False
        # Drawing takes at most a twentieth of the time, however slow the terminal or busy the machine.
        self._interval = max(REFRESH_SECONDS, 20 * (self._drawn_at - now))
