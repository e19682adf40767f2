"""A scheduler whose bus fails it while a NATS node dies stands by and leads again instead of
stopping: the lease read timing out (no KV leader yet), or its term failing on a JetStream call
(here: the run-state bucket while its stream elects a leader). The failover test met both."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import nats.js.errors
import pytest
import structlog

from trellis_core.bus import Bus
from trellis_core.settings import Settings


async def leads_after(bus: Bus, settings: Settings, tenant: str) -> list[dict[str, Any]]:
    """Start a scheduler for `tenant`; its log events once it leads (it must, and keep serving)."""
    from trellis_scheduler.service import serve

    stop, ready = asyncio.Event(), asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(serve(bus, settings, stop, tenant=tenant, lease_ttl=0.6, ready=ready))
        try:
            waiting = asyncio.ensure_future(ready.wait())
            await asyncio.wait([waiting, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if task.done():
                task.result()  # what stopped it
            assert ready.is_set(), "the scheduler never led"
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    return logs


async def test_a_lease_read_that_times_out_is_tried_again(
    bus: Bus, settings: Settings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trellis_scheduler.lease import Lease

    real = Lease.try_acquire
    failures = [nats.errors.TimeoutError(), nats.js.errors.NoStreamResponseError()]

    async def electing(self: Lease) -> bool:
        if failures:
            raise failures.pop()
        return await real(self)

    monkeypatch.setattr(Lease, "try_acquire", electing)
    logs = await leads_after(bus, settings, unique)
    assert [e["event"] for e in logs].count("lease_unavailable") == 2


async def test_a_term_the_bus_fails_is_followed_by_another(
    bus: Bus, settings: Settings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trellis_scheduler.scheduler as scheduler_module

    real = scheduler_module.run_state_bucket
    failures = [nats.js.errors.NoStreamResponseError()]

    async def electing(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args)

    monkeypatch.setattr(scheduler_module, "run_state_bucket", electing)
    logs = await leads_after(bus, settings, unique)
    assert [e["event"] for e in logs].count("scheduler_term_failed") == 1  # and then it led
