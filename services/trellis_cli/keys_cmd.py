"""`trellis keys rotate [--tenant T]`: after a master key rotation, re-seal every stored token
under the current key (store op `keys.reseal`, over the bus).

The procedure (docs/api.md, "Keys and rotation"): set the new master key as TRELLIS_SEAL_KEY and
the old one in TRELLIS_SEAL_KEYS_RETIRED on every control-plane service, restart them, run this,
and drop the retired key once the streams have aged out what they hold (events_max_age_days).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from trellis_core.errors import ConfigError, TrellisError
from trellis_core.settings import Settings

ACTOR = "trellis keys rotate"
RESEAL_TIMEOUT_SECONDS = 600.0  # every stored row of every tenant: minutes on a big store


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="manage the keys sensitive values are sealed with",
        description="Manage the master keys sensitive values are sealed with (TRELLIS_SEAL_KEY).",
    )
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION")
    rotate = actions.add_parser(
        "rotate",
        help="re-seal every stored sensitive value under the current key",
        description="Ask the state store to re-seal every stored token whose key is not the current one "
        "(TRELLIS_SEAL_KEY) under it: run it after setting a new TRELLIS_SEAL_KEY, with the old one in "
        "TRELLIS_SEAL_KEYS_RETIRED, on every control-plane service and restarting them. Needs TRELLIS_NATS_URL.",
    )
    rotate.add_argument("--tenant", default="", help="only this tenant's values (default: every tenant)")
    rotate.set_defaults(func=rotate_keys)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def rotate_keys(args: argparse.Namespace) -> int:
    """Exit 0 when every value is under the current key, 1 when some still need a retired key (or
    the store could not be asked), 2 when a setting or an argument is wrong."""
    try:
        settings = Settings.from_env(None)
        if not settings.nats_url:
            raise ConfigError("no bus to reach: set TRELLIS_NATS_URL to the bus the state store serves on")
        return asyncio.run(_rotate(settings, args.tenant))
    except ConfigError as exc:
        print(f"trellis keys rotate: {exc}", file=sys.stderr)
        return 2
    except (TrellisError, TimeoutError) as exc:
        print(f"trellis keys rotate: {exc or 'the bus did not answer in time'}", file=sys.stderr)
        return 1


async def _rotate(settings: Settings, tenant: str) -> int:
    from trellis_core.bus import Bus
    from trellis_store.api import KeysReseal, Resealed, StoreError
    from trellis_store.client import StoreClient

    bus = await Bus.connect(settings, name="trellis keys rotate")
    store = StoreClient(bus.nc, timeout=RESEAL_TIMEOUT_SECONDS)
    try:
        answer = await store.ask(KeysReseal(tenant=tenant, actor=ACTOR), Resealed)
    finally:
        await store.close()
        await bus.close()
    if isinstance(answer, StoreError):
        where = f" ({answer.path})" if answer.path else ""
        print(f"trellis keys rotate: the state store refused: {answer.code}{where}: {answer.message}", file=sys.stderr)
        return 2 if answer.code in ("invalid", "not_found") else 1
    scope = f"tenant {tenant}" if tenant else f"{answer.tenants} tenant{'s' if answer.tenants != 1 else ''}"
    print(f"re-sealed {answer.values} value{'s' if answer.values != 1 else ''} under key {answer.current} ({scope})")
    if answer.still_sealed_with:
        print(
            "trellis keys rotate: some stored values are sealed with keys this store does not have: "
            f"{', '.join(answer.still_sealed_with)} (set them in TRELLIS_SEAL_KEYS_RETIRED, restart the store, "
            "and run this again)",
            file=sys.stderr,
        )
        return 1
    return 0
