"""Publishing template bundles: validated as `trellis template validate` does, stored immutably
per version, listed per tenant."""

from __future__ import annotations

import pytest
from gateway_support import SOURCES, TEMPLATES, Api, Tenant

from trellis_core.events import SourceFile
from trellis_gateway.templates_routes import validate_sources
from trellis_templates.compiler import validate_bundle

pytestmark = pytest.mark.timeout(90)

BROKEN = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box}
spec:
  provder: custom
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: Bad_Name}
spec:
  resources: [{name: box}]
"""


async def test_a_valid_bundle_is_published_and_listed(api: Api, tenant: Tenant) -> None:
    answer = await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": SOURCES})
    published = answer.ok(201)
    kinds = {(d["kind"], d["name"], d["version"]) for d in published["documents"]}
    assert kinds == {("ResourceTemplate", "box", "v1"), ("EnvironmentTemplate", "shop", "v1")}
    shop = next(d for d in published["documents"] if d["name"] == "shop")
    assert shop["description"] == "A shop"
    assert shop["path"] == "shop.yaml"
    assert len(shop["digest"]) == 64
    assert any("has no Environment" in w["message"] for w in published["warnings"])
    listed = (await api.call("GET", "/v1/templates", token=tenant.viewer)).ok()["documents"]
    assert {(d["kind"], d["name"], d["version"]) for d in listed} == kinds
    only = await api.call("GET", "/v1/templates", token=tenant.viewer, params={"kind": "EnvironmentTemplate"})
    assert [d["name"] for d in only.ok()["documents"]] == ["shop"]
    named = await api.call("GET", "/v1/templates", token=tenant.viewer, params={"name": "box"})
    assert [d["kind"] for d in named.ok()["documents"]] == ["ResourceTemplate"]


async def test_every_problem_of_a_bundle_comes_back_with_where_and_a_hint(api: Api, tenant: Tenant) -> None:
    sources = [{"path": "broken.yaml", "text": BROKEN}]
    answer = await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": sources})
    problem = answer.problem(422)
    assert problem["path"] == "sources"
    problems = problem["problems"]
    assert len(problems) >= 2
    misspelt = next(p for p in problems if "provder" in p["message"])
    assert (misspelt["file"], misspelt["line"], misspelt["column"]) == ("broken.yaml", 5, 3)
    assert misspelt["path"] == "spec.provder"
    assert "provider" in misspelt["hint"]
    bad_name = next(p for p in problems if p["path"] == "metadata.name")
    assert bad_name["line"] == 9
    assert (await api.call("GET", "/v1/templates", token=tenant.viewer)).ok() == {"documents": []}  # none stored


async def test_the_gateway_reports_what_trellis_template_validate_reports(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "broken.yaml").write_text(BROKEN)
    _, cli_errors, cli_warnings = validate_bundle([str(root / "broken.yaml")])
    _, errors, warnings = validate_sources([SourceFile(path=str(root / "broken.yaml"), text=BROKEN)])
    assert errors == cli_errors
    assert warnings == cli_warnings


async def test_a_yaml_syntax_error_is_a_422_at_its_line(api: Api, tenant: Tenant) -> None:
    sources = [{"path": "bad.yaml", "text": "kind: [unclosed\n  x: 1\n"}]
    problem = (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": sources})).problem(422)
    assert problem["problems"][0]["file"] == "bad.yaml"
    assert problem["problems"][0]["line"] >= 1


async def test_a_changed_published_version_is_a_409_and_the_same_content_republishes(api: Api, tenant: Tenant) -> None:
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": SOURCES})).ok(201)
    again = await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": SOURCES})
    assert again.status == 201
    reformatted = [{"path": "other.yaml", "text": "# a comment changes nothing\n" + TEMPLATES}]
    assert (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": reformatted})).status == 201
    changed = [{"path": "shop.yaml", "text": TEMPLATES.replace("description: A box", "description: A crate")}]
    problem = (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": changed})).problem(409)
    assert "box" in problem["detail"]
    bumped = [{"path": "shop.yaml", "text": TEMPLATES.replace("version: v1", "version: v2")}]
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": bumped})).ok(201)
    listed = await api.call("GET", "/v1/templates", token=tenant.viewer, params={"name": "shop"})
    assert sorted(d["version"] for d in listed.ok()["documents"]) == ["v1", "v2"]


async def test_bad_publish_bodies_are_422s_naming_the_field(api: Api, tenant: Tenant) -> None:
    for body, path in [
        ({}, "sources"),
        ({"sources": []}, "sources"),
        ({"sources": [{"path": "a.yaml"}]}, "sources[0].text"),
        ({"sources": [{"path": "", "text": "x"}]}, "sources[0].path"),
        ({"sources": [{"path": "a.yaml", "text": 3}]}, "sources[0].text"),
        ({"sources": SOURCES, "extra": 1}, "extra"),
        ({"sources": [*SOURCES, *SOURCES]}, "sources[1].path"),
    ]:
        answer = await api.call("POST", "/v1/templates", token=tenant.operator, json=body)
        assert answer.problem(422)["path"] == path, body
    empty = await api.call(
        "POST", "/v1/templates", token=tenant.operator, json={"sources": [{"path": "a", "text": ""}]}
    )
    assert "no documents" in empty.problem(422)["problems"][0]["message"]


async def test_a_bundle_larger_than_a_run_can_carry_is_a_413(api: Api, tenant: Tenant) -> None:
    big = [{"path": "big.yaml", "text": "# " + "x" * 600_000 + "\n" + TEMPLATES}]
    problem = (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": big})).problem(413)
    assert "TRELLIS_BUNDLE_MAX_BYTES" in problem["detail"]


async def test_another_tenant_sees_none_of_them(api: Api, tenant: Tenant, other_tenant: Tenant) -> None:
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": SOURCES})).ok(201)
    assert (await api.call("GET", "/v1/templates", token=other_tenant.admin)).ok() == {"documents": []}
    changed = [{"path": "shop.yaml", "text": TEMPLATES.replace("description: A box", "description: Theirs")}]
    assert (
        await api.call("POST", "/v1/templates", token=other_tenant.operator, json={"sources": changed})
    ).status == 201


async def test_publishing_is_audited_with_who_and_from_where(api: Api, tenant: Tenant) -> None:
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": SOURCES})).ok(201)
    entries = (await api.call("GET", "/v1/audit", token=tenant.admin)).ok()["entries"]
    publish = next(e for e in entries if e["action"] == "template.publish")
    assert publish["actor"] == f"operator@{tenant.name}.example"
    assert publish["remote"] == "127.0.0.1"
