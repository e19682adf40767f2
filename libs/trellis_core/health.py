"""Liveness and readiness over HTTP for one service process, on `TRELLIS_HEALTH_LISTEN` (host:port,
port 0 picks a free one; off when unset). The gateway has its own /healthz and /readyz on its API
port; the compiler, the scheduler, the store and agents get theirs from here (run_service).

* `GET /healthz`: 200 whenever the process and its event loop answer (the handler runs on the loop
  the service runs on, so a blocked loop is a probe that times out).
* `GET /readyz`: 200 when the service is connected to NATS, has started serving (`Health.serving`:
  set by the service itself when it can say, e.g. an agent once subscribed to its work) and every
  extra check passes (the store: its PostgreSQL answers); else 503 saying why. While stopping
  (SIGTERM: draining) it is 503 too, so no rollout counts a draining pod as available.

Both answer JSON: `{"status": "ready", "service": "store", "checks": {"bus": "ok", ...}}`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from aiohttp import web

from trellis_core.errors import ConfigError
from trellis_core.logs import get_logger

log = get_logger("health")

CHECK_TIMEOUT_SECONDS = 2.0  # below the probes' timeoutSeconds in deploy/ (3 s)

# A check answers None when fine, else why not ready (one line, no secrets).
Check = Callable[[], Awaitable[str | None]]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    service: str
    checks: dict[str, str] = {}


def parse_listen(listen: str, variable: str = "TRELLIS_HEALTH_LISTEN") -> tuple[str, int]:
    """`host:port` (`[::1]:8081` for IPv6, an empty host for every address; port 0 picks a free one)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{variable}={listen!r}: write host:port (e.g. 0.0.0.0:8081; port 0 picks a free one)")
    return host.strip("[]") or "0.0.0.0", int(port)


class Health:
    """What a service's /readyz reports: the bus connection, whether it serves, extra checks.

    `service_signals_ready`: the service sets `serving` itself once it really serves (pass
    `health.serving` as its `ready` event); otherwise run_service sets it when the service starts."""

    def __init__(self, service: str, *, service_signals_ready: bool = False) -> None:
        self.service = service
        self.service_signals_ready = service_signals_ready
        self.serving = asyncio.Event()
        self.stopping: asyncio.Event | None = None
        self.nats_connected: Callable[[], bool] | None = None
        self.checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, what each check says); the extra checks run at once, each within its timeout."""
        results: dict[str, str] = {"bus": "ok"}
        if self.nats_connected is None:
            results["bus"] = "connecting to NATS"
        elif not self.nats_connected():
            results["bus"] = "not connected to NATS (reconnecting)"
        results["serving"] = "ok" if self.serving.is_set() else "starting"
        if self.stopping is not None and self.stopping.is_set():
            results["serving"] = "stopping"
        if self.checks:
            names = list(self.checks)
            answers = await asyncio.gather(*(_bounded(self.checks[n]) for n in names))
            results.update((name, answer or "ok") for name, answer in zip(names, answers, strict=True))
        return all(v == "ok" for v in results.values()), results


async def _bounded(check: Check) -> str | None:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_SECONDS:g}s"
    except Exception as exc:  # a check that breaks says not ready, it never kills the probe
        return f"{type(exc).__name__}: {exc}"


def postgres_check(database_url: str) -> Check:
    """PostgreSQL answers `SELECT 1` on a connection of its own (the store's pool stays the store's:
    a probe neither waits for a free connection nor holds one)."""

    async def check() -> str | None:
        import asyncpg

        try:
            conn = await asyncpg.connect(database_url, timeout=CHECK_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"PostgreSQL does not answer ({type(exc).__name__}: {exc})"
        try:
            await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"PostgreSQL does not answer ({type(exc).__name__}: {exc})"
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=CHECK_TIMEOUT_SECONDS)
        return None

    return check


def make_app(health: Health) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return _json(200, Answer(status="ok", service=health.service))

    async def readyz(request: web.Request) -> web.Response:
        ready, checks = await health.readiness()
        return _json(200 if ready else 503, Answer(status="ready" if ready else "not ready",
                                                   service=health.service, checks=checks))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def serving(listen: str, health: Health) -> AsyncIterator[str | None]:
    """Serve /healthz and /readyz on `listen` while inside; yields the URL (None when `listen` is
    empty: health is off)."""
    if not listen:
        yield None
        return
    host, port = parse_listen(listen)
    runner = web.AppRunner(make_app(health), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            why = exc.strerror or exc
            raise ConfigError(f"TRELLIS_HEALTH_LISTEN={listen!r}: cannot listen there ({why})") from None
        actual = runner.addresses[0][1] if runner.addresses else port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{actual}"
        log.info("health_listening", service=health.service, url=url)
        yield url
    finally:
        await runner.cleanup()


def _json(status: int, answer: Answer) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(answer), content_type="application/json")


__all__ = ["Check", "Health", "parse_listen", "postgres_check", "serving"]
