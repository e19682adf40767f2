"""The scheduler's JetStream key-value buckets: run snapshots and the leader lease."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from trellis_core import subjects
from trellis_core.bus import ensure_replicas
from trellis_core.settings import Settings


async def bucket(js: JetStreamContext, name: str, settings: Settings) -> KeyValue:
    """Bind to bucket `name`, creating it (history 1) on first use, or scaling it to the
    configured replicas."""
    try:
        kv = await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    else:
        await ensure_replicas(js, f"KV_{name}", settings.stream_replicas)
        return kv
    storage = js_api.StorageType.FILE if settings.stream_storage == "file" else js_api.StorageType.MEMORY
    config = js_api.KeyValueConfig(
        bucket=name, history=1, storage=storage, replicas=settings.stream_replicas, max_value_size=-1
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:  # another replica created it first
        return await js.key_value(name)


async def run_state_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await bucket(js, subjects.KV_RUN_STATE, settings)


async def leases_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    return await bucket(js, subjects.KV_LEASES, settings)
