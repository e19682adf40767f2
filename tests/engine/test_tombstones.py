"""Finished runs' tombstones: late events are ignored, tombstones expire, and an expired one's
late duplicate RunCompiled does not run the workflow again."""

from __future__ import annotations

from engine_support import Driver, act, ts, workflow

from trellis_core.events import RunCompiled
from trellis_core.ids import uuid7
from trellis_engine.recovery import adopt
from trellis_engine.runs import forget
from trellis_engine.state import EngineConfig, Tombstones, submitted_at

DAY = 86400.0
KEEP = 7 * DAY


def driver() -> Driver:
    return Driver(EngineConfig(heartbeat_timeout_seconds=10.0, tombstone_seconds=KEEP))


def run_id_at(at: float) -> str:
    """A run id as the gateway issues it: a UUIDv7 carrying its submission time."""
    return uuid7(int(at * 1000))


def finish_and_forget(d: Driver, run_id: str) -> RunCompiled:
    """Compile, run to success and forget one run at the driver's time; its RunCompiled."""
    compiled = RunCompiled(tenant="acme", run_id=run_id, workflow=workflow(act("a")), occurred_at=ts(d.now))
    d.feed(compiled)
    assert d.run_to_end(run_id).status == "succeeded"
    forget(d.st, run_id)
    return compiled


def test_a_forgotten_runs_duplicate_compile_is_ignored_while_it_is_tombstoned() -> None:
    d = driver()
    run_id = run_id_at(d.now)
    compiled = finish_and_forget(d, run_id)
    assert run_id not in d.st.runs
    assert run_id in d.st.finished
    d.tick(KEEP - 1)
    d.feed(compiled)
    assert run_id not in d.st.runs
    assert d.dispatched_ids(run_id) == ["a"]


def test_tombstones_expire_keep_seconds_after_their_run_finished() -> None:
    d = driver()
    old = run_id_at(d.now)
    finish_and_forget(d, old)
    d.tick(KEEP / 2)
    middle = run_id_at(d.now)
    finish_and_forget(d, middle)
    d.tick(KEEP / 2 + 10)
    finish_and_forget(d, run_id_at(d.now))
    assert old not in d.st.finished  # finished more than KEEP before the latest finish
    assert middle in d.st.finished
    assert len(d.st.finished) == 2


def test_the_number_of_tombstones_is_bounded_by_the_runs_finished_within_keep_seconds() -> None:
    d = driver()
    for _ in range(200):
        finish_and_forget(d, run_id_at(d.now))
        d.tick(DAY)
    assert len(d.st.finished) == 8  # a week of daily runs, and the one finished at its edge


def test_a_late_duplicate_compile_of_an_expired_tombstone_does_not_run_again() -> None:
    d = driver()
    run_id = run_id_at(d.now)
    compiled = finish_and_forget(d, run_id)
    d.tick(KEEP + DAY)
    finish_and_forget(d, run_id_at(d.now))  # expires the first run's tombstone
    assert run_id not in d.st.finished
    # The compiler, redelivered its request long after the dedupe window, compiles it again:
    recompiled = RunCompiled(tenant="acme", run_id=run_id, workflow=workflow(act("a")), occurred_at=ts(d.now))
    d.feed(compiled, recompiled)  # the first event replayed, and the second compile
    assert run_id not in d.st.runs
    assert d.dispatched_ids(run_id) == ["a"]  # once, long ago
    assert [type(e).__name__ for e in d.emitted if e.run_id == run_id] == [
        "RunStarted",
        "ActivityDispatched",
        "RunCompleted",
    ]


def test_a_new_run_submitted_after_the_horizon_still_starts() -> None:
    d = driver()
    finish_and_forget(d, run_id_at(d.now))
    d.tick(KEEP + DAY)
    finish_and_forget(d, run_id_at(d.now))
    assert d.st.finished.horizon > 0
    fresh = run_id_at(d.now)
    d.feed(RunCompiled(tenant="acme", run_id=fresh, workflow=workflow(act("a")), occurred_at=ts(d.now)))
    assert d.dispatched_ids(fresh) == ["a"]


def test_a_run_id_that_is_no_uuid7_is_dated_by_its_compile_event() -> None:
    d = driver()
    finish_and_forget(d, "r-old")
    d.tick(KEEP + DAY)
    finish_and_forget(d, "r-new")
    replayed = RunCompiled(tenant="acme", run_id="r-old", workflow=workflow(act("a")), occurred_at=ts(1000.0))
    d.feed(replayed)  # the old event itself, replayed: older than the horizon
    assert "r-old" not in d.st.runs
    assert d.dispatched_ids("r-old") == ["a"]
    assert submitted_at("r-old", 5.0) == 5.0
    assert submitted_at(run_id_at(1234.5), 0.0) == 1234.5


def test_a_run_restored_finished_is_tombstoned_from_its_finish_time() -> None:
    d = driver()
    run_id = run_id_at(d.now)
    d.feed(RunCompiled(tenant="acme", run_id=run_id, workflow=workflow(act("a")), occurred_at=ts(d.now)))
    d.run_to_end(run_id)
    run = d.st.runs.pop(run_id)
    other = driver()
    adopt(other.st, run, now=run.finished_at + KEEP * 3)
    assert other.st.finished.at == {run_id: run.finished_at}


def test_expiry_is_by_the_time_given_never_a_clock() -> None:
    tombstones = Tombstones(keep_seconds=10.0)
    tombstones.add("a", 100.0)
    tombstones.add("b", 105.0)
    tombstones.expire(112.0)
    assert ("a" in tombstones, "b" in tombstones, tombstones.horizon) == (False, True, 100.0)
    assert not tombstones.admits(run_id_at(99.0), 200.0)
    assert tombstones.admits(run_id_at(101.0), 200.0)
    assert not tombstones.admits("b", 200.0)
