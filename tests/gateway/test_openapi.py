"""`/openapi.json` is OpenAPI 3.1 generated from the routes and the very Structs the handlers use."""

from __future__ import annotations

import msgspec
import pytest
from gateway_support import Api

from trellis_gateway import openapi
from trellis_gateway.context import ENDPOINTS, ProblemDetail
from trellis_gateway.environments_routes import EnvironmentBody
from trellis_gateway.templates_routes import PublishBody

pytestmark = pytest.mark.timeout(90)
REF = "#/components/schemas/{name}"


async def test_every_route_is_documented_with_its_parameters_and_security(api: Api) -> None:
    answer = await api.call("GET", "/openapi.json")
    doc = answer.ok()
    assert answer.content_type == "application/json"
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for method, path in [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/v1/tenants"),
        ("post", "/v1/tokens"),
        ("get", "/v1/audit"),
        ("post", "/v1/templates"),
        ("get", "/v1/templates"),
        ("put", "/v1/environments/{name}"),
        ("get", "/v1/environments/{name}"),
        ("get", "/v1/environments"),
        ("post", "/v1/environments/{name}/webhook"),
    ]:
        assert method in paths[path], (method, path)
    put = paths["/v1/environments/{name}"]["put"]
    assert put["security"] == [{"bearer": []}]
    assert put["x-trellis-role"] == "operator"
    params = {(p["in"], p["name"]) for p in put["parameters"]}
    assert ("path", "name") in params
    assert ("header", "If-Match") in params
    assert put["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF.format(name="EnvironmentBody")}
    assert set(put["responses"]) >= {"200", "401", "403", "404", "412", "422", "default"}
    problem_ref = {"$ref": REF.format(name="ProblemDetail")}
    assert put["responses"]["422"]["content"]["application/problem+json"]["schema"] == problem_ref
    assert "security" not in paths["/healthz"]["get"]
    audit = {p["name"]: p["in"] for p in paths["/v1/audit"]["get"]["parameters"]}
    assert audit == {"limit": "query"}
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


async def test_the_schemas_are_msgspecs_own_for_the_handlers_structs(api: Api) -> None:
    components = (await api.call("GET", "/openapi.json")).ok()["components"]["schemas"]
    _, expected = msgspec.json.schema_components([EnvironmentBody, PublishBody, ProblemDetail], ref_template=REF)
    for name, schema in expected.items():
        assert components[name] == msgspec.json.decode(msgspec.json.encode(schema)), name
    assert components["EnvironmentBody"]["additionalProperties"] is False
    assert "problems" in components["ProblemDetail"]["properties"]


def test_route_templates_become_openapi_paths_with_their_parameters() -> None:
    assert openapi.openapi_path("/v1/runs/{run_id}/approvals/{activity:.+}") == "/v1/runs/{run_id}/approvals/{activity}"
    assert openapi.path_parameters("/v1/runs/{run_id}/approvals/{activity:.+}") == ["run_id", "activity"]
    assert openapi.openapi_path("/healthz") == "/healthz"


def test_operation_ids_are_unique() -> None:
    from trellis_gateway.app import route_modules

    route_modules()
    doc = openapi.document(ENDPOINTS)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
