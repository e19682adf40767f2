"""`trellis logs` and `trellis cancel` from another process, against the services running on the
test bus; both say so plainly when there is no bus to reach."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from trellis_cli.devstack import DevStack, default_services
from trellis_core.bus import Bus
from trellis_core.embedded import free_port
from trellis_core.events import ActivityStarted
from trellis_core.settings import Settings

TALK = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: talk}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: say, type: script, options: {script: {script: "echo line one; echo line two; echo oops >&2; exit 1"}}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: quiet}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: say, type: script, options: {script: {script: "echo only me"}}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: slow}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: nap, type: script, options: {script: {script: "echo napping; sleep 60"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: talk}
spec:
  resources: [{name: talk}, {name: quiet}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: slow}
spec:
  resources: [{name: slow}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: talk}
spec:
  template: {name: talk}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: slow}
spec:
  template: {name: slow}
"""


@pytest.fixture
async def stack(settings: Settings, unique: str, tmp_path: Path, database_url: str) -> AsyncIterator[Settings]:
    """The store, gateway, compiler, scheduler and a process agent on the test bus, for a tenant of
    this test (the compiler asks the store, on this test's own database, for the last deploy)."""
    ours = msgspec.structs.replace(settings, tenant=unique, data_dir=tmp_path / "stack", database_url=database_url)
    async with DevStack(ours, services=default_services(ours)) as running:
        yield running.settings


def _env(settings: Settings | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {"TRELLIS_DATA_DIR": str(tmp_path / "cli"), "TRELLIS_STREAM_STORAGE": "memory", **extra}
    if settings is not None:
        env |= {"TRELLIS_NATS_URL": settings.nats_url, "TRELLIS_TENANT": settings.tenant}
    return env


def _trellis(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "trellis_cli.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, cwd=cwd, check=False)


async def test_a_failed_run_names_trellis_logs_which_prints_its_lines_from_another_process(
    stack: Settings, tmp_path: Path
) -> None:
    (tmp_path / "talk.yaml").write_text(TALK)
    env = _env(stack, tmp_path)
    run = await asyncio.to_thread(_trellis, env, tmp_path, "run", str(tmp_path / "talk.yaml"), "-e", "talk")
    assert run.returncode == 1, run.stderr[-3000:]
    hint = re.search(r"every log line of the run: trellis logs (\S+)\n", run.stdout)
    assert hint is not None, run.stdout
    run_id = hint.group(1)

    every = await asyncio.to_thread(_trellis, env, tmp_path, "logs", run_id)
    assert every.returncode == 0, every.stderr
    lines = every.stdout.splitlines()
    talk = [line for line in lines if line.startswith("resource/talk/task/say | ")]
    assert talk == [f"resource/talk/task/say | {text}" for text in ("line one", "line two", "oops")]
    assert "resource/quiet/task/say | only me" in lines

    one = await asyncio.to_thread(_trellis, env, tmp_path, "logs", run_id, "resource/quiet/task/say")
    assert (one.returncode, one.stdout) == (0, "only me\n")

    missing = await asyncio.to_thread(_trellis, env, tmp_path, "logs", "no-such-run")
    assert missing.returncode == 1
    assert f"no run no-such-run in tenant {stack.tenant}" in missing.stderr


async def _first_start(bus: Bus, tenant: str, started: asyncio.Future[ActivityStarted]) -> Any:
    async def on_msg(msg: Any) -> None:
        if not started.done():
            started.set_result(msgspec.json.decode(msg.data, type=ActivityStarted))

    return await bus.nc.subscribe(f"trellis.{tenant}.run.*.activity.started", cb=on_msg)


async def test_trellis_cancel_from_another_process_cancels_the_run_being_followed(
    stack: Settings, bus: Bus, tmp_path: Path
) -> None:
    (tmp_path / "talk.yaml").write_text(TALK)
    env = _env(stack, tmp_path)
    started: asyncio.Future[ActivityStarted] = asyncio.get_running_loop().create_future()
    sub = await _first_start(bus, stack.tenant, started)
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", str(tmp_path / "talk.yaml"), "-e", "slow", "--json"]
    follower = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = (await asyncio.wait_for(started, 60)).run_id
        cancel = await asyncio.to_thread(_trellis, env, tmp_path, "cancel", run_id, "--reason", "changed my mind")
        assert cancel.returncode == 0, cancel.stderr
        assert f"asked to cancel run {run_id}" in cancel.stdout
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
    finally:
        await sub.unsubscribe()
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    assert follower.returncode == 1, err[-3000:]
    document = json.loads(out)
    assert document["status"] == "cancelled"
    assert document["activities"][0]["status"] == "cancelled"
    again = await asyncio.to_thread(_trellis, env, tmp_path, "cancel", run_id)
    assert again.returncode == 1
    assert "has already finished" in again.stderr


@pytest.mark.parametrize("command", ["logs", "cancel"])
def test_logs_and_cancel_need_a_bus_and_say_which(command: str, tmp_path: Path) -> None:
    unset = _trellis(_env(None, tmp_path), tmp_path, command, "some-run")
    assert unset.returncode == 2
    assert "TRELLIS_NATS_URL" in unset.stderr
    assert "Traceback" not in unset.stderr
    nowhere = f"nats://127.0.0.1:{free_port()}"
    env = _env(None, tmp_path, TRELLIS_NATS_URL=nowhere, TRELLIS_CONNECT_TIMEOUT_SECONDS="1")
    unreachable = _trellis(env, tmp_path, command, "some-run")
    assert unreachable.returncode == 1
    assert f"cannot reach NATS at {nowhere}" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
