"""The store's request/reply API through its real interface: `serve` on a real PostgreSQL and
nats-server, asked with StoreClient. Tenants, tokens, templates, environments, webhooks."""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import pytest
from store_api_support import (
    RESOURCE_TEXT,
    TEMPLATE_TEXT,
    RunningStore,
    bundle,
    env_put,
    running_store,
    store,
    tenant_with_template,
)

from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.rpc import Requester
from trellis_core.sealed import MasterKeyring, is_token
from trellis_core.settings import Settings
from trellis_core.subjects import STREAM_SUBJECTS
from trellis_store.api import (
    MASK,
    RESULT_TYPES,
    AuditEntries,
    AuditList,
    AuditRecord,
    Documents,
    Environment,
    EnvironmentGet,
    EnvironmentList,
    Environments,
    IssuedToken,
    Ok,
    Ping,
    Pong,
    Principal,
    Reply,
    TemplateBundle,
    TemplateBundleGet,
    TemplateList,
    TemplatePublish,
    TenantCreate,
    TokenCreate,
    TokenVerify,
    WebhookResolve,
    WebhookRotate,
    WebhookSecret,
    subject_of,
)
from trellis_store.service import serve

__all__ = ["store"]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ---- start-up and the wire ------------------------------------------------------------------------


async def test_the_store_refuses_to_start_without_a_database_url_or_a_seal_key(
    bus: Bus, settings: Settings, database_url: str
) -> None:
    stop = asyncio.Event()
    with pytest.raises(ConfigError, match="TRELLIS_DATABASE_URL"):
        await serve(bus, msgspec.structs.replace(settings, database_url="", seal_key="x"), stop)
    with pytest.raises(ConfigError, match="TRELLIS_SEAL_KEY is not set"):
        await serve(bus, msgspec.structs.replace(settings, database_url=database_url, seal_key=""), stop)
    with pytest.raises(ConfigError, match="TRELLIS_SEAL_KEY: must decode to 32 bytes"):
        await serve(bus, msgspec.structs.replace(settings, database_url=database_url, seal_key="c2hvcnQ="), stop)


async def test_ping_answers_the_schema_version_and_projection_positions(store: RunningStore) -> None:
    pong = await store.ask(Ping(), Pong)
    assert pong.schema_version >= 1
    assert pong.projected_events >= 0
    assert pong.projected_logs >= 0


async def test_an_undecodable_request_is_refused_naming_the_field(store: RunningStore, bus: Bus) -> None:
    requester = Requester(bus.nc)
    try:

        async def reply(subject: str, payload: bytes) -> Reply:
            data = await requester.request(subject, payload, timeout=10)
            return msgspec.json.decode(data, type=Reply)

        missing = await reply("trellis.store.api.run.get", b'{"op": "run.get", "tenant": "x"}')
        assert missing.error is not None
        assert (missing.error.code, missing.error.path) == ("invalid", "run_id")
        wrong_type = await reply(
            "trellis.store.api.environment.put",
            b'{"op": "environment.put", "tenant": "x", "name": "dev", "template": {"name": 1, "version": "1"}}',
        )
        assert wrong_type.error is not None
        assert (wrong_type.error.code, wrong_type.error.path) == ("invalid", "template.name")
        assert "template.name" in wrong_type.error.message
        unknown = await reply("trellis.store.api.nope", b'{"op": "nope"}')
        assert unknown.error is not None
        assert (unknown.error.code, unknown.error.path) == ("invalid", "op")
        garbage = await reply("trellis.store.api.ping", b"\xff not json")
        assert garbage.error is not None
        assert garbage.error.code == "invalid"
    finally:
        await requester.close()


async def test_a_stopped_store_answers_nothing_and_the_client_says_unavailable(
    bus: Bus, settings: Settings, database_url: str
) -> None:
    async with running_store(bus, settings, database_url) as running:
        await running.ask(Ping(), Pong)
    assert running.task.done()
    assert running.task.exception() is None
    answer = await running.client.ask(Ping(), Pong, timeout=5)
    assert isinstance(answer, msgspec.Struct)
    assert getattr(answer, "code", "") == "unavailable"


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(want) == len(got)


def test_no_store_subject_is_captured_by_a_stream() -> None:
    """A stream capturing a request would store it and answer a PubAck racing the store's reply."""
    assert _matches("trellis.*.run.>", "trellis.store.run.get"), "the matcher itself"
    for request_type in RESULT_TYPES:
        subject = subject_of(request_type)
        for stream, patterns in STREAM_SUBJECTS.items():
            assert not any(_matches(p, subject) for p in patterns), f"{stream} captures {subject}"


# ---- tenants and tokens -----------------------------------------------------------------------------


async def test_a_tenant_comes_with_an_admin_token_kept_only_as_its_sha256(store: RunningStore, unique: str) -> None:
    issued = await store.ask(TenantCreate(name=unique, admin_user="alice@example.com"), IssuedToken)
    assert issued.token.startswith("trls_")
    assert len(issued.token) > 40
    assert (issued.tenant, issued.role, issued.user) == (unique, "admin", "alice@example.com")
    principal = await store.ask(TokenVerify(token_sha256=sha(issued.token)), Principal)
    assert principal == Principal(tenant=unique, role="admin", user="alice@example.com", token_id=issued.token_id)
    rows = await store.sql("SELECT t::text AS row FROM tokens t WHERE tenant = $1", unique)
    assert len(rows) == 1
    assert issued.token not in rows[0]["row"]
    assert sha(issued.token) in rows[0]["row"]


async def test_creating_a_tenant_twice_is_a_conflict_and_a_bad_name_is_invalid(
    store: RunningStore, unique: str
) -> None:
    await store.ask(TenantCreate(name=unique), IssuedToken)
    again = await store.refused(TenantCreate(name=unique))
    assert (again.code, again.path) == ("conflict", "name")
    for bad in ("", "a.b", "has space", "x" * 129, "star*"):
        refused = await store.refused(TenantCreate(name=bad))
        assert (refused.code, refused.path) == ("invalid", "name"), bad


async def test_a_tenant_the_projection_already_knows_can_still_be_created(store: RunningStore, unique: str) -> None:
    await store.sql("INSERT INTO tenants (name) VALUES ($1)", unique)
    issued = await store.ask(TenantCreate(name=unique), IssuedToken)
    assert issued.tenant == unique
    entries = (await store.ask(AuditList(tenant=unique), AuditEntries)).entries
    assert [(e.action, e.detail) for e in entries] == [
        ("tenant.create", {"admin_user": "admin", "adopted": True})  # taken over, and the audit says so
    ]
    fresh = await store.ask(TenantCreate(name=unique + "f"), IssuedToken)
    assert fresh.tenant == unique + "f"
    entries = (await store.ask(AuditList(tenant=unique + "f"), AuditEntries)).entries
    assert [(e.action, e.detail) for e in entries] == [("tenant.create", {"admin_user": "admin"})]


async def test_tokens_of_each_role_verify_and_unknown_ones_do_not(store: RunningStore, unique: str) -> None:
    await store.ask(TenantCreate(name=unique), IssuedToken)
    viewer = await store.ask(TokenCreate(tenant=unique, role="viewer", user="vic", actor="admin"), IssuedToken)
    principal = await store.ask(TokenVerify(token_sha256=sha(viewer.token)), Principal)
    assert (principal.role, principal.user, principal.tenant) == ("viewer", "vic", unique)
    unknown = await store.refused(TokenVerify(token_sha256=sha("trls_nope")))
    assert unknown.code == "not_found"
    no_tenant = await store.refused(TokenCreate(tenant=unique + "x", role="admin", user="eve"))
    assert (no_tenant.code, no_tenant.path) == ("not_found", "tenant")
    no_user = await store.refused(TokenCreate(tenant=unique, role="admin", user=" "))
    assert (no_user.code, no_user.path) == ("invalid", "user")


async def test_a_token_with_an_unknown_role_is_refused_naming_role(store: RunningStore, bus: Bus, unique: str) -> None:
    requester = Requester(bus.nc)
    try:
        payload = msgspec.json.encode({"op": "token.create", "tenant": unique, "role": "root", "user": "x"})
        reply = msgspec.json.decode(
            await requester.request("trellis.store.api.token.create", payload, timeout=10), type=Reply
        )
    finally:
        await requester.close()
    assert reply.error is not None
    assert (reply.error.code, reply.error.path) == ("invalid", "role")


# ---- templates ----------------------------------------------------------------------------------------


async def test_publishing_stores_every_document_and_identical_republishing_is_a_no_op(
    store: RunningStore, unique: str
) -> None:
    await tenant_with_template(store, unique)
    listed = await store.ask(TemplateList(tenant=unique), Documents)
    assert [(d.kind, d.name, d.version) for d in listed.documents] == [
        ("EnvironmentTemplate", "web", "1"),
        ("ResourceTemplate", "vpc", "1"),
    ]
    first = listed.documents[0].published_at
    sources, documents = bundle(
        ("web.yaml", "EnvironmentTemplate", "web", "1", TEMPLATE_TEXT),
        ("vpc.yaml", "ResourceTemplate", "vpc", "1", RESOURCE_TEXT),
    )
    again = await store.ask(TemplatePublish(tenant=unique, sources=sources, documents=documents), Documents)
    assert again.documents[0].published_at == first
    only_resources = await store.ask(TemplateList(tenant=unique, kind="ResourceTemplate"), Documents)
    assert [d.name for d in only_resources.documents] == ["vpc"]
    by_name = await store.ask(TemplateList(tenant=unique, name="web"), Documents)
    assert [d.kind for d in by_name.documents] == ["EnvironmentTemplate"]
    audit = await store.ask(AuditList(tenant=unique), AuditEntries)
    assert [e.action for e in audit.entries].count("template.publish") == 1


async def test_a_changed_published_version_refuses_the_whole_bundle_naming_it(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    sources, documents = bundle(
        ("web.yaml", "EnvironmentTemplate", "web", "2", TEMPLATE_TEXT + "# new\n"),
        ("vpc.yaml", "ResourceTemplate", "vpc", "1", RESOURCE_TEXT + "# changed\n"),
    )
    refused = await store.refused(TemplatePublish(tenant=unique, sources=sources, documents=documents))
    assert refused.code == "conflict"
    assert "ResourceTemplate vpc version 1" in refused.message
    assert refused.path == "documents[1]"
    assert [p.file for p in refused.problems] == ["vpc.yaml"]
    listed = await store.ask(TemplateList(tenant=unique, name="web"), Documents)
    assert [d.version for d in listed.documents] == ["1"], "nothing of a refused bundle is kept"


async def test_publishing_bad_bundles_is_invalid_naming_the_field(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    sources, documents = bundle(("a.yaml", "EnvironmentTemplate", "a", "1", "x"))
    no_sources = await store.refused(TemplatePublish(tenant=unique, sources=(), documents=documents))
    assert (no_sources.code, no_sources.path) == ("invalid", "sources")
    no_docs = await store.refused(TemplatePublish(tenant=unique, sources=sources, documents=()))
    assert (no_docs.code, no_docs.path) == ("invalid", "documents")
    no_version = msgspec.structs.replace(documents[0], version="")
    refused = await store.refused(TemplatePublish(tenant=unique, sources=sources, documents=(no_version,)))
    assert (refused.code, refused.path) == ("invalid", "documents[0].version")
    twice = await store.refused(TemplatePublish(tenant=unique, sources=sources, documents=documents * 2))
    assert (twice.code, twice.path) == ("invalid", "documents[1]")
    stranger = await store.refused(TemplatePublish(tenant=unique + "zz", sources=sources, documents=documents))
    assert stranger.code == "not_found"


async def test_a_template_bundle_answers_the_sources_published_with_it_and_only_to_its_tenant(
    store: RunningStore, unique: str
) -> None:
    await tenant_with_template(store, unique)
    got = await store.ask(TemplateBundleGet(tenant=unique, name="web", version="1"), TemplateBundle)
    assert {s.path: s.text for s in got.sources} == {"web.yaml": TEMPLATE_TEXT, "vpc.yaml": RESOURCE_TEXT}
    missing = await store.refused(TemplateBundleGet(tenant=unique, name="web", version="9"))
    assert missing.code == "not_found"
    not_an_env = await store.refused(TemplateBundleGet(tenant=unique, name="vpc", version="1"))
    assert not_an_env.code == "not_found"
    other = unique + "b"
    await store.ask(TenantCreate(name=other), IssuedToken)
    cross = await store.refused(TemplateBundleGet(tenant=other, name="web", version="1"))
    assert cross.code == "not_found"
    assert (await store.ask(TemplateList(tenant=other), Documents)).documents == ()


# ---- environments ---------------------------------------------------------------------------------------


async def test_sensitive_variables_are_sealed_at_rest_and_answered_as_tokens(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    secret = "hunter2-very-secret"
    put = await store.ask(
        env_put(unique, variables={"region": "eu", "password": secret}, sensitive=("password",), agents=("pool-a",)),
        Environment,
    )
    keys = MasterKeyring.from_settings(store.settings).for_tenant(unique)
    token = put.variables["password"]
    assert is_token(token)
    assert keys.open(token) == secret
    assert put.variables["region"] == "eu"
    assert (put.etag, put.status, put.agents, put.sensitive) == ('"1"', "new", ("pool-a",), ("password",))
    rows = await store.sql(
        "SELECT e::text AS row, sealed::text AS sealed FROM environments e WHERE tenant = $1", unique
    )
    assert secret not in rows[0]["row"], "a sensitive value is never stored in clear"
    assert token in rows[0]["sealed"]
    audit = await store.sql("SELECT detail::text AS d FROM audit WHERE tenant = $1", unique)
    assert not any(secret in r["d"] for r in audit)
    for reveal in (False, True):  # reveal changes nothing: tokens either way, never plain text
        got = await store.ask(EnvironmentGet(tenant=unique, name="dev", reveal=reveal), Environment)
        assert got.variables == {"region": "eu", "password": token}
    listed = await store.ask(EnvironmentList(tenant=unique), Environments)
    assert listed.environments[0].variables == {"region": "eu", "password": token}


async def test_a_token_given_for_a_sensitive_variable_stays_and_one_that_does_not_open_is_refused(
    store: RunningStore, unique: str
) -> None:
    await tenant_with_template(store, unique)
    keys = MasterKeyring.from_settings(store.settings).for_tenant(unique)
    token = keys.seal("given")
    put = await store.ask(env_put(unique, variables={"pw": token}, sensitive=("pw",)), Environment)
    assert put.variables == {"pw": token}
    others = MasterKeyring.from_settings(store.settings).for_tenant(unique + "x").seal("theirs")
    refused = await store.refused(env_put(unique, variables={"pw": others}, sensitive=("pw",), force=True))
    assert (refused.code, refused.path) == ("invalid", "variables.pw")
    assert "theirs" not in refused.message


async def test_an_update_needs_the_current_etag(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    await store.ask(env_put(unique, variables={"a": "1"}), Environment)
    blind = await store.refused(env_put(unique, variables={"a": "2"}))
    assert (blind.code, blind.path) == ("precondition_failed", "if_match")
    assert '"1"' in blind.message
    stale = await store.refused(env_put(unique, variables={"a": "2"}, if_match='"7"'))
    assert (stale.code, stale.path) == ("precondition_failed", "if_match")
    updated = await store.ask(env_put(unique, variables={"a": "2"}, if_match='"1"'), Environment)
    assert (updated.etag, updated.variables) == ('"2"', {"a": "2"})
    replayed = await store.refused(env_put(unique, variables={"a": "3"}, if_match='"1"'))
    assert replayed.code == "precondition_failed"
    forced = await store.ask(env_put(unique, variables={"a": "4"}, force=True), Environment)
    assert forced.etag == '"3"'
    absent = await store.refused(env_put(unique, name="other", if_match='"1"'))
    assert absent.code == "precondition_failed"


async def test_the_mask_sent_back_keeps_the_sealed_value(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    put = await store.ask(env_put(unique, variables={"pw": "s3cret"}, sensitive=("pw",)), Environment)
    shown = {"pw": MASK}  # as the gateway displayed it
    await store.ask(env_put(unique, variables=shown, sensitive=("pw",), if_match=put.etag), Environment)
    again = await store.ask(EnvironmentGet(tenant=unique, name="dev"), Environment)
    assert again.variables == put.variables


async def test_bad_environments_are_refused_naming_the_field(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    bad_name = await store.refused(env_put(unique, name="no/slash"))
    assert (bad_name.code, bad_name.path) == ("invalid", "name")
    unknown = await store.refused(
        msgspec.structs.replace(
            env_put(unique), template=msgspec.structs.replace(env_put(unique).template, version="9")
        )
    )
    assert (unknown.code, unknown.path) == ("invalid", "template")
    assert "web@9" in unknown.message
    not_a_tenant = await store.refused(env_put(unique + "q"))
    assert not_a_tenant.code == "not_found"


async def test_environments_list_by_name_in_pages_and_never_across_tenants(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    for name in ("c", "a", "b", "d"):
        await store.ask(env_put(unique, name=name, variables={"k": name, "s": "x"}, sensitive=("s",)), Environment)
    first = await store.ask(EnvironmentList(tenant=unique, limit=3), Environments)
    assert [e.name for e in first.environments] == ["a", "b", "c"]
    assert all(is_token(e.variables["s"]) for e in first.environments)  # tokens, never plain text
    rest = await store.ask(EnvironmentList(tenant=unique, limit=3, after="c"), Environments)
    assert [e.name for e in rest.environments] == ["d"]
    bad = await store.refused(EnvironmentList(tenant=unique, limit=0))
    assert (bad.code, bad.path) == ("invalid", "limit")
    other = unique + "o"
    await store.ask(TenantCreate(name=other), IssuedToken)
    assert (await store.ask(EnvironmentList(tenant=other), Environments)).environments == ()
    cross = await store.refused(EnvironmentGet(tenant=other, name="a"))
    assert (cross.code, cross.path) == ("not_found", "name")


# ---- webhooks ---------------------------------------------------------------------------------------------


async def test_a_webhook_secret_is_shown_once_stored_hashed_and_resolves_its_environment(
    store: RunningStore, unique: str
) -> None:
    await tenant_with_template(store, unique)
    await store.ask(env_put(unique), Environment)
    first = await store.ask(WebhookRotate(tenant=unique, environment="dev", actor="alice"), WebhookSecret)
    rows = await store.sql("SELECT webhook_sha256 FROM environments WHERE tenant = $1", unique)
    assert rows[0]["webhook_sha256"] == sha(first.secret)
    target = await store.ask(WebhookResolve(environment="dev", secret_sha256=sha(first.secret)), msgspec.Raw)
    assert msgspec.json.decode(target) == {"tenant": unique, "environment": "dev"}
    wrong_env = await store.refused(WebhookResolve(environment="prod", secret_sha256=sha(first.secret)))
    assert wrong_env.code == "not_found"
    second = await store.ask(WebhookRotate(tenant=unique, environment="dev"), WebhookSecret)
    stale = await store.refused(WebhookResolve(environment="dev", secret_sha256=sha(first.secret)))
    assert stale.code == "not_found"
    assert second.secret != first.secret
    missing = await store.refused(WebhookRotate(tenant=unique, environment="nope"))
    assert (missing.code, missing.path) == ("not_found", "environment")


# ---- audit ----------------------------------------------------------------------------------------------


async def test_every_change_is_audited_newest_first_and_records_can_be_added(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    await store.ask(env_put(unique, actor="bob", remote="10.0.0.9"), Environment)
    await store.ask(
        AuditRecord(
            tenant=unique, actor="eve", action="approval.refused", target="r1", detail={"why": "not an approver"}
        ),
        Ok,
    )
    entries = (await store.ask(AuditList(tenant=unique), AuditEntries)).entries
    assert [e.action for e in entries] == ["approval.refused", "environment.put", "template.publish", "tenant.create"]
    assert entries[0].detail == {"why": "not an approver"}
    assert (entries[1].actor, entries[1].target, entries[1].remote) == ("bob", "dev", "10.0.0.9")
    limited = await store.ask(AuditList(tenant=unique, limit=1), AuditEntries)
    assert len(limited.entries) == 1
    bad = await store.refused(AuditRecord(tenant=unique, actor="", action="x"))
    assert (bad.code, bad.path) == ("invalid", "actor")
    other = await store.ask(AuditList(tenant=unique + "n"), AuditEntries)
    assert other.entries == ()


async def test_an_audit_detail_nested_too_deep_is_refused_as_invalid(
    store: RunningStore, bus: Bus, unique: str
) -> None:
    """100,000 nested lists (200 kB, under the bus's payload limit) exceed the decoder's depth:
    the caller hears `invalid` rather than nothing (a timeout), and the store serves on."""
    await store.ask(TenantCreate(name=unique), IssuedToken)
    depth = 100_000
    payload = (
        b'{"op": "audit.record", "tenant": "' + unique.encode() + b'", "actor": "eve", "action": "x", '
        b'"detail": {"deep": ' + b"[" * depth + b"]" * depth + b"}}"
    )
    requester = Requester(bus.nc)
    try:
        data = await requester.request("trellis.store.api.audit.record", payload, timeout=10)
    finally:
        await requester.close()
    reply = msgspec.json.decode(data, type=Reply)
    assert reply.error is not None, reply
    assert reply.error.code == "invalid"
    assert "nested too deeply" in reply.error.message
    entries = (await store.ask(AuditList(tenant=unique), AuditEntries)).entries
    assert [e.action for e in entries] == ["tenant.create"]  # nothing recorded
    await store.ask(Ping(), Pong)
