"""The services' health server (TRELLIS_HEALTH_LISTEN, trellis_core.health) on real processes: the
compiler, the scheduler, the store and an agent, each a `trellis` command against a nats-server of
this test's own and the session's PostgreSQL. Ready once started; not ready while NATS is down (but
alive); ready again once it is back; the store not ready while its PostgreSQL does not answer; the
agent not ready until its work stream exists and it subscribed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from trellis_core.bus import Bus, ensure_work_stream
from trellis_core.embedded import EmbeddedNats
from trellis_core.health import Health, parse_listen, serving
from trellis_core.settings import Settings

TRELLIS = str(Path(sys.executable).parent / "trellis")
WAIT_SECONDS = 30.0  # how long a state may take to show (a bound for hangs, never asserted as speed)


class Service:
    """One `trellis <command>` process and its health server's URL (read from its log)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command, self.log = command, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([TRELLIS, *command], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        self.url = ""

    async def health_url(self) -> str:
        async with asyncio.timeout(WAIT_SECONDS):
            while not self.url:
                assert self.proc.poll() is None, f"{self.command} exited: {self.log.read_text()}"
                for line in self.log.read_text().splitlines():
                    if '"health_listening"' in line:
                        self.url = json.loads(line)["url"]
                await asyncio.sleep(0.05)
        return self.url

    async def get(self, session: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any]]:
        async with session.get(await self.health_url() + path) as resp:
            return resp.status, await resp.json()

    async def until(self, session: aiohttp.ClientSession, status: int, **checks: str) -> dict[str, Any]:
        """Poll /readyz until it answers `status` (and each named check says what is given)."""
        body: dict[str, Any] = {}
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    assert self.proc.poll() is None, f"{self.command} exited: {self.log.read_text()}"
                    code, body = await self.get(session, "/readyz")
                    if code == status and all(body["checks"].get(k) == v for k, v in checks.items()):
                        return body
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pytest.fail(f"{self.command}: /readyz never answered {status} {checks}; last {body}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextmanager
def services(tmp: Path, specs: dict[str, tuple[list[str], dict[str, str]]]) -> Iterator[dict[str, Service]]:
    started: dict[str, Service] = {}
    try:
        for name, (command, extra) in specs.items():
            env = {**os.environ, "TRELLIS_HEALTH_LISTEN": "127.0.0.1:0", "TRELLIS_LOG_FORMAT": "json",
                   "TRELLIS_LOG_LEVEL": "info", **extra}
            started[name] = Service(command, env, tmp / f"{name}.log")
        yield started
    finally:
        codes = {name: service.stop() for name, service in started.items()}
        assert codes == dict.fromkeys(started, 0), codes  # each drained and exited cleanly


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_every_service_is_ready_alive_without_nats_and_ready_again(
    tmp_path: Path, database_url: str, unique: str
) -> None:
    nats = EmbeddedNats(tmp_path / "nats")
    nats.start()
    base = {"TRELLIS_NATS_URL": nats.url, "TRELLIS_CALLBACK_KEY": secrets.token_urlsafe(32)}
    store = {**base, "TRELLIS_DATABASE_URL": database_url,
             "TRELLIS_SEAL_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    specs = {
        "compiler": (["compiler"], base),
        "scheduler": (["scheduler"], base),
        "store": (["store"], store),
        "agent": (["agent", "--tenant", unique, "--pool", "default", "--executor", "process"],
                  {**base, "TRELLIS_DATA_DIR": str(tmp_path / "agent")}),
    }
    try:
        with services(tmp_path, specs) as running:
            async with client() as session:
                # The agent waits for its tenant's work stream (the control plane makes it): alive,
                # connected, not ready until it is subscribed to its work.
                agent = running["agent"]
                await agent.until(session, 503, bus="ok", serving="starting")
                assert await agent.get(session, "/healthz") == (200, {"status": "ok", "service": "agent", "checks": {}})
                bus = await Bus.connect(Settings.from_env({}, nats_url=nats.url), name="test")
                try:
                    await ensure_work_stream(bus, unique)
                finally:
                    await bus.close()

                for name, service in running.items():
                    body = await service.until(session, 200)
                    assert body["status"] == "ready"
                    assert body["service"] == name
                    assert set(body["checks"]) == ({"bus", "serving", "postgres"} if name == "store"
                                                   else {"bus", "serving"})

                nats.stop()  # the bus is gone: every service not ready, every one alive
                for name, service in running.items():
                    body = await service.until(session, 503, bus="not connected to NATS (reconnecting)")
                    assert body["status"] == "not ready"
                    assert await service.get(session, "/healthz") == (200, {"status": "ok", "service": name,
                                                                            "checks": {}})

                nats.start()  # the same port: each reconnects and is ready again
                for service in running.values():
                    await service.until(session, 200)

                # The store's PostgreSQL stops answering (its database is gone): the store alone
                # is not ready, saying why; the others stay ready.
                admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
                admin = await asyncpg.connect(admin_url)
                try:
                    await admin.execute(f'DROP DATABASE "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
                finally:
                    await admin.close()
                body = await running["store"].until(session, 503, bus="ok")
                assert body["checks"]["postgres"].startswith("PostgreSQL does not answer"), body
                assert (await running["store"].get(session, "/healthz"))[0] == 200
                for name in ("compiler", "scheduler", "agent"):
                    assert (await running[name].get(session, "/readyz"))[0] == 200
    finally:
        nats.stop()


def test_a_bad_health_address_names_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "TRELLIS_NATS_URL": "nats://127.0.0.1:1", "TRELLIS_HEALTH_LISTEN": "8081"}
    bad = subprocess.run([TRELLIS, "compiler"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "TRELLIS_HEALTH_LISTEN='8081': write host:port" in bad.stderr

    assert Settings.from_env({}).health_listen == ""
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen(":8081") == ("0.0.0.0", 8081)
    assert parse_listen("[::1]:8081") == ("::1", 8081)


async def test_health_off_when_unset() -> None:
    async with serving("", Health("compiler")) as url:
        assert url is None


async def test_a_check_that_hangs_or_breaks_makes_not_ready_with_why() -> None:
    health = Health("store", service_signals_ready=True)
    health.nats_connected = lambda: True
    health.serving.set()

    async def hangs() -> str | None:
        await asyncio.Event().wait()
        return None

    async def breaks() -> str | None:
        raise RuntimeError("boom")

    assert await health.readiness() == (True, {"bus": "ok", "serving": "ok"})
    health.stopping = asyncio.Event()
    health.stopping.set()  # SIGTERM: draining, no longer counted as available
    assert await health.readiness() == (False, {"bus": "ok", "serving": "stopping"})
    health.stopping = None
    health.add_check("slow", hangs)
    health.add_check("broken", breaks)
    ready, checks = await health.readiness()
    assert not ready
    assert checks["slow"].startswith("no answer within")
    assert checks["broken"] == "RuntimeError: boom"
