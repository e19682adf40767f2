"""A large run's periodic snapshot comes less often (its cost grows with the run), a finished
run's and every unsaved run's on stepping down come at once. Times are passed in, not waited."""

from __future__ import annotations

from typing import Any

from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow
from trellis_engine.graph import build_run
from trellis_scheduler.scheduler import SNAPSHOT_ACTIVITIES, Scheduler
from trellis_scheduler.store import SnapshotStore


class _Kv:
    def __init__(self) -> None:
        self.puts: list[str] = []

    async def put(self, key: str, value: bytes) -> None:
        self.puts.append(key.rsplit(".", 1)[1])


def _workflow(size: int) -> Workflow:
    acts = [Activity(id=f"a{i}", kind="container", spec=ContainerSpec(command=("true",))) for i in range(size)]
    return Workflow(environment="e", template=TemplateRef(name="t"), action="deploy", activities=tuple(acts))


def _scheduler(bus: Bus, settings: Settings, **runs: int) -> tuple[Scheduler, _Kv]:
    scheduler = Scheduler(bus, settings, tenant="t", snapshot_interval=0.2)
    kv = _Kv()
    scheduler.store = SnapshotStore(kv, bus.js)  # type: ignore[arg-type]
    for run_id, size in runs.items():
        scheduler.st.runs[run_id] = build_run("t", run_id, _workflow(size), 0.0, "")
    return scheduler, kv


async def _save(scheduler: Scheduler, kv: _Kv, at: float, **kw: Any) -> list[str]:
    scheduler.unsaved.update(scheduler.st.runs)  # every run changed since
    kv.puts.clear()
    await scheduler._save_unsaved(now=at, **kw)
    return sorted(kv.puts)


async def test_a_large_run_is_snapshotted_less_often_in_proportion_to_its_size(bus: Bus, settings: Settings) -> None:
    scheduler, kv = _scheduler(bus, settings, small=3, large=SNAPSHOT_ACTIVITIES * 4)
    assert await _save(scheduler, kv, 100.0) == ["large", "small"]  # a first snapshot is always due
    assert await _save(scheduler, kv, 100.1) == []
    assert await _save(scheduler, kv, 100.2) == ["small"]  # every snapshot_interval
    assert await _save(scheduler, kv, 100.5) == ["small"]
    assert await _save(scheduler, kv, 100.8) == ["large", "small"]  # every 4 x snapshot_interval
    assert scheduler.unsaved == set()


async def test_a_finished_run_and_stepping_down_are_snapshotted_at_once(bus: Bus, settings: Settings) -> None:
    scheduler, kv = _scheduler(bus, settings, small=3, large=SNAPSHOT_ACTIVITIES * 4, other=SNAPSHOT_ACTIVITIES * 2)
    await _save(scheduler, kv, 100.0)
    scheduler.st.runs["large"].status = "succeeded"
    assert await _save(scheduler, kv, 100.1) == ["large"]  # its tombstone, and it is forgotten
    assert "large" not in scheduler.st.runs
    assert "large" not in scheduler.save_after
    assert await _save(scheduler, kv, 100.1, final=True) == ["other", "small"]
