"""docs/examples/submit_run.py, the bus protocol's example, run for real: it publishes a run
request on the test nats-server, a compiler, a scheduler and an agent serve it, and the script
prints the run's end."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
