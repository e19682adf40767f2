"""Schedule loop cost in the store: one tick when nothing is due, and firing every due slot.

N environments (100, then 1,000) of one tenant each have an hourly deploy schedule, all due at
once (the worst case: a shared cron such as `0 9 * * *`). A tick asks `schedule.due` (which also
arms times to live); firing claims each slot with its run recorded in the same transaction and
marks it published, as the gateway's schedule loop does, page by page (publishing on the bus is
not counted). Medians over a few repeats, printed side by side
with the per-environment cost so growth with N shows; nothing is asserted on time. Run with
`make bench` (or `pytest -m bench tests/bench/test_schedules_bench.py -s`).
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_store.api import (
    DueSchedules,
    Environment,
    Ok,
    RunCreate,
    ScheduleClaim,
    ScheduleClaimed,
    ScheduleDue,
    ScheduleMark,
    ScheduleSync,
    SyncedSchedule,
)
from trellis_templates.schedules import EffectiveSchedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from store_api_support import RunningStore, env_put, running_store, tenant_with_template  # the store tests' helpers

pytestmark = pytest.mark.bench
REPEATS = 3
IDLE_TICKS = 20
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
HOURLY = EffectiveSchedule(name="hourly", type="deploy", cron="0 * * * *")


async def _environments(store: RunningStore, tenant: str, count: int, due: datetime) -> None:
    await tenant_with_template(store, tenant)
    for i in range(count):
        name = f"env{i}"
        await store.ask(env_put(tenant, name, actor="bench"), Environment)
        synced = SyncedSchedule(schedule=HOURLY, next_due_at=due)
        await store.ask(ScheduleSync(tenant=tenant, environment=name, revision=1, schedules=(synced,), now=T0), Ok)


async def _fire_all(store: RunningStore, now: datetime) -> int:
    fired = 0
    while (page := await store.ask(ScheduleDue(now=now, limit=100), DueSchedules)).due:
        for slot in page.due:
            run_id = f"{slot.environment}-{fired}"
            run = RunCreate(tenant=slot.tenant, run_id=run_id, environment=slot.environment, action="deploy",
                            requested_by="schedule/hourly", idempotency_key=f"schedule:{run_id}")
            claim = ScheduleClaim(tenant=slot.tenant, environment=slot.environment, name="hourly",
                                  due_at=slot.next_due_at or now, next_due_at=now + timedelta(days=1), run=run,
                                  now=now)
            assert (await store.ask(claim, ScheduleClaimed)).claimed
            published = ScheduleMark(tenant=slot.tenant, environment=slot.environment, name="hourly",
                                     mark="published", run_id=run_id)
            await store.ask(published, Ok)  # the loop marks each run it put on the bus
            fired += 1
    return fired


@pytest.mark.parametrize("environments", [100, 1000])
async def test_schedule_tick_and_firing(
    bus: Bus, settings: Settings, database_url: str, unique: str, environments: int
) -> None:
    idle: list[float] = []
    rates: list[float] = []
    async with running_store(bus, settings, database_url) as store:
        for repeat in range(REPEATS):
            tenant = f"{unique}r{repeat}"
            due = T0 + timedelta(hours=1 + repeat)  # later repeats' slots are not the earlier ones'
            await _environments(store, tenant, environments, due)
            for _ in range(IDLE_TICKS):
                start = time.perf_counter()
                await store.ask(ScheduleDue(now=T0 + timedelta(minutes=1)), DueSchedules)
                idle.append(time.perf_counter() - start)
            start = time.perf_counter()
            fired = await _fire_all(store, due + timedelta(seconds=1))
            span = time.perf_counter() - start
            assert fired == environments
            rates.append(fired / span)
    tick = statistics.median(idle) * 1000
    rate = statistics.median(rates)
    print(f"\nschedules, {environments} environments x {REPEATS} repeats: idle tick median {tick:.2f} ms "
          f"({tick / environments * 1000:.2f} us per environment); firing every slot median {rate:,.0f} slots/s "
          f"({1000 / rate:.2f} ms per slot; {', '.join(f'{r:,.0f}' for r in rates)})")
