"""`trellis dev up`: the whole stack on this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the bus and the servers load when the command runs, not when --help does
    from trellis_cli.devstack import DevStack
    from trellis_core.settings import Settings

DEFAULT_NATS_PORT = 4222  # NATS's own: an exported TRELLIS_NATS_URL survives a restart


async def _up(settings: Settings, port: int | None, secure: bool = False) -> int:
    from trellis_cli.devstack import DevStack
    from trellis_core.bus import stop_on_signals

    stop = asyncio.Event()
    stop_on_signals(stop)
    stack = DevStack(
        settings, nats_port=port, shareable=True, may_join=False, command="trellis dev up", secure=secure
    )
    async with stack:
        s = stack.settings
        print("Trellis is up. Ctrl-C stops everything.")
        print(f"  NATS:        {s.nats_url}")
        print(f"  PostgreSQL:  {s.database_url}")
        print(f"  Gateway:     {s.gateway_url or 'not part of this build (runs go on the bus: trellis run ...)'}")
        if s.gateway_url:
            print(f"  Console:     {s.gateway_url}/console/ (sign in with TRELLIS_TOKEN below)")
        print(f"  Agent:       tenant {s.tenant}, pool default, process executor")
        print(f"  Data:        {s.data_dir.resolve()}")
        if secure:
            print(f"  Secure:      nkey users only; control plane's nkey {s.nats_nkey_seed_file} (0600), "
                  f"authorization {s.nats_auth_file}")
        if s.gateway_url:
            print(f"  Secrets:     {s.data_dir.resolve() / 'credentials.json'} (mode 0600, reused on restart)")
        for line in exports(s):
            print(line)
        sys.stdout.flush()
        await stop.wait()
        _hurry_on_signals(stack)
        running = stack.running_activities()
        if running:
            what = "activity" if running == 1 else "activities"
            print(f"Stopping: waiting for {running} running {what} (up to {stack.drain_seconds():g} s); "
                  "Ctrl-C again stops them now...", flush=True)
        else:
            print("Stopping...", flush=True)
    print("Stopped.")
    return 0


def exports(settings: Settings) -> list[str]:
    """The `export` lines to paste into another shell: the bus, and the gateway with the tenant's
    admin token and the platform admin token."""
    pairs = [("TRELLIS_NATS_URL", settings.nats_url)]
    if settings.gateway_url:
        pairs += [("TRELLIS_GATEWAY_URL", settings.gateway_url), ("TRELLIS_TOKEN", settings.token),
                  ("TRELLIS_ADMIN_TOKEN", settings.admin_token)]
    if settings.nats_nkey_seed_file:  # secure mode: the control plane's nkey (this machine's, 0600)
        pairs.append(("TRELLIS_NATS_NKEY_SEED_FILE", settings.nats_nkey_seed_file))
    if settings.tenant != "default":
        pairs.append(("TRELLIS_TENANT", settings.tenant))
    labels = ["  Use it:      "] + ["               "] * (len(pairs) - 1)
    return [f"{label}export {name}={value}" for label, (name, value) in zip(labels, pairs, strict=True)]


def _hurry_on_signals(stack: DevStack) -> None:
    """While draining, another Ctrl-C (or SIGTERM) cancels the running work and stops at once."""
    loop = asyncio.get_running_loop()

    def hurry() -> None:
        print("Stopping now: running activities are cancelled.", flush=True)
        stack.hurry()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, hurry)


def _nats_port(requested: int | None, configured_url: str) -> int | None:
    """The port for the embedded NATS: the one asked for, else 4222 when free, else any free one."""
    from trellis_core.embedded import port_is_free

    if requested is not None or configured_url:
        return requested
    if port_is_free(DEFAULT_NATS_PORT):
        return DEFAULT_NATS_PORT
    print(f"port {DEFAULT_NATS_PORT} is taken: NATS listens on a free port instead, so its URL changes "
          "with every start (--port N picks one)", file=sys.stderr)
    return None


def _run(args: argparse.Namespace) -> int:
    from trellis_core.logs import configure
    from trellis_core.settings import Settings

    settings = Settings.from_env()
    configure(settings)
    if args.secure and settings.nats_url:
        from trellis_core.errors import ConfigError

        raise ConfigError("--secure runs the embedded nats-server: unset TRELLIS_NATS_URL")
    return asyncio.run(_up(settings, _nats_port(args.port, settings.nats_url), args.secure))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from trellis_core.settings import data_dir_help

    dev = subparsers.add_parser("dev", help="the embedded stack on this machine")
    sub = dev.add_subparsers(metavar="ACTION")
    up = sub.add_parser(
        "up",
        help="start NATS, PostgreSQL, every service, the gateway and a local agent until Ctrl-C",
        description="Start NATS JetStream, PostgreSQL, the state store, the gateway (on a free loopback port), "
        "the compiler, the scheduler and a local process agent, until Ctrl-C (which lets running "
        "activities finish, up to 30 s; a second Ctrl-C cancels them). It prints the export lines to "
        "paste: the bus, the gateway and its tokens (kept in credentials.json, mode 0600, in the data "
        "directory and reused on the next start). "
        f"{data_dir_help()} While it runs, `trellis run` on the same data directory uses it.",
    )
    up.add_argument(
        "--port", type=_port, default=None, metavar="N",
        help=f"the embedded NATS's port (default: {DEFAULT_NATS_PORT} when free, else any free port)",
    )
    up.add_argument(
        "--secure", action="store_true",
        help="run nats-server with nkey users and per-tenant permissions (docs/running.md, \"Secure mode\"): "
        "services connect with the control plane's nkey, the local agent with its tenant's agent credentials",
    )
    up.set_defaults(func=_run)
