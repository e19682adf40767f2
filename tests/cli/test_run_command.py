"""`trellis run`: submit, follow, print; on the embedded stack it starts by itself."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trellis_cli.run_cmd import parse_vars
from trellis_cli.run_progress import RunView, as_json
from trellis_cli.sources import read_sources
from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.events import (
    ActivityCompleted,
    ActivityDispatched,
    ActivityFailed,
    ActivityStarted,
    RunCompiled,
    RunCompleted,
)
from trellis_core.workflow import Activity, ContainerSpec, HttpSpec, TemplateRef, Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_template_paths_may_be_files_or_directories_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "nested" / "b.yml").write_text("b: 2\n")
    (tmp_path / "notes.txt").write_text("not a template\n")
    sources = read_sources([str(tmp_path)])
    assert [Path(s.path).name for s in sources] == ["a.yaml", "b.yml"]
    with pytest.raises(ConfigError, match="no such file"):
        read_sources([str(tmp_path / "missing")])


def test_a_tolerated_failure_reads_as_tolerated() -> None:
    acts = (
        Activity(id="notify", kind="http", spec=HttpSpec(url="http://x"), on_failure="continue"),
        Activity(id="apply", kind="container", spec=ContainerSpec()),
    )
    wf = Workflow(environment="dev", template=TemplateRef(name="t"), action="deploy", activities=acts)
    ids = {"tenant": "acme", "run_id": "r1"}
    view = RunView(run_id="r1", environment="dev", action="deploy")
    view.apply(RunCompiled(workflow=wf, **ids))
    for activity_id in ("notify", "apply"):
        view.apply(ActivityDispatched(activity_id=activity_id, attempt=1, pool="default", **ids))
        view.apply(ActivityFailed(activity_id=activity_id, attempt=1, reason="refused", **ids))
    assert [a.shown_status for a in view.activities] == ["failed (tolerated)", "failed"]
    assert json.loads(as_json(view))["activities"][0]["status"] == "failed"


def test_vars_are_name_value_pairs() -> None:
    assert parse_vars(["a=1", "url=http://x/?q=1"]) == {"a": "1", "url": "http://x/?q=1"}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_vars(["novalue"])


def test_the_run_view_follows_attempts_and_marks_what_never_ran_as_skipped() -> None:
    acts = tuple(Activity(id=i, kind="container", spec=ContainerSpec()) for i in ("a", "b"))
    wf = Workflow(environment="dev", template=TemplateRef(name="t"), action="deploy", activities=acts)
    ids = {"tenant": "acme", "run_id": "r1"}
    view = RunView(run_id="r1", environment="dev", action="deploy")
    view.apply(RunCompiled(workflow=wf, **ids))
    view.apply(ActivityDispatched(activity_id="a", attempt=1, pool="default", **ids))
    view.apply(ActivityStarted(activity_id="a", attempt=1, agent="x", **ids))
    view.apply(ActivityFailed(activity_id="a", attempt=1, reason="boom", **ids))
    view.apply(ActivityDispatched(activity_id="a", attempt=2, pool="default", **ids))
    view.apply(ActivityCompleted(activity_id="a", attempt=1, **ids))  # late news of attempt 1: ignored
    assert view.activities[0].status == "dispatched"
    view.apply(ActivityCompleted(activity_id="a", attempt=2, outputs={"k": 1}, **ids))
    view.apply(RunCompleted(status="failed", message="b: boom", occurred_at=datetime.now(UTC), **ids))
    document = json.loads(as_json(view))
    assert document["status"] == "failed"
    assert [(a["id"], a["status"], a["attempts"]) for a in document["activities"]] == [
        ("a", "succeeded", 2),
        ("b", "skipped", 0),
    ]


def test_trellis_run_deploys_the_demo_on_the_embedded_stack_and_prints_one_json_document(stack_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env["TRELLIS_DATA_DIR"] = str(stack_dir / "data")
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", str(EXAMPLES / "demo"), "--environment", "demo", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=stack_dir, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["status"] == "succeeded"
    assert document["outputs"]["network"]["network_id"]["value"] == "net-demo"
    statuses = {a["id"]: a["status"] for a in document["activities"]}
    assert statuses["resource/app/task/release"] == "succeeded"
    assert all(a["attempts"] <= 1 for a in document["activities"])


FAILING = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: broken}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: boom, type: script, options: {script: {script: "echo going down; exit 3"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: failing}
spec:
  resources: [{name: broken}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: failing}
spec:
  template: {name: failing}
"""


def _trellis_run(tmp_path: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {"TRELLIS_DATA_DIR": str(tmp_path / "data"), **env_vars}
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)


def test_trellis_run_exits_non_zero_and_says_why_when_the_run_fails(stack_dir: Path) -> None:
    (stack_dir / "failing.yaml").write_text(FAILING)
    done = _trellis_run(stack_dir, str(stack_dir / "failing.yaml"), "--environment", "failing", "--json")
    assert done.returncode == 1, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["status"] == "failed"
    assert document["message"] == "resource/broken/task/boom: exited with code 3"


async def test_trellis_run_against_a_bus_nobody_serves_gives_up_naming_the_services(tmp_path: Path, bus: Bus) -> None:
    (tmp_path / "failing.yaml").write_text(FAILING)
    done = await asyncio.to_thread(
        _trellis_run,
        tmp_path,
        str(tmp_path / "failing.yaml"),
        "--environment",
        "failing",
        TRELLIS_NATS_URL=bus.settings.nats_url,
        TRELLIS_RUN_ANSWER_TIMEOUT_SECONDS="1",
        TRELLIS_STREAM_STORAGE="memory",
    )
    assert done.returncode == 1
    assert "no answer to run" in done.stderr
    assert "trellis compiler" in done.stderr


MIXED = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: broken}
spec:
  provider: custom
  variables:
    - {name: key, valueType: text, value: s3cr3t-value, options: {sensitive: true}}
  providerOptions:
    custom:
      tasks:
        - name: boom
          type: script
          onFailure: continue
          options: {script: {script: 'echo step one; echo "disk on fire, key $TRELLIS_VAR_key" >&2; exit 3'}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: slow}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: nap, type: script, timeoutSeconds: 1, options: {script: {script: "echo napping; sleep 60"}}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: chatty}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: hello, type: script, options: {script: {script: "echo hello from chatty; echo bye"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: mixed}
spec:
  resources: [{name: broken}, {name: slow}, {name: chatty}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: mixed}
spec:
  template: {name: mixed}
  variables: [{name: colour, value: blue}]
"""


def test_trellis_run_prints_each_failure_with_its_log_tail_the_timeout_and_every_warning(stack_dir: Path) -> None:
    (stack_dir / "mixed.yaml").write_text(MIXED)
    done = _trellis_run(stack_dir, str(stack_dir / "mixed.yaml"), "--environment", "mixed")
    assert done.returncode == 1, done.stderr[-3000:]
    out = done.stdout
    unwrapped = "".join(out.split())  # the console wraps long lines
    assert "warning:" in out
    assert "mixed.yaml:47:22:spec.variables[0].name:variable'colour'isnotdeclaredbyanytemplate" in unwrapped
    failure = out.index("resource/broken/task/boom failed (tolerated): exited with code 3\n")
    # the failure's log tail right under it (which of boom and nap ends first is the machine's choice)
    tail = out[failure:].split("\n")[1:4]
    assert "  | disk on fire, key ********" in tail, out
    assert "s3cr3t-value" not in out
    assert "resource/slow/task/nap timed_out: timed out after 1s\n" in out
    assert "hello from chatty" not in out  # a succeeded activity's log shows only with --follow


def test_trellis_run_follow_streams_prefixed_lines_and_json_carries_log_tails(stack_dir: Path) -> None:
    (stack_dir / "mixed.yaml").write_text(MIXED)
    args = (str(stack_dir / "mixed.yaml"), "--environment", "mixed", "--json", "--follow")
    done = _trellis_run(stack_dir, *args)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "resource/chatty/task/hello | hello from chatty\n" in done.stderr
    assert "resource/broken/task/boom | disk on fire, key ********\n" in done.stderr
    document = json.loads(done.stdout)
    [warning] = document["warnings"]
    assert warning.endswith(
        "mixed.yaml:47:22: spec.variables[0].name: variable 'colour' is not declared by any template"
    )
    activities = {a["id"]: a for a in document["activities"]}
    assert activities["resource/broken/task/boom"]["log_tail"] == ["step one", "disk on fire, key ********"]
    assert activities["resource/chatty/task/hello"]["log_tail"] == ["hello from chatty", "bye"]
    assert "s3cr3t-value" not in done.stdout + done.stderr
    assert activities["resource/slow/task/nap"]["status"] == "timed_out"
    assert activities["resource/slow/task/nap"]["log_tail"][0] == "napping"
    assert document["message"] == "resource/slow/task/nap: timed out after 1s"


SLOW = """\
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


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """What the process printed on stdout up to `text` (read from the pipe itself, so nothing
    waits in a buffer); fails after `timeout` without it."""
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while text.encode() not in seen:
            assert selector.select(timeout), f"no {text!r} within {timeout} s; got {seen!r}"
            data = os.read(fd, 65536)
            assert data, f"stdout closed before {text!r}; got {seen!r}"
            seen += data
    return seen.decode()


def _nats_server_under(directory: Path) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"nats-server") and any(str(directory).encode() in a for a in args):
            return int(cmdline.parent.name)
    raise AssertionError(f"no nats-server runs under {directory}")


def test_trellis_run_says_the_bus_is_gone_and_exits_when_nats_server_dies_mid_run(stack_dir: Path) -> None:
    (stack_dir / "slow.yaml").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")} | {
        "TRELLIS_DATA_DIR": str(stack_dir / "data")
    }
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", str(stack_dir / "slow.yaml"), "-e", "slow", "--follow"]
    proc = subprocess.Popen(cmd, env=env, cwd=stack_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _read_until(proc, "resource/slow/task/nap | napping", timeout=60)
        os.kill(_nats_server_under(stack_dir / "data"), signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1
    assert "trellis run: lost the bus at nats://127.0.0.1:" in err
    assert "Traceback" not in err


def test_ctrl_c_twice_stops_trellis_run_without_a_traceback(stack_dir: Path) -> None:
    (stack_dir / "slow.yaml").write_text(SLOW.replace("echo napping;", "trap '' TERM INT; echo napping;"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env["TRELLIS_DATA_DIR"] = str(stack_dir / "data")
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", str(stack_dir / "slow.yaml"), "-e", "slow", "--follow"]
    proc = subprocess.Popen(cmd, env=env, cwd=stack_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _read_until(proc, "resource/slow/task/nap | napping", timeout=60)
        proc.send_signal(signal.SIGINT)
        _read_until(proc, "cancelling the run", timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert "Traceback" not in out
    assert " cancelled" in out


def test_a_run_whose_workflow_travels_by_reference_is_shown_activity_by_activity(stack_dir: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from tree_templates import tree_templates

    templates = tree_templates(stack_dir / "tree", 650)  # compiles to about 290 KB: over the inline limit
    done = _trellis_run(stack_dir, str(templates), "--environment", "tree", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert len(document["activities"]) == 650
    assert {a["status"] for a in document["activities"]} == {"succeeded"}
    assert document["outputs"]["r649"]["id"]["value"] == "root" + "/x" * 10  # r649 is ten generations down
