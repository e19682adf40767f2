"""A stand-in for OpenTofu's HTTP state backend client (internal/backend/remote-state/http): the
same requests, methods, headers and status handling, so the gateway is tested as tofu drives it.

- GET address: 200 the state, 404/204 none; Content-MD5 checked when sent.
- POST address[?ID=<lock id>] with the state, Content-Type application/json and Content-MD5.
- DELETE address.
- LOCK address with the JSON lock info: 200 taken; 409/423 held, the body the current lock info.
- UNLOCK address with the lock info it locked with.
Every request carries basic auth (TF_HTTP_USERNAME / TF_HTTP_PASSWORD).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import msgspec

from trellis_core import state_credentials


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers_md5: str = ""

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class StandInClient:
    session: aiohttp.ClientSession
    address: str
    password: str
    username: str = state_credentials.USERNAME
    lock_info: bytes = b""  # what LOCK sent, sent again by UNLOCK (as tofu does)
    lock_id: str = ""
    sent: list[tuple[str, str]] = field(default_factory=list)

    def _auth(self) -> dict[str, str]:
        pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    async def _request(self, method: str, url: str, body: bytes | None = None, **headers: str) -> Reply:
        self.sent.append((method, url))
        async with self.session.request(method, url, data=body, headers={**self._auth(), **headers}) as resp:
            return Reply(resp.status, await resp.read(), resp.headers.get("Content-MD5", ""))

    async def get(self) -> Reply:
        reply = await self._request("GET", self.address)
        if reply.status == 200 and (md5 := reply.headers_md5):
            assert md5 == base64.b64encode(hashlib.md5(reply.body).digest()).decode(), "Content-MD5 mismatch"
        return reply

    async def put(self, state: bytes) -> Reply:
        md5 = base64.b64encode(hashlib.md5(state).digest()).decode()
        url = f"{self.address}?ID={self.lock_id}" if self.lock_id else self.address
        return await self._request("POST", url, state, **{"Content-Type": "application/json", "Content-MD5": md5})

    async def delete(self) -> Reply:
        return await self._request("DELETE", self.address)

    async def lock(self, operation: str = "OperationTypeApply", who: str = "agent@host") -> Reply:
        lock_id = secrets.token_hex(8) + "-" + secrets.token_hex(4)
        info = {
            "ID": lock_id,
            "Operation": operation,
            "Info": "",
            "Who": who,
            "Version": "1.8.0",
            "Created": datetime.now(UTC).isoformat(),
            "Path": "",
        }
        body = msgspec.json.encode(info)
        reply = await self._request("LOCK", self.address, body, **{"Content-Type": "application/json"})
        if reply.status == 200:
            self.lock_info, self.lock_id = body, lock_id
        return reply

    async def unlock(self) -> Reply:
        reply = await self._request("UNLOCK", self.address, self.lock_info, **{"Content-Type": "application/json"})
        if reply.status == 200:
            self.lock_info, self.lock_id = b"", ""
        return reply


def state_document(serial: int, lineage: str = "lin-1", outputs: dict[str, Any] | None = None) -> bytes:
    """A Terraform state (format 4) as tofu writes it."""
    state = {
        "version": 4,
        "terraform_version": "1.8.0",
        "serial": serial,
        "lineage": lineage,
        "outputs": {k: {"value": v, "type": "string"} for k, v in (outputs or {}).items()},
        "resources": [],
        "check_results": None,
    }
    return msgspec.json.encode(state)


async def add_run(database_url: str, tenant: str, run_id: str, environment: str, status: str = "running") -> None:
    """A run row as the projection writes it (the store checks a credential's run against it)."""
    conn = await asyncpg.connect(database_url)
    try:
        finished = "now()" if status in ("failed", "cancelled", "succeeded", "rejected") else "NULL"
        await conn.execute(
            "INSERT INTO runs (tenant, run_id, environment, action, status, requested_at, finished_at) "
            f"VALUES ($1, $2, $3, 'deploy', $4, now(), {finished})",
            tenant,
            run_id,
            environment,
            status,
        )
    finally:
        await conn.close()


async def end_run(database_url: str, tenant: str, run_id: str, status: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE runs SET status = $3, finished_at = now() WHERE tenant = $1 AND run_id = $2",
            tenant,
            run_id,
            status,
        )
    finally:
        await conn.close()
