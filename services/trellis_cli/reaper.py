"""A watchdog for the local agent's activity processes: if the stack's process dies without saying
goodbye (SIGKILL), it kills every process whose TRELLIS_WORKSPACE lies under the agent's folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

GOODBYE = b"stop\n"


def activity_processes(agent_dir: Path) -> list[int]:
    """Pids whose environment puts their workspace under `agent_dir` (activities and their children)."""
    prefix = f"TRELLIS_WORKSPACE={agent_dir}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(prefix) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class Reaper:
    """Started by the stack's owner; `stop()` on a clean exit. A dead owner closes the pipe unsaid."""

    def __init__(self, agent_dir: Path) -> None:
        self.agent_dir = agent_dir.resolve()  # as the workspaces' paths are
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not Path("/proc/self/environ").exists():
            return  # no /proc to find the activities by: nothing to watch with
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trellis_cli.reaper", str(self.agent_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the stack is not for it
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(GOODBYE)
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def main(agent_dir: str) -> int:
    said = sys.stdin.buffer.read()  # blocks until the owner says goodbye or dies
    if said != GOODBYE:
        for _ in range(3):  # a process forked during a sweep is caught by the next
            pids = activity_processes(Path(agent_dir))
            if not pids:
                break
            kill_all(pids)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
