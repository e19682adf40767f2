"""Refused bearer tokens are remembered: made-up tokens do not cost a store query each (a
malformed one for minutes, a well-formed unknown one for seconds), while a token minted a moment
ago works at once and a store that cannot answer is asked again next time."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from runs_support import Api, gateway_stack

from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_gateway.auth import TokenCache, verify_token, well_formed
from trellis_store.api import Principal, StoreError, TokenVerify
from trellis_store.tokens import new_token

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


@pytest.fixture
def verifications(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The token digests the gateway asks the store to verify, in order."""
    asked: list[str] = []
    ask = api.gateway.store.ask

    async def counting(request: Any, answer: Any) -> Any:
        if isinstance(request, TokenVerify):
            asked.append(request.token_sha256)
        return await ask(request, answer)

    monkeypatch.setattr(api.gateway.store, "ask", counting)
    return asked


async def _status(api: Api, token: str) -> int:
    async with api.session.get(api.url + "/v1/environments", headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status


async def test_a_refused_token_is_not_asked_of_the_store_again_at_once(api: Api, verifications: list[str]) -> None:
    api.gateway.tokens.refusal_ttl = 60.0  # the machine may be slow: the test is of the caching, not the ttl
    for token in ("made-up", "trls_" + secrets.token_urlsafe(32)):
        assert [await _status(api, token) for _ in range(5)] == [401] * 5
        assert len(verifications) == 1, verifications
        verifications.clear()


async def test_a_token_minted_after_refusals_works_at_once(api: Api, verifications: list[str]) -> None:
    for _ in range(3):
        assert await _status(api, new_token()) == 401
    minted = await api.token("viewer", "new@example.com")
    assert await _status(api, minted) == 200


async def test_a_store_that_cannot_answer_is_asked_again(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    ask = api.gateway.store.ask
    calls: list[str] = []

    async def unavailable(request: Any, answer: Any) -> Any:
        if isinstance(request, TokenVerify):
            calls.append(request.token_sha256)
            return StoreError(code="unavailable", message="the store is down")
        return await ask(request, answer)

    monkeypatch.setattr(api.gateway.store, "ask", unavailable)
    assert await _status(api, api.tokens["viewer"]) == 503
    monkeypatch.setattr(api.gateway.store, "ask", ask)
    assert await _status(api, api.tokens["viewer"]) == 200
    assert len(calls) == 1


class _Store:
    """A store that knows no token and counts the questions."""

    def __init__(self) -> None:
        self.asked = 0

    async def ask(self, request: Any, answer: Any) -> StoreError | Principal:
        self.asked += 1
        return StoreError(code="not_found", message="no such token")


async def test_refusals_last_seconds_for_a_well_formed_token_and_minutes_for_a_malformed_one() -> None:
    now = [100.0]
    cache = TokenCache(clock=lambda: now[0], refusal_capacity=2)
    store: Any = _Store()
    good, bad = new_token(), "not-a-trellis-token"
    assert well_formed(good)
    assert not well_formed(bad)
    for token in (good, bad, good, bad):
        assert isinstance(await verify_token(store, cache, token), StoreError)
    assert store.asked == 2
    now[0] += 2.5  # the well-formed refusal is forgotten, the malformed one kept
    await verify_token(store, cache, good)
    await verify_token(store, cache, bad)
    assert store.asked == 3
    now[0] += 300.0
    await verify_token(store, cache, bad)
    assert store.asked == 4
    for token in ("trls_a", "trls_b", "trls_c"):  # the oldest refusal goes first when full
        await verify_token(store, cache, token)
    await verify_token(store, cache, "trls_a")
    assert store.asked == 8
