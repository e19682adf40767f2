"""Schemathesis against the live `/openapi.json`: generated requests to every operation, with a
tenant admin's bearer token, never get a server error nor an answer its schema does not allow."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from gateway_support import Api, GatewayServer, Tenant
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = pytest.mark.timeout(180)

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 8}
CHECKS = [not_a_server_error, response_schema_conformance]


def fuzz(url: str, token: str) -> list[str]:
    """Every operation, in both generation modes; one line per failing operation."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=20)

            try:
                call()
            except Unsatisfiable:  # nothing to get wrong: no parameter and no body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


async def test_generated_requests_get_no_server_error_and_answers_fit_the_schema(
    api: Api, gateway_server: GatewayServer, published: Tenant
) -> None:
    body = {"template": {"name": "shop", "version": "v1"}, "variables": {"team": "a"}}
    (await api.call("PUT", "/v1/environments/dev", token=published.operator, json=body)).ok(201)
    failures = await asyncio.to_thread(fuzz, gateway_server.url, published.admin)
    assert not failures, "\n\n".join(failures)
