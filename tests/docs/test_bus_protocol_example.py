"""docs/examples/submit_run.py, the bus protocol's example, run for real: it publishes a run
request on the test nats-server, a compiler, a scheduler and an agent serve it, and the script
prints the run's end."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from running_agent import running_agent
from trellis_compiler.service import serve as serve_compiler
from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_scheduler.service import serve as serve_scheduler

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "examples" / "submit_run.py"
DEMO = ROOT / "examples" / "demo"
WITHIN = 90.0

REJECTED = """\
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: lonely}
spec:
  template: {name: missing}
"""


@asynccontextmanager
async def control_plane(bus: Bus, settings: Settings, tenant: str, tmp_path: Path) -> AsyncIterator[None]:
    """The compiler, a scheduler for `tenant` and one agent of its default pool, in this process."""
    stop = asyncio.Event()
    compiler_ready, scheduler_ready = asyncio.Event(), asyncio.Event()
    services = [
        asyncio.create_task(serve_compiler(bus, stop, ready=compiler_ready)),
        asyncio.create_task(serve_scheduler(bus, settings, stop, tenant=tenant, ready=scheduler_ready)),
    ]
    try:
        async with asyncio.timeout(15):
            await compiler_ready.wait()
            await scheduler_ready.wait()
        async with running_agent(bus, tmp_path, tenant=tenant):
            yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*services)


async def submit(nats_url: str, tenant: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--nats-url", nats_url, "--tenant", tenant, "--timeout", str(WITHIN), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WITHIN + 30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_example_script_submits_the_demo_and_prints_that_it_succeeded(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    async with control_plane(bus, settings, unique, tmp_path):
        code, out, err = await submit(settings.nats_url, unique, "--environment", "demo", str(DEMO))
    lines = out.strip().splitlines()
    assert code == 0, out + err
    assert re.fullmatch(r"run [0-9a-f-]{36} succeeded", lines[-1]), out
    assert any(line.startswith("run.started") for line in lines), out
    assert "  output network.network_id = \"net-demo\"" in lines, out


async def test_the_example_script_shows_why_a_bundle_is_rejected_and_exits_1(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    (tmp_path / "lonely.yaml").write_text(REJECTED)
    async with control_plane(bus, settings, unique, tmp_path):
        bundle = str(tmp_path / "lonely.yaml")
        code, out, err = await submit(settings.nats_url, unique, "--environment", "lonely", bundle)
    assert code == 1, out + err
    assert out.strip().splitlines()[-1].endswith(" rejected"), out
    assert "EnvironmentTemplate 'missing' not found" in out, out


SLOW = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: slow}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: wait, type: script, options: {script: {script: "echo waiting; sleep 60"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: slow}
spec:
  resources: [{name: slow}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: slow}
spec:
  template: {name: slow}
"""


async def test_a_cancel_published_as_the_page_shows_ends_the_run_cancelled(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """docs/bus-protocol.md, "Cancelling": plain JSON on the run's subject with its dedupe id."""
    run_id = f"r-{unique}"
    seen: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await seen.put(json.loads(msg.data))

    async def wait_for(kind: str) -> dict[str, object]:
        async with asyncio.timeout(WITHIN):
            while (event := await seen.get())["type"] != kind:
                pass
        return event

    request = {"type": "run.requested", "tenant": unique, "run_id": run_id, "environment": "slow",
               "sources": [{"path": "slow.yaml", "text": SLOW}]}  # fmt: skip
    cancel = {"type": "run.cancel_requested", "tenant": unique, "run_id": run_id, "reason": "superseded"}
    async with control_plane(bus, settings, unique, tmp_path):
        sub = await bus.js.subscribe(f"trellis.{unique}.run.{run_id}.>", cb=on_event, ordered_consumer=True)
        try:
            await bus.js.publish(f"trellis.{unique}.runs.requested", json.dumps(request).encode(),
                                 headers={"Nats-Msg-Id": f"{run_id}/request"})  # fmt: skip
            await wait_for("activity.started")
            await bus.js.publish(f"trellis.{unique}.run.{run_id}.run.cancel_requested", json.dumps(cancel).encode(),
                                 headers={"Nats-Msg-Id": f"{unique}/{run_id}/-/-/run.cancel_requested"})  # fmt: skip
            completed = await wait_for("run.completed")
        finally:
            await sub.unsubscribe()
    assert completed["status"] == "cancelled"
    assert completed["message"] == "superseded"
