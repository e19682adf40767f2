"""Run and activity state: what the engine knows about every run it walks, and its snapshots.

The state is mutable for speed (a 4,000-activity run folds thousands of events a second), but
only `decide.fold` and `decide.decide` change it, and they read no clock and draw no randomness.
Graph indices (dependents, workspaces) are derived from the workflow and never serialized.
"""

# Short names used throughout the engine (state, fold, decide, runs), kept short on purpose:
#   st   the SchedulerState being folded or decided on
#   run  one RunState of it
#   i    an activity's position in `run.activities` (and `run.acts`): activities are indexed, not named
#   a    the ActivityState at that position, `a = run.acts[i]`: its status, attempt, agent

from __future__ import annotations

import heapq
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from trellis_core.events import RunStatus
from trellis_core.workflow import Action, Activity, Workflow

ActivityStatus = Literal[
    "pending",
    "ready",
    "dispatched",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "timed_out",
    "skipped",
    "cancelled",
]
# Why an activity was skipped: `condition`/`execute_once`/`destroy` skips are a no-op success for
# dependents; `upstream`, `not_applicable` and `cancel` skips propagate like failures.
SkipKind = Literal["", "condition", "execute_once", "destroy", "upstream", "not_applicable", "cancel"]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "timed_out", "skipped", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"dispatched", "running", "waiting"})
IN_FLIGHT: frozenset[str] = frozenset({"dispatched", "running"})  # holds a parallelism slot
TERMINAL_RUN: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
NO_OP_SKIPS: frozenset[str] = frozenset({"condition", "execute_once", "destroy"})


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Limits and timings; 0 means unlimited for the parallelism limits."""

    max_parallel_per_run: int = 0
    max_parallel_per_tenant: int = 0
    heartbeat_timeout_seconds: float = 15.0
    cancel_grace_seconds: float = 30.0
    max_losses: int = 3  # agent losses one activity survives before it fails
    # Work pinned to the agent holding its workspace that no agent starts in this time means that
    # agent is gone (agents heartbeat only while they run something): redo the workspace elsewhere.
    pinned_start_timeout_seconds: float = 120.0
    # How long a finished run's id is remembered after it finished, to ignore its late events
    # (see `Tombstones`): far past the bus's dedupe window and any redelivery of its request.
    tombstone_seconds: float = 7 * 86400.0


class ActivityState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The dynamic state of one activity. Counters are kept exact only while it is `pending`."""

    status: ActivityStatus = "pending"
    attempt: int = 0  # the attempt last dispatched (0: never)
    unfinished: int = 0  # dependencies not yet terminal
    blocked: int = 0  # terminal dependencies that block `when: success`
    unsucceeded: int = 0  # terminal dependencies that did not succeed (for `when: failure`)
    agent: str = ""
    retry_at: float = 0.0  # a retry waits (backoff) until then
    dispatched_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    last_seen: float = 0.0  # the last sign of life of the running attempt
    losses: int = 0
    skip_kind: SkipKind = ""
    reason: str = ""
    outputs: dict[str, Any] = {}
    cancel_sent: bool = False


@dataclass(slots=True)
class RunState:
    """One run: its workflow, graph indices and the state of each activity (by workflow position)."""

    tenant: str
    run_id: str
    workflow: Workflow
    compiled_at: float
    requested_by: str = ""
    status: RunStatus = "queued"
    queue_reason: str = ""
    queued_emitted: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    cancel_requested: bool = False
    cancel_reason: str = ""
    failed: bool = False
    message: str = ""
    inflight: int = 0
    remaining: int = 0
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    workspaces: dict[str, str] = field(default_factory=dict)  # workspace key -> agent holding it
    acts: list[ActivityState] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)  # heap of positions; entries checked on pop
    # derived from the workflow
    activities: tuple[Activity, ...] = ()
    index: dict[str, int] = field(default_factory=dict)
    deps: list[list[int]] = field(default_factory=list)
    dependents: list[list[int]] = field(default_factory=list)
    by_workspace: dict[str, list[int]] = field(default_factory=dict)
    needs_render: list[bool] = field(default_factory=list)
    # kept by the service: the stream sequences of RunCompiled and of the last event folded
    compiled_seq: int = 0
    last_seq: int = 0

    @property
    def environment(self) -> str:
        return self.workflow.environment

    @property
    def action(self) -> Action:
        return self.workflow.action

    @property
    def env_key(self) -> tuple[str, str]:
        return (self.tenant, self.workflow.environment)

    def push_ready(self, i: int) -> None:
        heapq.heappush(self.ready, i)


@dataclass(slots=True)
class Timer:
    """A deadline the engine must look at again: retry backoff, timeout, heartbeat, cancel grace."""

    at: float
    seq: int
    run_id: str
    position: int
    attempt: int
    kind: Literal["retry", "timeout", "heartbeat", "cancel_grace", "pinned_start"]

    def __lt__(self, other: Timer) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)


class Tombstones:
    """The ids of finished runs the engine has forgotten, each kept until `keep_seconds` after
    its run finished, so that the run's late events are ignored rather than re-creating it.

    A late duplicate RunCompiled is the one that matters: JetStream dedupes a republish only
    within its window, and a compiler that dies after publishing but before acking compiles the
    request again when it is redelivered, perhaps much later. So expiry moves a `horizon`: the
    newest finish among expired tombstones. A run submitted by the horizon (by its UUIDv7
    run id's time, else the RunCompiled's) is either live (known), finished recently (still
    tombstoned) or forgotten for good: `admits` refuses it, a new run is never that old. Only a
    run id that is not a UUIDv7 (the gateway and CLI always issue one) recompiled past both the
    dedupe window and `keep_seconds` could run twice; and a run id minted by a clock more than
    `keep_seconds` behind is refused as too old. Time is always an argument.
    """

    __slots__ = ("at", "horizon", "keep_seconds")

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self.at: dict[str, float] = {}  # run id -> when it finished, in the order added
        self.horizon = 0.0

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.at

    def __len__(self) -> int:
        return len(self.at)

    def add(self, run_id: str, finished_at: float) -> None:
        """Remember a finished run, and forget those finished `keep_seconds` before it."""
        self.at[run_id] = finished_at
        self.expire(finished_at)

    def expire(self, now: float) -> None:
        """Drop tombstones older than `keep_seconds`, oldest added first (a later one that is
        older still waits its turn: the bound is reached at the next call that gets to it)."""
        cutoff = now - self.keep_seconds
        while self.at:
            run_id, finished_at = next(iter(self.at.items()))
            if finished_at >= cutoff:
                return
            del self.at[run_id]
            self.horizon = max(self.horizon, finished_at)

    def admits(self, run_id: str, compiled_at: float) -> bool:
        """Whether a RunCompiled of a run not known now may start it (see the class docstring)."""
        return run_id not in self.at and submitted_at(run_id, compiled_at) > self.horizon


def submitted_at(run_id: str, default: float) -> float:
    """The submission time a UUIDv7 run id carries (Unix seconds); `default` for other ids."""
    try:
        value = uuid.UUID(run_id)
    except ValueError:
        return default
    return (value.int >> 80) / 1000 if value.version == 7 else default


@dataclass(slots=True)
class SchedulerState:
    """Every run the scheduler walks, the environment locks and the per-tenant slot counts."""

    config: EngineConfig = field(default_factory=EngineConfig)
    runs: dict[str, RunState] = field(default_factory=dict)
    finished: Tombstones = field(default_factory=lambda: Tombstones(EngineConfig().tombstone_seconds))
    env_holder: dict[tuple[str, str], str] = field(default_factory=dict)
    env_queue: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)
    # What this scheduler saw since it started: the outputs of each environment's last successful
    # deploy (what a destroy renders with), None once a destroy of it succeeded. Of an environment
    # it saw nothing of, the run's `workflow.last_deploy` (the state store's record) speaks.
    env_outputs: dict[tuple[str, str], dict[str, dict[str, Any]] | None] = field(default_factory=dict)
    tenant_inflight: dict[str, int] = field(default_factory=dict)
    starved: dict[str, set[str]] = field(default_factory=dict)  # tenant -> runs waiting for a slot
    dirty: set[str] = field(default_factory=set)
    timers: list[Timer] = field(default_factory=list)
    timer_seq: int = 0
    # Since when this scheduler has been able to hear agents without a break (its term began, or
    # its connection to the bus came back): a heartbeat missed while it could hear nothing is
    # not one an agent failed to send, and counts for nothing (0: always could).
    heard_since: float = 0.0

    def __post_init__(self) -> None:
        self.finished.keep_seconds = self.config.tombstone_seconds

    def add_timer(self, at: float, run_id: str, position: int, attempt: int, kind: Any) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, Timer(at, self.timer_seq, run_id, position, attempt, kind))

    def next_wake(self) -> float | None:
        return self.timers[0].at if self.timers else None


class RunSnapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What survives a restart besides the event stream: everything but the workflow itself,
    which stays in the stream's RunCompiled message at `compiled_seq`."""

    tenant: str
    run_id: str
    status: RunStatus
    compiled_seq: int = 0
    last_seq: int = 0
    compiled_at: float = 0.0
    requested_by: str = ""
    queue_reason: str = ""
    queued_emitted: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    cancel_requested: bool = False
    cancel_reason: str = ""
    failed: bool = False
    message: str = ""
    outputs: dict[str, dict[str, Any]] = {}
    workspaces: dict[str, str] = {}
    acts: list[ActivityState] = []
