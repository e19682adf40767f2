"""The state store service: a PostgreSQL pool, the schema, the projection of the bus into it,
and every `trellis.store.api.<op>` request answered (queue group `trellis-store`, so replicas share).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import asyncpg

from trellis_core import rpc
from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.logs import get_logger
from trellis_core.sealed import MasterKeyring
from trellis_core.settings import Settings
from trellis_store import agent_keys
from trellis_store.api import SUBJECT_PREFIX
from trellis_store.context import StoreContext
from trellis_store.handlers import UNAVAILABLE, handle
from trellis_store.keys import serve_keys
from trellis_store.legacy_sealing import LegacyOpener, convert
from trellis_store.migrate import migrate
from trellis_store.projection import Projection

log = get_logger("store")

QUEUE = "trellis-store"
CONNECT_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


async def connect(settings: Settings, stop: asyncio.Event, keyring: MasterKeyring) -> tuple[Any, int] | None:
    """A pool on `database_url`, the schema migrated and values the old store sealing left
    converted to tokens, retried while PostgreSQL is not up yet (the store waits for it rather
    than dying); None if `stop` came first."""
    attempt = 0
    while not stop.is_set():
        pool = None
        try:
            pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=1,
                max_size=settings.store_pool_size,
                command_timeout=60,
                timeout=settings.connect_timeout_seconds,
            )
            version = await migrate(pool)
            await convert(pool, keyring, LegacyOpener.from_settings(settings))
            return pool, version
        except UNAVAILABLE as exc:
            if pool is not None:
                pool.terminate()
            delay = CONNECT_RETRY_SECONDS[min(attempt, len(CONNECT_RETRY_SECONDS) - 1)]
            log.warning("store_database_unreachable", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def serve(
    bus: Bus,
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    projection_options: Mapping[str, Any] | None = None,
) -> None:
    """Serve the store until `stop` is set: the tenants' keys on `trellis.*.keys.get` from the
    start, then (PostgreSQL reached, migrated, old sealed values converted) the projection and
    every op; `ready` is set once the projection runs and every op is answered.
    `projection_options` go to Projection (tests: a tenant filter, own durables)."""
    if not settings.database_url:
        raise ConfigError("TRELLIS_DATABASE_URL is not set: the state store keeps its data in PostgreSQL")
    keyring = MasterKeyring.from_settings(settings)  # once: a bad or missing key stops the start here
    # Agents get their keys even while PostgreSQL is not up: the keyring is all it takes.
    keys_subscription = await serve_keys(bus.nc, keyring)
    try:
        await _serve(bus, settings, stop, ready, keyring, projection_options)
    finally:
        with contextlib.suppress(Exception):
            await keys_subscription.unsubscribe()


async def _serve(
    bus: Bus,
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
    keyring: MasterKeyring,
    projection_options: Mapping[str, Any] | None,
) -> None:
    connected = await connect(settings, stop, keyring)
    if connected is None:
        return
    pool, schema_version = connected
    try:
        projection = Projection(bus, pool, settings, keyring, **(projection_options or {}))
        ctx = StoreContext(pool=pool, keyring=keyring, projection=projection, schema_version=schema_version)
        await agent_keys.start(settings, pool)  # the nats-server authorization include, when configured
        async with asyncio.TaskGroup() as tasks:
            projecting = asyncio.Event()
            tasks.create_task(projection.run(stop, ready=projecting))
            await _until_set(projecting, stop)
            if stop.is_set():
                return
            subscription = await rpc.serve(bus.nc, SUBJECT_PREFIX + ">", functools.partial(handle, ctx), queue=QUEUE)
            log.info("store_started", schema_version=schema_version)
            try:
                if ready is not None:
                    ready.set()
                await stop.wait()
            finally:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
    finally:
        await asyncio.wait_for(pool.close(), 30)
        log.info("store_stopped")


async def _until_set(event: asyncio.Event, stop: asyncio.Event) -> None:
    """Wait for `event`, or for `stop` (whichever comes first)."""
    waiters = {asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
