"""A run's events as its stream holds them, for benchmarks that read them after measuring (so the
reading costs the measurement nothing): tests/bench and tests/bench_peers."""

from __future__ import annotations

from typing import Any

import msgspec

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunEvent


async def stored_events(bus: Bus, tenant: str, run_id: str) -> list[Any]:
    """Every event of the run in the events stream, in order."""
    decode = msgspec.json.Decoder(RunEvent).decode
    sub = await bus.js.subscribe(subjects.run_events(tenant, run_id), ordered_consumer=True)
    events: list[Any] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            events.append(decode(msg.data))
            if msg.metadata.num_pending == 0:
                return events
    finally:
        await sub.unsubscribe()
