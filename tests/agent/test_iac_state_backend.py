"""`backendType: system` on the agent: init is pointed at Trellis' http backend (an override file
and -backend-config address, lock_address, unlock_address), the sealed credential is opened into
TF_HTTP_PASSWORD only, and it never shows in what the agent sends back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from agent_support import environ_path, work_item
from nats.aio.msg import Msg

from trellis_agent.config import AgentConfig
from trellis_agent.executors.iac import BACKEND_OVERRIDE_FILE, IacExecutor, iac_arguments, iac_container
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.runner import ActivityRun
from trellis_agent.secrets import AgentKeys, nats_request
from trellis_core import sealed, subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, ActivityLogChunk, Event
from trellis_core.workflow import IacSpec, StateBackend

CREDENTIAL = "tfs1.eyJ0ZW5hbnQiOiJhY21lIn0.c2lnbmF0dXJlLW9mLXRoZS1jcmVkZW50aWFs"
ADDRESS = "https://trellis.example/v1/tfstate/acme/web/network"

# A leaky tool: prints its arguments, the backend it was given and its password.
FAKE_TOFU = """#!/bin/sh
echo "args: $*"
echo "user: $TF_HTTP_USERNAME password: $TF_HTTP_PASSWORD"
cat trellis_backend_override.tf
"""


class Recorder:
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


@pytest.fixture
async def ring(bus: Bus, unique: str) -> AsyncIterator[sealed.MasterKeyring]:
    """Answers this test's tenant's keys requests the way the state store does."""
    keyring = sealed.MasterKeyring(sealed.new_master_key())

    async def answer(msg: Msg) -> None:
        material = keyring.for_tenant(msg.subject.split(".")[1]).material()
        await msg.respond(msgspec.json.encode(sealed.KeysAnswer(material=material)))

    sub = await bus.nc.subscribe(subjects.keys_request(unique), cb=answer)
    await bus.nc.flush()
    yield keyring
    await sub.unsubscribe()


def test_init_of_a_system_backend_gets_the_http_backend_config_and_no_credential_in_arguments() -> None:
    spec = IacSpec(tool="opentofu", stage="init", state_backend=StateBackend(address=ADDRESS, credential=CREDENTIAL))
    args = iac_arguments(spec, "tofu")
    assert args[:2] == ("tofu", "init")
    assert "-reconfigure" in args
    for key in ("address", "lock_address", "unlock_address"):
        assert f"-backend-config={key}={ADDRESS}" in args
    assert not any(CREDENTIAL in arg for arg in args)
    container = iac_container(spec, image="")
    assert container.env["TF_HTTP_PASSWORD"] == CREDENTIAL
    assert BACKEND_OVERRIDE_FILE in container.files
    plan = iac_container(msgspec.structs.replace(spec, stage="plan"), image="")
    assert plan.env["TF_HTTP_PASSWORD"] == CREDENTIAL  # plan and apply read and write the state too
    assert "-reconfigure" not in plan.command
    custom = iac_arguments(IacSpec(tool="opentofu", stage="init", backend_configs=("bucket=b",)), "tofu")
    assert "-backend-config=bucket=b" in custom
    assert "-reconfigure" not in custom


async def test_the_sealed_credential_reaches_the_tool_and_never_its_logs(
    tmp_path: Path, bus: Bus, ring: sealed.MasterKeyring, unique: str
) -> None:
    fake = tmp_path / "bin" / "tofu"
    fake.parent.mkdir()
    fake.write_text(FAKE_TOFU)
    fake.chmod(0o755)
    token = ring.for_tenant(unique).seal(CREDENTIAL)
    spec = IacSpec(
        tool="opentofu", stage="init", binary=str(fake), state_backend=StateBackend(address=ADDRESS, credential=token)
    )
    work = work_item(
        spec, kind="container", tenant=unique, workspace="resource/network", activity_id="resource/network/init"
    )
    recorder = Recorder()
    run = ActivityRun(
        work,
        executor=IacExecutor(ProcessExecutor(environ=environ_path())),
        publisher=recorder,
        config=AgentConfig.from_env({}, tenant=unique, heartbeat_seconds=30.0),
        data_dir=tmp_path / "data",
        keys=AgentKeys(unique, nats_request(bus.nc)),
    )
    async with asyncio.timeout(30):
        end = await run.run()
    assert isinstance(end, ActivityCompleted), recorder.logs()
    logs = recorder.logs()
    assert f"-backend-config=address={ADDRESS}" in logs
    assert f"-backend-config=lock_address={ADDRESS}" in logs
    assert 'backend "http" {}' in logs  # the override file was there for the tool
    assert "user: trellis-run password: ********" in logs
    assert CREDENTIAL not in recorder.everything()
    assert token not in recorder.everything()
