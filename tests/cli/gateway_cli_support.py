"""What the gateway CLI tests share: `trellis dev up` started with the exports it prints, the CLI
run with them, and templates with outputs, an approval gate and a slow task."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedded_stack_support import cli_env, trellis

from trellis_core.embedded import free_port

GREETING = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: greeter}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: say
          type: script
          options:
            script:
              script: |
                if [ "$TRELLIS_ACTION" = destroy ]; then echo "goodbye from $(environment.name)$"; exit 0; fi
                echo "$(environment.variables.greeting)$ from $(environment.name)$"
                printf '{"said": "%s"}' "$(environment.variables.greeting)$" > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: sleeper}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: nap
          type: script
          options: {script: {script: "echo napping; sleep 120"}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: greeting-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: greeter}]
  variables:
    - {name: greeting, valueType: text, value: hello}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: gated-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: greeter}]
  variables:
    - {name: greeting, valueType: text, value: hello}
  hooks:
    onInit:
      - name: gate
        type: approval
        options: {approval: {type: internal}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: sleepy-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: sleeper}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: greeting}
spec:
  template: {name: greeting-stack, version: v1}
"""

# Line 9, column 11 holds the unknown field: the 422 must name it.
BROKEN = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: broken}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - nmae: typo
          type: script
"""


@dataclass
class DevUp:
    """A running `trellis dev up` and the variables it told us to export."""

    proc: subprocess.Popen[str]
    data_dir: Path
    cwd: Path
    exports: dict[str, str]
    lines: list[str]

    def env(self, **extra: str) -> dict[str, str]:
        """A fresh shell's environment with the pasted exports (and its own data dir)."""
        return cli_env(self.cwd / "elsewhere", **self.exports) | extra

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            trellis(*args), capture_output=True, text=True, timeout=timeout, cwd=self.cwd,
            env=self.env() if env is None else env, check=False,
        )

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate(timeout=30)


def start(data_dir: Path, cwd: Path) -> DevUp:
    """`trellis dev up` on a free NATS port; returns once it printed its last export line."""
    proc = subprocess.Popen(
        trellis("dev", "up", "--port", str(free_port())),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(data_dir), cwd=cwd,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    exports: dict[str, str] = {}
    for line in proc.stdout:
        lines.append(line)
        if "export " in line:
            name, _, value = line.split("export ", 1)[1].strip().partition("=")
            exports[name] = value
        if "TRELLIS_ADMIN_TOKEN" in exports:
            return DevUp(proc, data_dir, cwd, exports, lines)
    proc.wait(30)
    err = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"trellis dev up did not print its exports:\n{''.join(lines)}\n{err[-3000:]}")


def write_templates(folder: Path, text: str = GREETING, name: str = "templates.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def run_document(up: DevUp, run_id: str) -> dict[str, object]:
    shown = up.cli("runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    document: dict[str, object] = json.loads(shown.stdout)
    return document


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        time.sleep(0.2)
