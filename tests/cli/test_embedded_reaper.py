"""The activity reaper kills the local agent's processes only when the stack's owner dies unsaid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from embedded_stack_support import alive, wait_until

from trellis_cli.reaper import Reaper


def _activity(agent_dir: Path) -> subprocess.Popen[bytes]:
    """A process group like an activity's: a shell and its child, in a workspace under `agent_dir`."""
    env = {**os.environ, "TRELLIS_WORKSPACE": str(agent_dir.resolve() / "t" / "run" / "ws")}
    return subprocess.Popen(["sh", "-c", "sleep 300 & wait"], env=env, start_new_session=True)


def test_a_clean_stop_leaves_the_activities_to_the_agent(tmp_path: Path) -> None:
    activity = _activity(tmp_path / "agent")
    reaper = Reaper(tmp_path / "agent")
    try:
        reaper.start()
        reaper.stop()
        assert activity.poll() is None
    finally:
        os.killpg(activity.pid, 9)
        activity.wait(10)


def test_an_owner_gone_unsaid_takes_its_activities_with_it(tmp_path: Path) -> None:
    activity = _activity(tmp_path / "agent")
    bystander = _activity(tmp_path / "another-stack")
    reaper = Reaper(tmp_path / "agent")
    try:
        reaper.start()
        assert reaper.proc is not None
        assert reaper.proc.stdin is not None
        reaper.proc.stdin.close()  # what the kernel does when the owner is SIGKILLed
        reaper.proc.wait(30)
        activity.wait(30)
        wait_until(lambda: not alive(activity.pid), 10, "the activity was killed")
        assert bystander.poll() is None, "another stack's activity is not this reaper's"
    finally:
        for proc in (activity, bystander):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(10)
