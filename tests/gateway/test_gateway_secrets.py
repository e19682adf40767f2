"""Secrets never in clear through the gateway: every sealed token in every JSON answer and SSE
frame reads `********` (masked where answers are encoded, not per route), sensitive outputs stay
masked, and a run request never goes out with a sensitive variable the store answered in clear."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors
import pytest
from runs_support import HELLO, Api, gateway_stack

from trellis_core import sealed, subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, ActivityLogChunk, RunCompleted, RunRequested, decode_run_event
from trellis_core.settings import Settings
from trellis_gateway.context import ApiProblem, json_response, masked
from trellis_gateway.environments_routes import clear_in_answer, clear_sensitive
from trellis_gateway.launch import require_sealed
from trellis_gateway.streams import CutTokens, LineJoiner, sse_frame
from trellis_store.api import AuditRecord, Environment, LogChunkRow, Ok, TemplateBundle, TemplateRef

SAY = "resource/hello/task/say"
SECRET = "hunter2-the-db-password"

# HELLO with a sensitive variable the environment sets.
VAULTED = HELLO.replace(
    "metadata: {name: hello-stack}\nspec:\n  version: v1",
    "metadata: {name: vault-stack}\nspec:\n  version: v1\n"
    "  variables:\n    - {name: password, value: '', options: {sensitive: true}}",
)


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


def seal(api: Api, secret: str) -> str:
    """A token of `api`'s tenant, sealed as the store seals one."""
    return sealed.MasterKeyring.from_settings(api.gateway.settings).for_tenant(api.tenant).seal(secret)


def assert_clean(what: str, text: str) -> None:
    assert SECRET not in text, f"{what} holds the secret in clear: {text[:2000]}"
    assert "[[trellis-sealed:" not in text, f"{what} holds a sealed token: {text[:2000]}"


# ---- the encoding itself ------------------------------------------------------------------------


def test_every_token_in_an_encoded_answer_or_frame_is_masked() -> None:
    keys = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme")
    one, two = keys.seal("a"), keys.seal(SECRET)
    value = {"dsn": f"postgres://app:{one}@db", two: [two, {"nested": two}], "n": 3}
    body = json_response(value).body
    assert isinstance(body, bytes)
    expected = {"dsn": "postgres://app:********@db", "********": ["********", {"nested": "********"}], "n": 3}
    assert msgspec.json.decode(body) == expected
    assert msgspec.json.decode(body) == sealed.mask_tokens(value)
    assert (
        masked(b'{"plain": "text [[trellis-sealed:v1:zz:short]]"}')
        == b'{"plain": "text [[trellis-sealed:v1:zz:short]]"}'
    )
    frame = sse_frame(msgspec.json.encode({"value": two}), event="x", id_=7)
    assert frame == b'id: 7\nevent: x\ndata: {"value":"********"}\n\n'


def test_unprefixed_logs_hold_a_token_cut_between_chunks_until_its_line_ends() -> None:
    token = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme").seal(SECRET)
    text = f"first line\nconnect postgres://app:{token}@db\nlast without end"
    cuts = (5, 30, 60, len(text) - 4)
    pieces = [text[a:b] for a, b in zip((0, *cuts), (*cuts, len(text)), strict=True)]
    for prefixed in (False, True):
        joiner = LineJoiner(prefixed=prefixed)
        out = [joiner.add(LogChunkRow(activity_id=SAY, attempt=1, position=n, sequence=n, stream="stdout",
                                      data=piece, occurred_at=datetime.now(UTC)))
               for n, piece in enumerate(pieces)]  # fmt: skip
        out.append(joiner.flush())
        assert all(token in piece or "[[" not in piece for piece in out), out
        shown = masked("".join(out).encode()).decode()
        assert "postgres://app:********@db" in shown
        assert_clean("the joined log", shown)


def test_a_token_cut_between_live_chunks_is_masked_wherever_the_cut_falls() -> None:
    token = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme").seal(SECRET)
    payload = token.rsplit(":", 1)[1].removesuffix("]]")
    text = f"dsn postgres://app:{token}@db [[not a token]] end"
    for first in range(1, len(text) - 1):
        for second in (first + 1, first + 7, first + 30):
            cut = CutTokens()
            pieces = [text[:first], text[first:second], text[second:]]
            shown = "".join(cut.data(("a", 1), piece) for piece in pieces)
            # A cut inside `[[trellis-sealed:` shows the marker's start, which went out before its end came.
            shown_marker = re.fullmatch(r"dsn postgres://app:(\[\[?[a-z-]*)?\*{8}@db \[\[not a token\]\] end", shown)
            assert shown_marker is not None, (first, second, pieces, shown)
            assert "trellis-sealed:" not in shown
            assert payload[:8] not in shown
    other = CutTokens()  # attempts are apart: one's cut token is not another's
    assert other.data(("a", 1), token[:40]) == "********"
    assert other.data(("a", 2), "]] x") == "]] x"
    assert other.data(("a", 1), token[40:] + " y") == " y"


# ---- every answer of a real gateway -------------------------------------------------------------


def _completed_with_outputs(text: str) -> bool:
    """The run's answer once its completion is projected: an activity's `succeeded` comes first."""
    run = msgspec.json.decode(text)
    return isinstance(run, dict) and run.get("status") == "succeeded" and bool(run.get("outputs"))


async def _store_has(api: Api, path: str, predicate: Any, who: str = "admin") -> str:
    """The text at `path` once `predicate(text)` holds (the store's projection follows the bus)."""
    async with asyncio.timeout(15):
        while True:
            async with api.call("GET", path, who=who) as response:
                text = await response.text()
                if response.status == 200 and predicate(text):
                    return text
            await asyncio.sleep(0.05)


async def test_no_answer_or_frame_holds_a_token_or_a_sensitive_value(api: Api, bus: Bus) -> None:
    token = seal(api, SECRET)
    dsn = f"postgres://app:{token}@db"
    await api.environment("vault", VAULTED, "vault-stack", {"password": SECRET})
    await api.environment("web", HELLO, "hello-stack", {})
    run_id = await api.start("web")
    await _store_has(api, f"/v1/runs/{run_id}", lambda text: True)
    outputs = {"password": {"value": token, "sensitive": True}, "url": {"value": dsn, "sensitive": False}}
    now = datetime.now(UTC)
    line = f"connecting to {dsn} as app\n"
    chunks = [line[:35], line[35:60], line[60:]]  # the token is cut between chunks
    for n, data in enumerate(chunks):
        chunk = ActivityLogChunk(
            tenant=api.tenant, run_id=run_id, activity_id=SAY, attempt=1, sequence=n, data=data, occurred_at=now
        )
        await bus.publish(subjects.logs(api.tenant, run_id, SAY), chunk, msg_id=chunk.msg_id())
    await bus.publish_event(
        ActivityCompleted(tenant=api.tenant, run_id=run_id, activity_id=SAY, attempt=1, outputs=outputs)
    )
    await bus.publish_event(RunCompleted(tenant=api.tenant, run_id=run_id, status="succeeded", outputs={"db": outputs}))
    recorded = AuditRecord(tenant=api.tenant, actor="tests", action="test.sealed", target=dsn, detail={"dsn": dsn})
    assert isinstance(await api.gateway.store.ask(recorded, Ok), Ok)

    answers: dict[str, str] = {}
    answers["run"] = await _store_has(api, f"/v1/runs/{run_id}", _completed_with_outputs, who="viewer")
    answers["logs"] = await _store_has(api, f"/v1/runs/{run_id}/logs", lambda text: "as app" in text, who="viewer")
    answers["activity logs"] = await _store_has(api, f"/v1/runs/{run_id}/logs?activity={SAY}", lambda text: True)
    for path in ("/v1/environments/vault", "/v1/environments/web", "/v1/environments", "/v1/runs", "/v1/audit"):
        answers[path] = await _store_has(api, path, lambda text: True)
    answers["events"] = "\n".join(f"{e.event} {e.data}" for e in await api.events(run_id, who="viewer"))
    async with api.sse(f"/v1/runs/{run_id}/logs", who="viewer") as reader:
        answers["live logs"] = "\n".join(m.data for m in await reader.until_end())
    for what, text in answers.items():
        assert_clean(what, text)
    run = msgspec.json.decode(answers["run"])
    assert run["outputs"]["db"]["url"]["value"] == "postgres://app:********@db"
    assert run["outputs"]["db"]["password"]["value"] == "********"
    assert f"{SAY} | connecting to postgres://app:********@db as app" in answers["logs"]
    assert answers["activity logs"] == "connecting to postgres://app:********@db as app\n"
    assert '"value":"postgres://app:********@db"' in answers["events"]
    assert msgspec.json.decode(answers["/v1/environments/vault"])["variables"]["password"] == "********"
    assert "postgres://app:********@db" in answers["/v1/audit"]


# ---- a run request carries tokens only ----------------------------------------------------------


def _environment(variables: dict[str, str], sensitive: tuple[str, ...] = ()) -> Environment:
    return Environment(
        name="vault",
        template=TemplateRef(name="vault-stack", version="v1"),
        status="deployed",
        etag="1",
        variables=variables,
        sensitive=sensitive,
    )


def test_a_launch_refuses_a_sensitive_variable_the_store_answered_in_clear() -> None:
    from trellis_core.events import SourceFile

    bundle = TemplateBundle(name="vault-stack", version="v1", sources=(SourceFile(path="t.yaml", text=VAULTED),))
    token = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme").seal(SECRET)
    require_sealed("acme", _environment({"password": token}, ("password",)), bundle)
    require_sealed("acme", _environment({"password": ""}), bundle)  # nothing to seal
    for env in (
        _environment({"password": SECRET}, ("password",)),
        _environment({"password": SECRET}),  # the store did not even mark it: the template declares it
        _environment({"password": sealed.MASK}, ("password",)),  # a masked value is no value to run with
    ):
        with pytest.raises(ApiProblem) as refused:
            require_sealed("acme", env, bundle)
        assert refused.value.problem.status == 500
        assert "password" in refused.value.problem.detail
        assert SECRET not in refused.value.problem.detail
    assert clear_sensitive({"a": SECRET, "b": token, "c": ""}, ["a", "b", "c", "d"]) == ["a"]


def test_a_put_answered_with_the_clear_value_is_refused() -> None:
    token = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme").seal(SECRET)
    given = {"password": SECRET, "team": "a"}
    assert clear_in_answer({"password": token, "team": "a"}, given, ["password"]) == ""
    assert clear_in_answer({"password": sealed.MASK, "team": "a"}, given, ["password"]) == ""
    why = clear_in_answer(given, given, ["password"])
    assert "password" in why
    assert "in clear" in why


async def test_a_launch_publishes_the_stored_tokens_never_the_clear_value(api: Api, bus: Bus) -> None:
    """The store seals what the PUT gave (EnvironmentPut's `sensitive`); the request carries its token."""
    await api.environment("vault", VAULTED, "vault-stack", {"password": SECRET})
    run_id = await api.start("vault")
    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    assert SECRET.encode() not in (msg.data or b"")
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert request.run_id == run_id
    assert sealed.is_token(request.variables["password"])
    opened = sealed.MasterKeyring.from_settings(api.gateway.settings).for_tenant(api.tenant)
    assert opened.open(request.variables["password"]) == SECRET


async def test_no_request_is_published_when_the_store_answers_a_sensitive_value_in_clear(api: Api, bus: Bus) -> None:
    """A store that answers the value in clear (one from before sealed tokens): 500, nothing on the bus."""
    from trellis_store.api import EnvironmentGet

    await api.environment("vault", VAULTED, "vault-stack", {"password": SECRET})
    real_ask = api.gateway.store.ask

    async def clear_store(request: Any, type_: Any) -> Any:
        answer = await real_ask(request, type_)
        if isinstance(request, EnvironmentGet) and isinstance(answer, Environment):
            return msgspec.structs.replace(answer, variables={**answer.variables, "password": SECRET})
        return answer

    api.gateway.store.ask = clear_store  # type: ignore[method-assign]
    try:
        async with api.call("POST", "/v1/environments/vault/runs", who="operator", json={"action": "deploy"}) as r:
            assert r.status == 500, await r.text()
            problem = await r.json(content_type=None)
    finally:
        api.gateway.store.ask = real_ask  # type: ignore[method-assign]
    assert "password" in problem["detail"]
    assert SECRET not in problem["detail"]
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    runs = await api.json("GET", "/v1/runs", status=200)
    assert runs["runs"] == []  # refused before the run was recorded
