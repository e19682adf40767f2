"""The ids and times the engine stamps on the events it emits: UUIDv7-shaped, carrying the
decision's time, the same for the same decision, and written as `uuid.UUID` writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from trellis_engine.runs import stamp


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False), st.text(max_size=80))
def test_a_stamp_is_a_deterministic_uuid7_of_the_decision_time(now: float, key: str) -> None:
    stamped = stamp(now, key)
    value = uuid.UUID(stamped["event_id"])
    assert str(value) == stamped["event_id"]  # canonical: lower-case, 8-4-4-4-12
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == int(now * 1000) & ((1 << 48) - 1)
    assert stamped["occurred_at"] == datetime.fromtimestamp(now, UTC)
    assert stamp(now, key) == stamped


def test_different_decisions_at_one_time_get_different_ids() -> None:
    ids = {stamp(1_764_650_000.5, f"run/a{i}/1/dispatched")["event_id"] for i in range(1000)}
    assert len(ids) == 1000
