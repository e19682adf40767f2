"""Bearer-token auth: 401 without a known token (with a Bearer challenge), 403 for a role too low,
verified tokens cached for a few seconds."""

from __future__ import annotations

import re

import pytest
from gateway_support import Api, Tenant

from trellis_gateway.auth import TokenCache, bearer_token, token_digest
from trellis_store.api import Principal

pytestmark = pytest.mark.timeout(90)

BEARER_ROUTES = [
    ("GET", "/v1/templates"),
    ("POST", "/v1/templates"),
    ("GET", "/v1/environments"),
    ("GET", "/v1/environments/some-env"),
    ("PUT", "/v1/environments/some-env"),
    ("POST", "/v1/environments/some-env/webhook"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/audit"),
]


BAD_HEADERS = [None, "Bearer unknown-token-0123456789", "Bearer", "Token abc", "Bearer " + "x" * 600]


async def test_every_v1_route_answers_401_with_a_challenge_without_a_known_token(api: Api, tenant: Tenant) -> None:
    for method, path in BEARER_ROUTES:
        for header in BAD_HEADERS:
            headers = {"Authorization": header} if header is not None else {}
            answer = await api.call(method, path, headers=headers, json={} if method in ("POST", "PUT") else None)
            problem = answer.problem(401)
            assert re.match(r'Bearer realm="trellis"', answer.headers["WWW-Authenticate"]), (method, path)
            assert "token" in problem["detail"]


async def test_a_role_too_low_is_a_403_naming_the_role_needed(api: Api, tenant: Tenant) -> None:
    for role, method, path in [
        ("viewer", "POST", "/v1/templates"),
        ("viewer", "PUT", "/v1/environments/some-env"),
        ("viewer", "POST", "/v1/environments/some-env/webhook"),
        ("operator", "POST", "/v1/environments/some-env/webhook"),
        ("operator", "POST", "/v1/tokens"),
        ("operator", "GET", "/v1/audit"),
    ]:
        answer = await api.call(method, path, token=tenant.token(role), json={} if method != "GET" else None)
        problem = answer.problem(403)
        assert f"has {role}" in problem["detail"], (role, method, path)


async def test_head_is_checked_as_its_get(api: Api, tenant: Tenant) -> None:
    unauthorized = await api.call("HEAD", "/v1/environments")
    assert unauthorized.status == 401
    assert (await api.call("HEAD", "/v1/environments", token=tenant.viewer)).status == 200


async def test_health_routes_need_no_token(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert (await api.call("GET", path)).status == 200, path


async def test_a_verified_token_is_cached_so_a_burst_asks_the_store_once(api: Api, tenant: Tenant) -> None:
    def misses(text: str) -> float:
        return float(re.search(r'trellis_gateway_auth_cache_total\{result="miss"\} (\S+)', text)[1])  # type: ignore[index]

    before = misses((await api.call("GET", "/metrics")).body.decode())
    for _ in range(5):
        (await api.call("GET", "/v1/environments", token=tenant.viewer)).ok()
    after = misses((await api.call("GET", "/metrics")).body.decode())
    assert after - before <= 1


def test_token_cache_forgets_after_its_ttl_and_when_full() -> None:
    now = [100.0]
    cache = TokenCache(ttl=5.0, capacity=2, clock=lambda: now[0])
    who = Principal(tenant="t", role="viewer", user="u", token_id="k")
    cache.put("a", who)
    assert cache.get("a") == who
    now[0] += 4.9
    assert cache.get("a") == who
    now[0] += 0.2
    assert cache.get("a") is None
    cache.put("a", who)
    cache.put("b", who)
    cache.put("c", who)
    assert cache.get("a") is None  # the oldest went first
    assert cache.get("c") == who


def test_bearer_headers_parse_strictly() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Bearer", "Bearer ", "Basic abc", "abc", "Bearer " + "x" * 513):
        assert bearer_token(bad) is None, bad
    assert token_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
