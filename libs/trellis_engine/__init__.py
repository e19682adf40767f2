"""The pure DAG engine: `fold(state, event)` and `decide(state, now)` over run state; no I/O."""

from trellis_engine.commands import Cancel, Command, Dispatch, PublishEvent, ScheduleWake
from trellis_engine.decide import decide, fold
from trellis_engine.state import ActivityState, EngineConfig, RunState, SchedulerState

__all__ = [
    "ActivityState",
    "Cancel",
    "Command",
    "Dispatch",
    "EngineConfig",
    "PublishEvent",
    "RunState",
    "ScheduleWake",
    "SchedulerState",
    "decide",
    "fold",
]
