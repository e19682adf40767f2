"""What the embedded-stack CLI tests share: the command, its environment, a slow template and
ways to wait for processes to start or end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trellis_core.embedded import free_port

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"

SLOW_TEMPLATE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: slow}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: wait
          type: script
          options:
            script:
              script: |
                if [ "$TRELLIS_ACTION" = destroy ]; then exit 0; fi
                echo $$ > "MARKER"
                sleep 300
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: slow-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: slow}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: slow}
spec:
  template: {name: slow-stack, version: v1}
"""


def kill_activity(marker: Path) -> None:
    """Kill the slow activity's process group, if it started: a SIGKILLed agent cannot."""
    with contextlib.suppress(OSError, ValueError):
        os.killpg(int(marker.read_text()), signal.SIGKILL)


def trellis(*args: str) -> list[str]:
    return [sys.executable, "-m", "trellis_cli.main", *args]


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without its TRELLIS_* settings, with its own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    return env | {"TRELLIS_DATA_DIR": str(data_dir), "TRELLIS_LOG_FORMAT": "json"} | extra


def slow_template(folder: Path) -> Path:
    """A template whose one activity writes its shell's pid to `<folder>/started.pid`, then sleeps."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "started.pid"
    (folder / "templates.yaml").write_text(SLOW_TEMPLATE.replace("MARKER", str(marker)))
    return marker


def start_dev_up(data_dir: Path, cwd: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`trellis dev up` on a free port, and its NATS URL once it says it is up."""
    proc = subprocess.Popen(
        trellis("dev", "up", "--port", str(free_port()), *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(data_dir), cwd=cwd,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  Use it:"):
            return proc, line.split("=", 1)[1].strip()
    proc.wait(30)
    err = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"trellis dev up did not start:\n{''.join(lines)}\n{err}")


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line mentions `text` (no pgrep: slim images lack procps)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def servers_of(data_dir: Path) -> list[int]:
    """The nats-server and postgres processes whose data is under `data_dir`."""
    return processes_mentioning(str(data_dir))
