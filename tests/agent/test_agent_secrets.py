"""The agent opens sealed tokens right before the executor runs, and nothing it sends holds them in clear.

Keys come from a real nats-server: a small responder built from a MasterKeyring answers
`trellis.<tenant>.keys.get` the way the state store does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from agent_support import environ_path, shell, work_item
from aiohttp import web
from nats.aio.msg import Msg

from trellis_agent.config import AgentConfig
from trellis_agent.egress import EgressPolicy
from trellis_agent.executors.base import Outcome, Workspace
from trellis_agent.executors.http import HttpExecutor
from trellis_agent.executors.iac import IacExecutor
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.runner import ActivityRun
from trellis_agent.secrets import AgentKeys, KeysUnavailable, nats_request, open_activity
from trellis_core import sealed, subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, ActivityFailed, ActivityLogChunk, Event, WorkItem
from trellis_core.workflow import ContainerSpec, HttpSpec, IacSpec

SECRET = "hunter2-Sup3r/Secret+pw"


class Responder:
    """Answers keys requests from `ring`, the tenant taken from the subject (as the state store does)."""

    def __init__(self, ring: sealed.MasterKeyring) -> None:
        self.ring = ring
        self.asked = 0

    async def answer(self, msg: Msg) -> None:
        self.asked += 1
        tenant = msg.subject.split(".")[1]
        answer = sealed.KeysAnswer(material=self.ring.for_tenant(tenant).material())
        await msg.respond(msgspec.json.encode(answer))


@pytest.fixture
async def responder(bus: Bus, unique: str) -> AsyncIterator[Responder]:
    """Answers this test's tenant only (a state store of another test may answer the others)."""
    serving = Responder(sealed.MasterKeyring(sealed.new_master_key()))
    sub = await bus.nc.subscribe(subjects.keys_request(unique), cb=serving.answer)
    await bus.nc.flush()
    yield serving
    await sub.unsubscribe()


class Recorder:
    """The runner's publisher: keeps log chunks and events."""

    def __init__(self) -> None:
        self.chunks: list[ActivityLogChunk] = []
        self.events: list[Event] = []

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> None:
        self.chunks.append(message)

    async def publish_event(self, event: Event, *, route: str = "") -> None:
        self.events.append(event)

    def logs(self) -> str:
        return "".join(c.data for c in self.chunks)

    def everything(self) -> str:
        return self.logs() + "".join(msgspec.json.encode(e).decode() for e in self.events)


async def run_activity(work: WorkItem, keys: AgentKeys, tmp_path: Path, executor: Any = None) -> tuple[Any, Recorder]:
    recorder = Recorder()
    config = AgentConfig.from_env({}, tenant=work.tenant, heartbeat_seconds=30.0)
    run = ActivityRun(
        work,
        executor=executor or ProcessExecutor(environ=environ_path()),
        publisher=recorder,
        config=config,
        data_dir=tmp_path,
        keys=keys,
    )
    async with asyncio.timeout(30):
        end = await run.run()
    return end, recorder


async def test_keys_are_fetched_lazily_cached_and_fetched_again_for_an_unknown_kid(
    bus: Bus, responder: Responder, unique: str
) -> None:
    keys = AgentKeys(unique, nats_request(bus.nc))
    assert keys.fetches == 0
    first = await keys.keys()
    token = responder.ring.for_tenant(unique).seal(SECRET)
    assert first.open(token) == SECRET
    assert (await keys.keys(sealed.token_kids(token))) is first
    assert keys.fetches == 1
    # A rotation: the control plane seals under a new master; the agent asks again once.
    old = base64.b64encode(b"x" * 32).decode()
    responder.ring = sealed.MasterKeyring(sealed.new_master_key(), [old])
    rotated = responder.ring.for_tenant(unique).seal(SECRET)
    again = await keys.keys(sealed.token_kids(rotated))
    assert keys.fetches == 2
    assert again.open(rotated) == SECRET


async def test_no_control_plane_is_a_clear_error(bus: Bus, unique: str) -> None:
    keys = AgentKeys(unique, nats_request(bus.nc), timeout=1.0)
    with pytest.raises(KeysUnavailable, match=rf"no control plane answered trellis\.{unique}\.keys\.get.*state store"):
        await keys.keys()


async def test_a_work_item_without_tokens_fetches_no_keys(tmp_path: Path, bus: Bus, unique: str) -> None:
    keys = AgentKeys(unique, nats_request(bus.nc), timeout=1.0)  # nobody answers: asking would fail
    end, _ = await run_activity(work_item(shell("echo plain"), tenant=unique), keys, tmp_path)
    assert isinstance(end, ActivityCompleted)
    assert keys.fetches == 0


async def test_tokens_are_opened_for_the_command_and_masked_in_every_form_it_prints(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str
) -> None:
    token = responder.ring.for_tenant(unique).seal(SECRET)
    b64 = base64.b64encode(f"user:{SECRET}".encode()).decode()
    script = (
        'printf "%s\\n" "$PW"; printf "url %s\\n" "$URL"; '
        f'printf "b64 {b64}\\n"; printf "q {urllib.parse.quote(SECRET, safe="")}\\n"; '
        'cat "$TRELLIS_INPUTS"; echo; '
        'printf \'{"conn": "%s", "plain": "ok"}\' "$URL" > "$TRELLIS_OUTPUTS"; '
        'echo "$PW" >&2; exit 0'
    )
    spec = shell(script, PW=token, URL=f"postgres://app:{token}@db/app")
    work = work_item(spec, tenant=unique, inputs={"password": token, "nested": [{"x": token}]})
    end, recorder = await run_activity(work, AgentKeys(unique, nats_request(bus.nc)), tmp_path)
    assert isinstance(end, ActivityCompleted), end
    logs = recorder.logs()
    assert "url postgres://app:********@db/app" in logs
    assert "b64" in logs
    assert b64 not in logs
    assert SECRET not in recorder.everything()
    assert urllib.parse.quote(SECRET, safe="") not in logs
    assert token not in logs  # the command saw the plain text, not the token
    # An output that passes the secret on leaves sealed; the others as they are.
    assert end.outputs["plain"] == "ok"
    conn = end.outputs["conn"]
    assert sealed.is_token(conn)
    assert responder.ring.for_tenant(unique).open(conn) == f"postgres://app:{SECRET}@db/app"


async def test_a_secret_in_a_failure_reason_is_masked(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str
) -> None:
    token = responder.ring.for_tenant(unique).seal(SECRET)

    class Leaky:
        async def run(self, work: WorkItem, workspace: Workspace, sink: Any) -> Outcome:
            assert isinstance(work.activity.spec, ContainerSpec)
            return Outcome.failed(f"login refused for {json.dumps(work.activity.spec.env)}")

    work = work_item(shell("true", PW=token), tenant=unique)
    end, recorder = await run_activity(work, AgentKeys(unique, nats_request(bus.nc)), tmp_path, Leaky())
    assert isinstance(end, ActivityFailed)
    assert "********" in end.reason
    assert SECRET not in recorder.everything()


async def test_a_token_that_does_not_open_fails_naming_the_field_and_the_key_never_a_value(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str
) -> None:
    other = responder.ring.for_tenant(unique + "x").seal(SECRET)  # another tenant's token
    work = work_item(shell("echo never", PW=other), tenant=unique)
    end, recorder = await run_activity(work, AgentKeys(unique, nats_request(bus.nc)), tmp_path)
    assert isinstance(end, ActivityFailed)
    assert not end.retryable
    kid = sealed.token_kids(other).pop()
    assert "spec.env.PW" in end.reason
    assert kid in end.reason
    assert "never" not in recorder.logs()
    assert SECRET not in recorder.everything()


async def test_keys_unavailable_fails_the_activity_retryably(tmp_path: Path, bus: Bus, unique: str) -> None:
    token = sealed.MasterKeyring(sealed.new_master_key()).for_tenant(unique).seal(SECRET)
    work = work_item(shell("echo never", PW=token), tenant=unique)
    end, recorder = await run_activity(work, AgentKeys(unique, nats_request(bus.nc), timeout=1.0), tmp_path)
    assert isinstance(end, ActivityFailed)
    assert end.retryable
    assert "no control plane answered" in end.reason
    assert "never" not in recorder.logs()


async def test_an_output_the_tool_marked_sensitive_leaves_sealed(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str
) -> None:
    outputs = {
        "db_password": {"value": "tool-made-secret", "sensitive": True, "type": "string"},
        "port": {"value": 6543, "sensitive": False, "type": "number"},
        "keys": {"value": ["a1", "b2"], "sensitive": True},
    }
    script = f"printf '%s' '{json.dumps(outputs)}' > \"$TRELLIS_OUTPUTS\""
    end, recorder = await run_activity(
        work_item(shell(script), tenant=unique), AgentKeys(unique, nats_request(bus.nc)), tmp_path
    )
    assert isinstance(end, ActivityCompleted), end
    keys = responder.ring.for_tenant(unique)
    assert end.outputs["port"] == outputs["port"]
    assert end.outputs["db_password"]["sensitive"] is True
    assert keys.open(end.outputs["db_password"]["value"]) == "tool-made-secret"
    assert json.loads(keys.open(end.outputs["keys"]["value"])) == ["a1", "b2"]
    assert "tool-made-secret" not in recorder.everything()


FAKE_TOFU = """#!/bin/sh
case "$1" in
  plan) echo "var.db_password = $TF_VAR_db_password" ;;
  output) printf '{"password": {"value": "%s", "type": "string", "sensitive": true}, ' "$TF_VAR_db_password"
          printf '"endpoint": {"value": "db.internal", "type": "string", "sensitive": false}}' ;;
esac
"""


async def test_an_iac_stage_sees_the_opened_variable_and_its_sensitive_output_leaves_sealed(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str
) -> None:
    fake = tmp_path / "bin" / "tofu"
    fake.parent.mkdir()
    fake.write_text(FAKE_TOFU)
    fake.chmod(0o755)
    token = responder.ring.for_tenant(unique).seal(SECRET)
    iac = IacExecutor(ProcessExecutor(environ=environ_path()))
    keys = AgentKeys(unique, nats_request(bus.nc))
    ends = {}
    for stage in ("plan", "output"):
        spec = IacSpec(tool="opentofu", stage=stage, binary=str(fake), env={"TF_VAR_db_password": token})  # type: ignore[arg-type]
        work = work_item(spec, kind="iac", tenant=unique, workspace="resource/db", activity_id=f"resource/db/{stage}")
        ends[stage] = await run_activity(work, keys, tmp_path / "data", executor=iac)
    plan, plan_log = ends["plan"]
    assert isinstance(plan, ActivityCompleted)
    assert "var.db_password = ********" in plan_log.logs()
    output, output_log = ends["output"]
    assert isinstance(output, ActivityCompleted), output
    assert output.outputs["endpoint"] == {"value": "db.internal", "type": "string", "sensitive": False}
    password = output.outputs["password"]
    assert password["sensitive"] is True
    assert responder.ring.for_tenant(unique).open(password["value"]) == SECRET
    assert SECRET not in plan_log.everything() + output_log.everything()


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """Answers with the Authorization header it got, in the body: a service that leaks it back."""

    async def echo(request: web.Request) -> web.Response:
        status = int(request.query.get("status", "200"))
        return web.json_response({"auth": request.headers.get("Authorization", ""), "ok": True}, status=status)

    app = web.Application()
    app.router.add_post("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    await runner.cleanup()


async def test_an_http_response_that_echoes_the_secret_is_masked_in_logs_and_sealed_in_outputs(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str, echo_server: str
) -> None:
    token = responder.ring.for_tenant(unique).seal(SECRET)
    http = HttpExecutor(EgressPolicy.parse(["127.0.0.1/32"]))
    keys = AgentKeys(unique, nats_request(bus.nc))
    try:
        spec = HttpSpec(url=echo_server, headers={"Authorization": f"Bearer {token}"})
        done, done_log = await run_activity(work_item(spec, kind="http", tenant=unique), keys, tmp_path, http)
        failing = HttpSpec(url=echo_server + "?status=418", headers={"Authorization": f"Bearer {token}"})
        failed, failed_log = await run_activity(work_item(failing, kind="http", tenant=unique), keys, tmp_path, http)
    finally:
        await http.close()
    assert isinstance(done, ActivityCompleted), done
    assert '"auth": "Bearer ********"' in done_log.logs()
    response = done.outputs
    assert response["json"]["ok"] is True
    assert responder.ring.for_tenant(unique).open(response["json"]["auth"]) == f"Bearer {SECRET}"
    assert sealed.is_token(response["body"])
    assert isinstance(failed, ActivityFailed)
    assert failed.reason == "HTTP 418"
    assert "Bearer ********" in failed_log.logs()
    assert SECRET not in done_log.everything() + failed_log.everything()


async def test_an_executor_crash_is_logged_by_the_agent_with_the_secret_masked(
    tmp_path: Path, bus: Bus, responder: Responder, unique: str
) -> None:
    token = responder.ring.for_tenant(unique).seal(SECRET)

    class Crashing:
        async def run(self, work: WorkItem, workspace: Workspace, sink: Any) -> Outcome:
            assert isinstance(work.activity.spec, ContainerSpec)
            raise RuntimeError(f"cannot use {work.activity.spec.env['PW']}")

    work = work_item(shell("true", PW=token), tenant=unique)
    with structlog.testing.capture_logs() as logged:
        end, recorder = await run_activity(work, AgentKeys(unique, nats_request(bus.nc)), tmp_path, Crashing())
    assert isinstance(end, ActivityFailed)
    assert end.reason == "the agent's executor crashed: RuntimeError: cannot use ********"
    crash = next(line for line in logged if line["event"] == "executor_crashed")
    assert "cannot use ********" in crash["traceback"]
    assert SECRET not in json.dumps(logged, default=str) + recorder.everything()


def test_opening_keeps_the_spec_type_and_names_what_held_a_token_sensitive() -> None:
    keys = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme")
    token = keys.seal(SECRET)
    spec = ContainerSpec(command=("sh", "-c", f"echo {token}"), env={"PW": token, "REGION": "eu"})
    work = work_item(spec, inputs={"db": {"url": f"pg://u:{token}@h"}, "size": 3}, sensitive=("REGION",))
    opened: set[str] = set()
    activity = open_activity(keys, work.activity, opened)
    assert isinstance(activity.spec, ContainerSpec)
    assert activity.spec.command == ("sh", "-c", f"echo {SECRET}")
    assert activity.spec.env == {"PW": SECRET, "REGION": "eu"}
    assert activity.inputs == {"db": {"url": f"pg://u:{SECRET}@h"}, "size": 3}
    assert activity.sensitive == ("REGION", "PW", "db")
    assert opened == {SECRET}
    assert work.activity.spec.env["PW"] == token  # the work item itself stays sealed
