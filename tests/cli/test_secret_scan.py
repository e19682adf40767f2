"""No clear secret anywhere: a deploy and a destroy that handle three secrets (a sensitive
`--var`, an output OpenTofu marks sensitive, a context's sensitive variable) on a real
`trellis dev up`, then every place Trellis keeps or shows anything is searched for each secret
in every form it could take: every message of every JetStream stream, every row of every
PostgreSQL table, the CLI's outputs, the gateway's answers and the services' own log output.

The run must succeed and each resource must have received the real secret (the fake `tofu` and
the script write a hash of what they got), so the test cannot pass by losing the secret."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from embedded_stack_support import cli_env, servers_of, trellis, wait_until
from secret_scan_support import Scan, Secret, scan_streams, scan_tables

from trellis_core import subjects
from trellis_core.embedded import free_port

# What the fake `tofu` does: each call logged; `apply` echoes the variable it got (the agent must
# mask it) and records its hash; `output` reports a sensitive output (the agent must seal it).
FAKE_TOFU = """#!/bin/sh
echo "tofu $1" >&2
case "$1" in
  apply)
    echo "applying with password=$TF_VAR_password"
    printf '%s' "$TF_VAR_password" | sha256sum | cut -d' ' -f1 > "RECORDS/tofu-$TRELLIS_ACTION"
    ;;
  output)
    printf '{"token": {"value": "%s", "type": "string", "sensitive": true}, ' "OUTPUT_SECRET"
    echo '"region": {"value": "eu-west-1", "type": "string", "sensitive": false}}'
    ;;
esac
"""

TEMPLATES = """\
apiVersion: trellis.dev/v1
kind: ConfigContext
metadata: {name: appctx}
spec:
  variables:
    - {name: api_key, value: CONTEXT_SECRET, options: {sensitive: true}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: vault}
spec:
  version: v1
  provider: opentofu
  providerOptions:
    openTofu:
      backendConfigs: ["path=state.tfstate"]
  variables:
    - {name: password, valueType: text, value: "$(environment.variables.password)$", options: {sensitive: true}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  version: v1
  provider: custom
  contexts: [{name: appctx}]
  # A string rendered at dispatch (it reads outputs) sees the resource's own context through a variable.
  variables:
    - {name: api_key, valueType: text, value: "$(context.appctx.variables.api_key)$", options: {sensitive: true}}
  providerOptions:
    custom:
      tasks:
        - name: use
          type: script
          options:
            script:
              script: |
                echo "the token is $(resource.vault.output.token.value)$ in $(resource.vault.output.region.value)$"
                echo "the api key is $(variables.api_key)$"
                record() { printf '%s' "$2" | sha256sum | cut -d' ' -f1 > "RECORDS/$1-$TRELLIS_ACTION"; }
                record app-token "$(resource.vault.output.token.value)$"
                record app-key "$(variables.api_key)$"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: secret-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources:
    - {name: vault}
    - {name: app, dependsOn: [{name: vault}]}
  variables:
    - {name: password, valueType: text, options: {required: true, sensitive: true}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: sealed}
spec:
  template: {name: secret-stack, version: v1}
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Stack:
    """A `trellis dev up` whose output goes to files (the services' own log output, scanned too)."""

    proc: subprocess.Popen[bytes]
    root: Path
    exports: dict[str, str]
    path: str

    @property
    def out(self) -> Path:
        return self.root / "dev-up.out"

    @property
    def err(self) -> Path:
        return self.root / "dev-up.err"

    def env(self, *, gateway: bool = True) -> dict[str, str]:
        env = cli_env(self.root / "elsewhere", **self.exports) | {"PATH": self.path}
        if not gateway:
            env.pop("TRELLIS_GATEWAY_URL", None)
        return env

    def cli(self, *args: str, gateway: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            trellis(*args), capture_output=True, text=True, timeout=180, cwd=self.root,
            env=self.env(gateway=gateway), check=False,
        )

    def database_url(self) -> str:
        """The embedded PostgreSQL's URL, from its postmaster.pid (4th line: the port)."""
        pid_file = self.root / "data" / "postgres" / "pgdata" / "postmaster.pid"
        port = pid_file.read_text().splitlines()[3].strip()
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _exports(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if "export " in line:
            name, _, value = line.split("export ", 1)[1].strip().partition("=")
            found[name] = value
    return found


@pytest.fixture
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="trellis-stack-"))  # outside basetemp: see conftest's stack_dir
    (root / "records").mkdir()
    (root / "bin").mkdir()
    path = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    with (root / "dev-up.out").open("wb") as out, (root / "dev-up.err").open("wb") as err:
        proc = subprocess.Popen(
            trellis("dev", "up", "--port", str(free_port())), stdout=out, stderr=err, cwd=root,
            env=cli_env(root / "data") | {"PATH": path, "TRELLIS_LOG_LEVEL": "debug"},
        )
    running = Stack(proc, root, {}, path)
    try:
        wait_until(
            lambda: "TRELLIS_ADMIN_TOKEN" in _exports(running.out.read_text()) or proc.poll() is not None,
            90, "trellis dev up printed its exports",
        )
        assert proc.poll() is None, running.out.read_text() + running.err.read_text()[-3000:]
        running.exports = _exports(running.out.read_text())
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    assert not servers_of(root)


async def _run_ids(stack: Stack) -> list[str]:
    base = stack.exports["TRELLIS_GATEWAY_URL"]
    headers = {"Authorization": f"Bearer {stack.exports['TRELLIS_TOKEN']}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.get(f"{base}/v1/runs?environment=sealed") as answer:
        assert answer.status == 200, await answer.text()
        return [run["run_id"] for run in (await answer.json())["runs"]]


async def _gateway_answers(stack: Stack, run_ids: list[str], scan: Scan) -> None:
    """GET the environment, its runs, each run's detail and logs, and each run's events as SSE."""
    base = stack.exports["TRELLIS_GATEWAY_URL"]
    headers = {"Authorization": f"Bearer {stack.exports['TRELLIS_TOKEN']}"}
    routes = ["/v1/environments/sealed", "/v1/environments", "/v1/runs?environment=sealed", "/v1/runs"]
    for run_id in run_ids:
        routes += [f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/logs"]
    async with aiohttp.ClientSession(headers=headers) as http:
        for route in routes:
            async with http.get(base + route) as answer:
                body = await answer.text()
                assert answer.status == 200, f"GET {route}: {answer.status} {scan.hide(body[:300])}"
                scan.text(f"gateway GET {route}", body)
        for run_id in run_ids:
            for route in (f"/v1/runs/{run_id}/events", f"/v1/runs/{run_id}/logs"):
                sse = {"Accept": "text/event-stream"}
                async with http.get(base + route, headers=sse) as answer:
                    assert answer.status == 200, f"GET {route} (SSE): {answer.status}"
                    frames = bytearray()
                    try:
                        async with asyncio.timeout(15):
                            async for piece in answer.content.iter_any():
                                frames += piece
                    except TimeoutError:
                        pass  # a stream that stays open after the run's end: what it sent is scanned
                    assert frames, f"GET {route} (SSE) sent nothing"
                    scan.data(f"gateway GET {route} (SSE)", bytes(frames))


def test_no_sensitive_value_is_kept_or_shown_in_clear_anywhere(stack: Stack) -> None:
    password = Secret("the --var secret", f"S3cr3t-{uuid.uuid4()}")
    token = Secret("the tofu output secret", f"T0k3n-{uuid.uuid4()}")
    api_key = Secret("the context secret", f"K3y-{uuid.uuid4()}")
    records = stack.root / "records"
    fake = stack.root / "bin" / "tofu"
    fake.write_text(FAKE_TOFU.replace("RECORDS", str(records)).replace("OUTPUT_SECRET", token.value))
    fake.chmod(0o755)
    folder = stack.root / "templates"
    folder.mkdir()
    (folder / "templates.yaml").write_text(
        TEMPLATES.replace("RECORDS", str(records)).replace("CONTEXT_SECRET", api_key.value)
    )
    scan = Scan([password, token, api_key])
    var = f"password={password.value}"

    # Deploy on the bus (the CLI seals the --var itself), destroy through the gateway (the store seals it).
    deployed = stack.cli("run", str(folder), "-e", "sealed", "--var", var, gateway=False)
    assert deployed.returncode == 0, scan.hide(deployed.stdout[-3000:] + deployed.stderr[-3000:])
    destroyed = stack.cli("run", str(folder), "-e", "sealed", "--var", var, "--action", "destroy", "--json")
    assert destroyed.returncode == 0, scan.hide(destroyed.stdout[-3000:] + destroyed.stderr[-3000:])
    document = json.loads(destroyed.stdout)
    assert document["status"] == "succeeded", scan.hide(destroyed.stdout[-3000:])
    run_ids = asyncio.run(_run_ids(stack))
    assert len(run_ids) == 2, run_ids
    assert document["run_id"] in run_ids, run_ids

    # The resources saw the real secrets, in the deploy and in the destroy.
    for action in ("deploy", "destroy"):
        assert (records / f"tofu-{action}").read_text().strip() == _sha(password.value), action
        assert (records / f"app-token-{action}").read_text().strip() == _sha(token.value), action
        assert (records / f"app-key-{action}").read_text().strip() == _sha(api_key.value), action

    outputs = {
        "trellis run (deploy, on the bus)": deployed,
        "trellis run --action destroy --json (gateway)": destroyed,
        "trellis runs list -e sealed": stack.cli("runs", "list", "-e", "sealed"),
        "trellis env show sealed": stack.cli("env", "show", "sealed"),
        "trellis env show sealed --json": stack.cli("env", "show", "sealed", "--json"),
    }
    for run_id in run_ids:
        outputs[f"trellis runs show {run_id}"] = stack.cli("runs", "show", run_id)
        outputs[f"trellis runs show {run_id} --json"] = stack.cli("runs", "show", run_id, "--json")
        outputs[f"trellis logs {run_id}"] = stack.cli("logs", run_id)
    for command, done in outputs.items():
        assert done.returncode == 0, f"{command}: {scan.hide(done.stderr[-2000:])}"
        scan.text(f"{command} stdout", done.stdout)
        scan.text(f"{command} stderr", done.stderr)
    logs = "".join(outputs[f"trellis logs {run_id}"].stdout for run_id in run_ids)
    assert "applying with password=" in logs, scan.hide(logs[-2000:])
    assert "the token is" in logs, scan.hide(logs[-2000:])

    asyncio.run(_gateway_answers(stack, run_ids, scan))
    # A value written in a template file is kept as written wherever the template's sources are
    # (the run request, the published bundle, its files): the context's secret is looked for
    # everywhere else. docs/security.md says so.
    bundles = subjects.bundles_bucket(stack.exports.get("TRELLIS_TENANT", "default"))
    as_written = {"TRELLIS_RUNS": [api_key.label], f"OBJ_{bundles}": [api_key.label]}
    streams = asyncio.run(scan_streams(stack.exports["TRELLIS_NATS_URL"], scan, skip_streams=as_written))
    assert {"TRELLIS_EVENTS", "TRELLIS_LOGS", "TRELLIS_RUNS", "TRELLIS_DEADLETTER"} <= set(streams), streams
    tables = asyncio.run(
        scan_tables(stack.database_url(), scan, skip_tables={"template_bundles": [api_key.label]})
    )
    assert {'"public"."runs"', '"public"."log_chunks"', '"public"."environments"'} <= set(tables), tables

    stack.proc.send_signal(signal.SIGINT)
    stack.proc.wait(90)
    scan.text("trellis dev up stdout (the services' log output)", stack.out.read_text())
    scan.text("trellis dev up stderr (the services' log output)", stack.err.read_text())
    assert "postgres_started" in stack.err.read_text() + stack.out.read_text()  # the services' logs were there
    # What the stack left on disk besides the servers' own data (read above through their APIs):
    # the agent's workspaces (an attempt's inputs and outputs files are removed once read).
    data = stack.root / "data"
    kept = [f for f in data.rglob("*") if f.is_file() and f.relative_to(data).parts[0] not in ("nats", "postgres")]
    for file in kept:
        scan.data(f"file {file.relative_to(stack.root)}", file.read_bytes())

    if scan.findings:  # pytest.fail: no assertion rewriting that could print a secret's value
        pytest.fail(scan.report(), pytrace=False)
