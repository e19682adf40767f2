"""The CLI through the gateway, against one real `trellis dev up` (store, gateway, compiler,
scheduler, agent) for the module: the exports it prints work in another shell; publish, apply,
deploy, runs, logs, destroy; approvals; cancel; `trellis run` through the gateway; and refusals
that say what was wrong (no gateway, a bad token, a template error with its file:line:col)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from embedded_stack_support import cli_env, servers_of, trellis
from gateway_cli_support import BROKEN, DevUp, run_document, start, wait_for, write_templates

from trellis_cli.devstack import DevStack
from trellis_core.settings import Settings

RUN_ID = re.compile(r"^run (\S+): (deploy|destroy) of environment (\S+) started$", re.MULTILINE)


@pytest.fixture(scope="module")
def up() -> Iterator[DevUp]:
    root = Path(tempfile.mkdtemp(prefix="trellis-stack-"))  # outside basetemp: see conftest's stack_dir
    running = start(root / "data", root)
    write_templates(root / "templates")
    try:
        yield running
    finally:
        out, err = running.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert running.proc.returncode == 0, err[-3000:]
    assert "Stopped." in out
    assert not servers_of(root)


def _published(up: DevUp) -> None:
    result = up.cli("template", "publish", str(up.cwd / "templates"))
    assert result.returncode == 0, result.stderr
    assert "published EnvironmentTemplate greeting-stack v1" in result.stdout


def _started(result: subprocess.CompletedProcess[str]) -> str:
    found = RUN_ID.search(result.stdout)
    assert found is not None, result.stdout + result.stderr
    return found.group(1)


def test_dev_up_prints_exports_that_work_in_another_shell(up: DevUp) -> None:
    assert set(up.exports) >= {"TRELLIS_NATS_URL", "TRELLIS_GATEWAY_URL", "TRELLIS_TOKEN", "TRELLIS_ADMIN_TOKEN"}
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", up.exports["TRELLIS_GATEWAY_URL"])
    assert up.exports["TRELLIS_TOKEN"] != up.exports["TRELLIS_ADMIN_TOKEN"]
    console = f"{up.exports['TRELLIS_GATEWAY_URL']}/console/"
    assert any(line.split() == ["Console:", console, "(sign", "in", "with", "TRELLIS_TOKEN", "below)"]
               for line in up.lines), up.lines
    with urllib.request.urlopen(console, timeout=10) as page:
        assert b"<title>Trellis</title>" in page.read()
    assert all(line.strip().startswith(("export ", "Use it:")) for line in up.lines if "export " in line)
    listed = up.cli("env", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    # A later command on the same data dir finds the gateway in stack.json, the token beside it.
    record = json.loads((up.data_dir / "stack.json").read_text())
    assert record["gateway_url"] == up.exports["TRELLIS_GATEWAY_URL"]
    second = up.cli("dev", "up", env=cli_env(up.data_dir))
    assert second.returncode == 1
    assert f"export TRELLIS_GATEWAY_URL={up.exports['TRELLIS_GATEWAY_URL']}" in second.stderr
    assert str(up.data_dir / "credentials.json") in second.stderr


async def test_a_command_joining_the_stack_gets_its_gateway_and_the_saved_token(up: DevUp) -> None:
    joined = DevStack(Settings.from_env({}, data_dir=up.data_dir), notify=lambda _: None)
    async with joined:
        assert joined.joined is not None
        assert joined.settings.gateway_url == up.exports["TRELLIS_GATEWAY_URL"]
        assert joined.settings.token == up.exports["TRELLIS_TOKEN"]
        assert joined.settings.nats_url == up.exports["TRELLIS_NATS_URL"]


def test_publish_apply_deploy_show_logs_and_destroy(up: DevUp) -> None:
    _published(up)
    applied = up.cli("env", "apply", "hello-a", "--template", "greeting-stack@v1", "--var", "greeting=bonjour")
    assert applied.returncode == 0, applied.stderr
    assert "environment hello-a applied: greeting-stack@v1" in applied.stdout

    deployed = up.cli("env", "deploy", "hello-a")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    run_id = _started(deployed)
    assert f"run {run_id} succeeded" in deployed.stdout

    shown = up.cli("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"run {run_id}: deploy of hello-a, succeeded" in shown.stdout
    assert re.search(r"resource/greeter/task/say\s+succeeded\s+1", shown.stdout), shown.stdout
    listed = up.cli("runs", "list", "--environment", "hello-a")
    assert run_id in listed.stdout, listed.stdout + listed.stderr

    logs = up.cli("logs", run_id)
    assert logs.returncode == 0, logs.stderr
    assert "bonjour from hello-a" in logs.stdout
    one = up.cli("logs", run_id, "resource/greeter/task/say")
    assert "bonjour from hello-a" in one.stdout, one.stdout + one.stderr

    env = up.cli("env", "show", "hello-a")
    assert env.returncode == 0, env.stderr
    assert "environment hello-a: deployed" in env.stdout
    assert "greeter.said = bonjour" in env.stdout
    assert f"last run:  {run_id}" in env.stdout

    destroyed = up.cli("env", "destroy", "hello-a")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    destroy_id = _started(destroyed)
    assert destroy_id != run_id
    after = up.cli("env", "show", "hello-a")
    assert "environment hello-a: destroyed" in after.stdout, after.stdout
    assert "goodbye from hello-a" in up.cli("logs", destroy_id).stdout


def test_apply_sends_the_etag_it_read_so_a_second_apply_updates(up: DevUp) -> None:
    _published(up)
    for greeting in ("one", "two"):
        applied = up.cli("env", "apply", "hello-b", "--template", "greeting-stack@v1", "--var", f"greeting={greeting}")
        assert applied.returncode == 0, applied.stderr
    shown = up.cli("env", "show", "hello-b", "--json")
    assert json.loads(shown.stdout)["variables"] == {"greeting": "two"}
    kept = up.cli("env", "apply", "hello-b", "--var", "greeting=three")  # no --template: the current one
    assert kept.returncode == 0, kept.stderr
    assert "greeting-stack@v1" in kept.stdout


def test_an_approval_gate_waits_for_trellis_approve(up: DevUp) -> None:
    _published(up)
    for name in ("gated-yes", "gated-no"):
        assert up.cli("env", "apply", name, "--template", "gated-stack@v1").returncode == 0
    approved_id = _started(up.cli("env", "deploy", "gated-yes", "--no-wait"))
    rejected_id = _started(up.cli("env", "deploy", "gated-no", "--no-wait"))

    def waiting(run_id: str) -> bool:
        activities = run_document(up, run_id).get("activities", [])
        assert isinstance(activities, list)
        return any(a["id"] == "environment/on-init/gate" and a["status"] == "waiting" for a in activities)

    for run_id in (approved_id, rejected_id):
        wait_for(lambda run_id=run_id: waiting(run_id), 60, f"run {run_id} waits for its approval")
    yes = up.cli("approve", approved_id, "environment/on-init/gate", "--comment", "looks good")
    assert yes.returncode == 0, yes.stderr
    assert f"approved environment/on-init/gate of run {approved_id}" in yes.stdout
    no = up.cli("approve", rejected_id, "environment/on-init/gate", "--reject")
    assert no.returncode == 0, no.stderr

    wait_for(lambda: run_document(up, approved_id)["status"] == "succeeded", 60, "the approved run succeeded")
    wait_for(lambda: run_document(up, rejected_id)["status"] == "failed", 60, "the rejected run failed")
    again = up.cli("approve", approved_id, "environment/on-init/gate")
    assert again.returncode == 1
    assert f"/v1/runs/{approved_id}/approvals/environment/on-init/gate: 409" in again.stderr


def test_cancel_through_the_gateway_and_a_followed_run_exits_non_zero(up: DevUp) -> None:
    _published(up)
    assert up.cli("env", "apply", "sleepy", "--template", "sleepy-stack@v1").returncode == 0
    follower = subprocess.Popen(
        trellis("env", "deploy", "sleepy"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=up.cwd, env=up.env(),
    )
    try:
        assert follower.stdout is not None
        run_id = _started(subprocess.CompletedProcess([], 0, follower.stdout.readline(), ""))
        wait_for(lambda: run_document(up, run_id)["status"] == "running", 60, "the slow run started")
        cancelled = up.cli("cancel", run_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"asked to cancel run {run_id}" in cancelled.stdout
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 1, out + err
    assert f"run {run_id} cancelled" in out
    assert run_document(up, run_id)["status"] == "cancelled"


def test_trellis_run_goes_through_the_gateway_when_it_is_set(up: DevUp) -> None:
    result = up.cli("run", str(up.cwd / "templates"), "-e", "greeting", "--var", "greeting=hej", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["status"] == "succeeded"
    assert document["outputs"]["greeter"]["said"]["value"] == "hej"
    # The gateway keeps it: the environment and its run.
    shown = up.cli("env", "show", "greeting")
    assert "environment greeting: deployed" in shown.stdout, shown.stdout + shown.stderr
    assert document["run_id"] in up.cli("runs", "list", "-e", "greeting").stdout


def test_a_template_error_is_printed_with_its_file_line_and_column(up: DevUp) -> None:
    folder = write_templates(up.cwd / "broken", BROKEN, "broken.yaml")
    result = up.cli("template", "publish", str(folder))
    assert result.returncode == 1
    assert "trellis template publish: POST /v1/templates: 422" in result.stderr
    assert re.search(rf"{re.escape(str(folder / 'broken.yaml'))}:9:\d+: ", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_token_is_refused_with_a_message_naming_trellis_token(up: DevUp) -> None:
    result = up.cli("env", "list", env=up.env(TRELLIS_TOKEN="not-a-token"))
    assert result.returncode == 1
    assert "GET /v1/environments: 401" in result.stderr
    assert "TRELLIS_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_run_or_environment_is_a_404_saying_which(up: DevUp) -> None:
    missing = up.cli("runs", "show", "no-such-run")
    assert missing.returncode == 1
    assert "GET /v1/runs/no-such-run: 404" in missing.stderr
    env = up.cli("env", "deploy", "never-applied")
    assert env.returncode == 1
    assert "/v1/environments/never-applied/runs: 404" in env.stderr
