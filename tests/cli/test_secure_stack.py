"""`trellis dev up --secure`'s stack: nats-server from the generated config, every service on the
control plane's nkey, the local agent on its tenant's agent credentials, and a whole `trellis run`
going through it; nothing connects without a known nkey."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest

from trellis_cli.devstack import DevStack, default_services
from trellis_core import nats_auth, subjects
from trellis_core.settings import Settings

pytestmark = pytest.mark.timeout(180)

HELLO = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: hello}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: say, type: script, options: {script: {script: "echo hello from a secure agent"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: hello}
spec:
  resources: [{name: hello}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: hello}
spec:
  template: {name: hello}
"""


@pytest.fixture
async def secure_stack(
    settings: Settings, unique: str, tmp_path: Path, database_url: str
) -> AsyncIterator[DevStack]:
    ours = msgspec.structs.replace(
        settings, nats_url="", tenant=unique, data_dir=tmp_path / "stack", database_url=database_url
    )
    async with DevStack(ours, services=default_services(ours), ephemeral=True, secure=True) as running:
        yield running


def check_private_files(s: Settings) -> Path:
    """The control plane's and the agent's seeds and the authorization are 0600 and name both
    keys; the agent's seed file."""
    control = Path(s.nats_nkey_seed_file)
    agent_seed = control.with_name(f"agent-{s.tenant}.nk")
    for private in (control, agent_seed, Path(s.nats_auth_file)):
        assert private.stat().st_mode & 0o777 == 0o600, private
    auth = Path(s.nats_auth_file).read_text()
    assert nats_auth.public_key_of(agent_seed.read_text()) in auth
    assert nats_auth.public_key_of(control.read_text()) in auth
    return agent_seed


async def test_the_secure_stack_runs_every_service_on_nkeys_only(secure_stack: DevStack) -> None:
    s = secure_stack.settings
    agent_seed = check_private_files(s)
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(servers=[s.nats_url], allow_reconnect=False, connect_timeout=3)
    # the local agent's key is its tenant's: another tenant's work is refused by the server
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        servers=[s.nats_url], nkeys_seed=str(agent_seed), inbox_prefix=subjects.inbox_prefix(s.tenant),
        error_cb=on_error, allow_reconnect=False,
    )
    try:
        await nc.subscribe("trellis.someone-else.>")
        deadline = asyncio.get_running_loop().time() + 5
        while not any("permissions violation" in e.lower() for e in errors):
            assert asyncio.get_running_loop().time() < deadline, errors
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def test_a_whole_trellis_run_works_in_secure_mode(secure_stack: DevStack, tmp_path: Path) -> None:
    s = secure_stack.settings
    await asyncio.to_thread((tmp_path / "hello.yaml").write_text, HELLO)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {
        "TRELLIS_DATA_DIR": str(tmp_path / "cli"), "TRELLIS_STREAM_STORAGE": "memory",
        "TRELLIS_NATS_URL": s.nats_url, "TRELLIS_TENANT": s.tenant,
        "TRELLIS_NATS_NKEY_SEED_FILE": s.nats_nkey_seed_file,
    }
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", str(tmp_path / "hello.yaml"), "-e", "hello", "--json"]
    run = await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"succeeded"' in run.stdout


def test_dev_up_secure_refuses_a_nats_it_does_not_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {"TRELLIS_DATA_DIR": str(tmp_path), "TRELLIS_NATS_URL": "nats://127.0.0.1:1"}
    cmd = [sys.executable, "-m", "trellis_cli.main", "dev", "up", "--secure"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "--secure runs the embedded nats-server: unset TRELLIS_NATS_URL" in done.stderr
