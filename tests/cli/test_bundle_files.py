"""Files beside templates: `trellis run DIR` ships every non-template file under DIR (hidden and
junk files excluded) with the run, and a task finds them in its workspace, byte-exact."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trellis_cli.sources import read_files, template_files, walk
from trellis_compiler.service import serve
from trellis_core import subjects
from trellis_core.bus import Bus, get_bundle
from trellis_core.errors import ConfigError
from trellis_core.events import (
    BundleFile,
    RunCompiled,
    RunEvent,
    RunRejected,
    RunRequested,
    SourceFile,
    decode_run_event,
    pack_bundle,
    unpack_bundle,
)
from trellis_core.settings import Settings

TIMEOUT = 10.0
TEMPLATE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: hello}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: greet, type: script, options: {script: {script: "sh scripts/hello.sh"}}}
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
HELLO = """\
here() { if [ -e "$1" ]; then echo yes; else echo no; fi; }
printf '{"blob": "%s", "tool": "%s", "bundle_dir": "%s", "pwd": "%s", "git": "%s", "env": "%s", "pyc": "%s"}' \\
  "$(sha256sum assets/blob.bin | cut -d' ' -f1)" "$(./scripts/tool.sh)" "$TRELLIS_BUNDLE_DIR" "$PWD" \\
  "$(here .git)" "$(here .env)" "$(here scripts/__pycache__)" > "$TRELLIS_OUTPUTS"
"""


def template_dir(root: Path) -> Path:
    """A template directory as a user has it: scripts, a binary, and things that must stay behind."""
    t = root / "templates"
    for sub in ("scripts/__pycache__", "assets", ".git"):
        (t / sub).mkdir(parents=True)
    (t / "hello.yaml").write_text(TEMPLATE)
    (t / "scripts" / "hello.sh").write_text(HELLO)
    (t / "scripts" / "tool.sh").write_text("#!/bin/sh\necho tool-ran\n")
    (t / "scripts" / "tool.sh").chmod(0o755)
    (t / "scripts" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (t / "assets" / "blob.bin").write_bytes(bytes(range(256)) * 8 + b"\x00\r\n\xff")
    (t / ".git" / "config").write_text("[core]\n")
    (t / ".env").write_text("SECRET=1\n")
    (t / "README.md~").write_text("backup\n")
    return t


def trellis_run(cwd: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {"TRELLIS_DATA_DIR": str(cwd / "data"), **env_vars}
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_a_script_task_runs_scripts_beside_its_template_and_reads_a_binary_file_byte_exact(stack_dir: Path) -> None:
    t = template_dir(stack_dir)
    done = trellis_run(stack_dir, str(t), "--environment", "hello", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = {k: v["value"] for k, v in json.loads(done.stdout)["outputs"]["hello"].items()}
    assert outputs == {
        "blob": hashlib.sha256((t / "assets" / "blob.bin").read_bytes()).hexdigest(),
        "tool": "tool-ran",  # its exec bit came along
        "bundle_dir": outputs["pwd"],  # the workspace root, where the task runs
        "pwd": outputs["pwd"],
        "git": "no",
        "env": "no",
        "pyc": "no",
    }


def test_a_file_over_the_limit_is_refused_before_anything_starts_naming_the_biggest(tmp_path: Path) -> None:
    t = template_dir(tmp_path)
    (t / "assets" / "big.iso").write_bytes(b"\x00" * 6000)
    done = trellis_run(tmp_path, str(t), "--environment", "hello", TRELLIS_BUNDLE_FILE_MAX_BYTES="4096")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(
        "trellis run: files beside the templates: 1 over the 4 KiB a file may have (TRELLIS_BUNDLE_FILE_MAX_BYTES): "
        f"{t / 'assets' / 'big.iso'} (5.9 KiB); keep big files out of the template directories"
    )
    assert not (tmp_path / "data").exists()  # refused before the embedded stack started


def test_the_total_limit_names_the_biggest_files_first(tmp_path: Path) -> None:
    t = template_dir(tmp_path)
    for i in range(7):
        (t / "assets" / f"part{i}.bin").write_bytes(b"x" * (1000 + i))
    settings = Settings.from_env({}, bundle_max_bytes=6000, bundle_file_max_bytes=3000, data_dir=tmp_path / "data")
    with pytest.raises(ConfigError) as refused:
        read_files([str(t)], settings)
    message = str(refused.value)
    assert "over the 5.9 KiB limit (TRELLIS_BUNDLE_MAX_BYTES); biggest: " in message
    biggest = message.split("biggest: ")[1]
    assert biggest.startswith(f"{t / 'assets' / 'blob.bin'} (2 KiB), {t / 'assets' / 'part6.bin'} (1006 B)")
    assert biggest.count(" B)") + biggest.count("KiB)") == 5
    assert "and 5 more; keep big files out" in biggest


def test_hidden_and_junk_files_stay_behind_and_yaml_files_are_the_templates(tmp_path: Path) -> None:
    t = template_dir(tmp_path)
    (t / ".github" / "workflows").mkdir(parents=True)
    (t / ".github" / "workflows" / "ci.yml").write_text("on: push\n")
    (t / "nested" / ".cache").mkdir(parents=True)
    (t / "nested" / ".cache" / "deep.sh").write_text("echo hidden\n")
    (t / "nested" / "more.yml").write_text("a: 1\n")
    (t / "nested" / "notes.txt").write_text("kept\n")
    (t / "scripts" / "old.pyc").write_bytes(b"junk")
    found = walk([str(t)])
    assert [p.relative_to(t).as_posix() for p in found.templates] == ["hello.yaml", "nested/more.yml"]
    beside = ["assets/blob.bin", "nested/notes.txt", "scripts/hello.sh", "scripts/tool.sh"]
    assert [b.rel for b in found.files] == beside
    # `trellis template` reads the same templates; a missing PATH stays for the loader to report.
    missing = str(t / "missing.yaml")
    assert template_files([str(t), missing]) == [*(str(p) for p in found.templates), missing]
    files = read_files([str(t)], Settings.from_env({}, data_dir=tmp_path / "data"))
    assert {f.path: oct(f.mode) for f in files} == {
        "assets/blob.bin": "0o100644",
        "nested/notes.txt": "0o100644",
        "scripts/hello.sh": "0o100644",
        "scripts/tool.sh": "0o100755",
    }


def test_symlinks_are_followed_to_files_and_refused_to_directories(tmp_path: Path) -> None:
    t = template_dir(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "common.sh").write_text("echo common\n")
    (t / "scripts" / "common.sh").symlink_to(shared / "common.sh")
    settings = Settings.from_env({}, data_dir=tmp_path / "data")
    common = next(f for f in read_files([str(t)], settings) if f.path == "scripts/common.sh")
    assert (common.data, oct(common.mode)) == (b"echo common\n", "0o100644")
    (t / "lib").symlink_to(shared)
    (t / "dangling.sh").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as refused:
        read_files([str(t)], settings)
    assert f"{t / 'lib'} is a symlink to a directory: Trellis does not follow those" in str(refused.value)
    assert f"{t / 'dangling.sh'} is not a regular file" in str(refused.value)


def test_two_directories_may_not_put_two_files_at_one_path(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.sh").write_text(f"echo {name}\n")
    with pytest.raises(ConfigError, match=r"would both be 'run\.sh' in the workspace"):
        read_files([str(tmp_path / "one"), str(tmp_path / "two")], Settings.from_env({}, data_dir=tmp_path / "d"))


def test_the_limits_are_settings_checked_at_start_up() -> None:
    with pytest.raises(ConfigError, match="TRELLIS_BUNDLE_FILE_MAX_BYTES=2048: must be greater than 0 and at most"):
        Settings.from_env({"TRELLIS_BUNDLE_MAX_BYTES": "1024", "TRELLIS_BUNDLE_FILE_MAX_BYTES": "2048"})
    with pytest.raises(ConfigError, match=r"TRELLIS_BUNDLE_MAX_BYTES=\d+: .*at most 48 MiB"):
        Settings.from_env({"TRELLIS_BUNDLE_MAX_BYTES": str(64 * 1024**2)})


@pytest.fixture
async def compiled(bus: Bus, unique: str) -> AsyncIterator[asyncio.Queue[RunEvent]]:
    """A compiler serving the bus, and the run events of tenant `unique`."""
    queue: asyncio.Queue[RunEvent] = asyncio.Queue()

    async def collect(msg: object) -> None:
        await queue.put(decode_run_event(msg.data))  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe(subjects.all_run_events(unique), cb=collect)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), TIMEOUT)
    yield queue
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)
    await sub.unsubscribe()


async def test_the_compiler_stores_the_files_once_and_names_their_digest_on_every_activity(
    bus: Bus, compiled: asyncio.Queue[RunEvent], unique: str
) -> None:
    files = (
        BundleFile(path="scripts/hello.sh", mode=0o100755, data=b"echo hi\n"),
        BundleFile(path="a.bin", data=b"\x00"),
    )
    for run_id in ("run-1", "run-2"):
        request = RunRequested(
            tenant=unique,
            run_id=run_id,
            environment="hello",
            sources=(SourceFile(path="hello.yaml", text=TEMPLATE),),
            files=files,
        )
        await bus.publish(subjects.runs_requested(unique), request, msg_id=f"{unique}/{run_id}/request")
        event = await asyncio.wait_for(compiled.get(), TIMEOUT)
        assert isinstance(event, RunCompiled), event
        digest, blob = pack_bundle(files)
        assert {a.bundle for a in event.workflow.activities} == {digest}
        assert await get_bundle(bus, unique, digest) == blob
        assert unpack_bundle(blob) == (files[1], files[0])  # sorted by path


async def test_the_compiler_rejects_a_run_whose_files_could_leave_the_workspace(
    bus: Bus, compiled: asyncio.Queue[RunEvent], unique: str
) -> None:
    request = RunRequested(
        tenant=unique,
        run_id="run-1",
        environment="hello",
        sources=(SourceFile(path="hello.yaml", text=TEMPLATE),),
        files=(BundleFile(path="../outside.sh", data=b"echo"), BundleFile(path="ok.sh", data=b"echo")),
    )
    await bus.publish(subjects.runs_requested(unique), request, msg_id=f"{unique}/run-1/request")
    event = await asyncio.wait_for(compiled.get(), TIMEOUT)
    assert isinstance(event, RunRejected)
    assert [e.message for e in event.errors] == [
        "file beside the templates '../outside.sh' climbs out of the workspace"
    ]


def test_a_template_that_is_not_utf8_is_named_not_a_traceback(tmp_path: Path) -> None:
    t = template_dir(tmp_path)
    (t / "broken.yaml").write_bytes(b"\xff\xfe")
    done = trellis_run(tmp_path, str(t), "--environment", "hello")
    assert done.returncode == 2
    assert done.stderr == f"trellis run: {t / 'broken.yaml'}: not UTF-8 text (invalid start byte at byte 0)\n"


def test_templates_too_big_for_one_bus_message_are_refused_naming_the_sizes(stack_dir: Path) -> None:
    t = template_dir(stack_dir)  # the stack starts before the bus refuses: outside pytest's basetemp
    (t / "huge.yaml").write_text("# padding\n" * 120_000)  # 1.2 MB of comments: past the 1 MiB max_payload
    done = trellis_run(stack_dir, str(t), "--environment", "hello")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "bytes and the bus takes at most 1,048,576 (its max_payload)" in message
    assert f"Largest: {t / 'huge.yaml'} (1,200,000 bytes)" in message
