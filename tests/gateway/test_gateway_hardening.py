"""Security-review findings, each shown over HTTP against the real gateway: bodies that cost the
event loop too much, sensitive outputs on SSE, stream caps, secrets in logs, approval tokens used
up by bodies that were never going to be accepted, and refused bearer tokens asked again and again."""

from __future__ import annotations

import asyncio

import pytest
from gateway_support import Api, Tenant

pytestmark = pytest.mark.timeout(60)

DECIDE = "/v1/runs/r1/approvals/a"


async def test_a_megabyte_of_backslashes_is_answered_and_the_gateway_keeps_serving(api: Api, tenant: Tenant) -> None:
    # The NUL check's `(\\+)u0000` retried every suffix of a backslash run: quadratic, the event loop
    # (and this test, sharing it) froze until the pytest timeout.
    bodies = [b"\\" * 1_000_000, b'"' + b"\\" * 1_000_000 + b'"', b'{"comment": "' + b"\\" * 999_999 + b'u0000"}']
    for body in bodies:
        decided, health = await asyncio.gather(
            api.call("POST", DECIDE, token=tenant.viewer, data=body, headers={"Content-Type": "application/json"}),
            api.call("GET", "/healthz"),
        )
        assert decided.status in (400, 422), (decided.status, decided.body[:300])
        decided.problem(decided.status)
        assert health.status == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"decision": "approve", "comment": "\\u0000"}', 422),  # an escaped NUL
        (b'{"decision": "approve", "comment": "\\\\\\u0000"}', 422),  # a backslash, then an escaped NUL
        (b'{"decision": "approve", "comment": "\x00"}', 422),  # a raw NUL
        (b'{"decision": "approve", "comment": "\\\\u0000"}', 404),  # the text \u0000: no NUL; no such run
        (b'{"decision": "approve", "comment": "\\\\\\\\u0000"}', 404),
    ],
)
async def test_a_nul_in_a_string_is_refused_and_an_escaped_backslash_before_u0000_is_not(
    api: Api, tenant: Tenant, body: bytes, status: int
) -> None:
    answer = await api.call(
        "POST", DECIDE, token=tenant.viewer, data=body, headers={"Content-Type": "application/json"}
    )
    problem = answer.problem(status)
    if status == 422:
        assert "NUL" in problem["detail"]
