"""What the embedded stack does once its store and gateway run: wait until they answer, and give
its tenant an admin token (created once, saved in credentials.json, reused on later starts)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TypeVar

import aiohttp
from nats.aio.client import Client as NATS

from trellis_core.errors import TrellisError
from trellis_store.api import IssuedToken, Ping, Pong, Principal, StoreError, TenantCreate, TokenCreate, TokenVerify
from trellis_store.client import StoreClient

POLL_SECONDS = 0.1
STARTUP_SECONDS = 90.0  # migrations on a cold PostgreSQL, on a busy 2-core machine
BOOTSTRAP_USER = "admin"
ACTOR = "trellis dev stack"


T = TypeVar("T")


def ok_answer(answer: T | StoreError, doing: str) -> T:
    """The store's answer, or a TrellisError saying what could not be done and why."""
    if isinstance(answer, StoreError):
        raise TrellisError(f"could not {doing}: {answer.code}: {answer.message}")
    return answer


async def wait_for_store(nc: NATS, within: float = STARTUP_SECONDS) -> None:
    """Return once the store answers a ping; TrellisError with its last refusal after `within` s."""
    store = StoreClient(nc, timeout=5.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while True:
            answer = await store.ask(Ping(), Pong)
            if isinstance(answer, Pong):
                return
            if loop.time() > deadline:
                raise TrellisError(f"the state store did not become ready within {within:g} s: {answer.message}")
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await store.close()


async def tenant_token(nc: NATS, tenant: str, saved: str) -> str:
    """The admin token of `tenant`: the saved one while the store still knows it, else a new one
    (the tenant created with it, or, if it exists already, a new admin token of it)."""
    store = StoreClient(nc, timeout=10.0)
    try:
        if saved:
            who = await store.ask(TokenVerify(token_sha256=hashlib.sha256(saved.encode()).hexdigest()), Principal)
            if isinstance(who, Principal) and who.tenant == tenant and who.role == "admin":
                return saved
        issued = await store.ask(TenantCreate(name=tenant, admin_user=BOOTSTRAP_USER, actor=ACTOR), IssuedToken)
        if isinstance(issued, StoreError) and issued.code == "conflict":
            request = TokenCreate(tenant=tenant, role="admin", user=BOOTSTRAP_USER, actor=ACTOR)
            issued = await store.ask(request, IssuedToken)
        if isinstance(issued, StoreError):
            raise TrellisError(f"could not give tenant {tenant} an admin token: {issued.code}: {issued.message}")
        return issued.token
    finally:
        await store.close()


async def wait_for_gateway(url: str, within: float = STARTUP_SECONDS) -> None:
    """Return once `GET <url>/healthz` answers 200; TrellisError saying what it answered last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        while True:
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if loop.time() > deadline:
                raise TrellisError(f"the gateway at {url} did not answer within {within:g} s ({last})")
            await asyncio.sleep(POLL_SECONDS)
