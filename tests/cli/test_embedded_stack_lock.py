"""The data directory's lock: one owner; a later command joins a running `dev up`, waits for
anything else (saying so once, then giving up after its limit), and a dead owner's record is ignored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trellis_cli.stack_lock import StackBusy, StackLock, StackRecord, claim


def _owner(data: Path, *, joinable: bool, url: str = "nats://127.0.0.1:1234") -> StackLock:
    lock = StackLock(data)
    assert lock.try_acquire()
    lock.publish(StackRecord(pid=os.getpid(), command="trellis dev up" if joinable else "trellis run",
                             nats_url=url, joinable=joinable))
    return lock


async def test_a_run_joins_a_running_dev_up(tmp_path: Path) -> None:
    owner = _owner(tmp_path, joinable=True)
    try:
        said: list[str] = []
        record = await claim(StackLock(tmp_path), may_join=True, wait_seconds=5, notify=said.append)
        assert record is not None
        assert record.nats_url == "nats://127.0.0.1:1234"
        assert said == []
    finally:
        owner.release()


async def test_a_second_dev_up_is_refused_naming_the_first(tmp_path: Path) -> None:
    owner = _owner(tmp_path, joinable=True)
    try:
        with pytest.raises(StackBusy, match=r"trellis dev up \(pid \d+\) already runs the stack on .*1234"):
            await claim(StackLock(tmp_path), may_join=False, wait_seconds=5, notify=print)
    finally:
        owner.release()


async def test_a_command_waits_for_a_run_saying_so_once_then_gives_up(tmp_path: Path) -> None:
    owner = _owner(tmp_path, joinable=False)
    try:
        said: list[str] = []
        with pytest.raises(StackBusy, match=r"after 0\.5 s"):
            await claim(StackLock(tmp_path), may_join=True, wait_seconds=0.5, notify=said.append)
        assert said == [f"another trellis run is using {tmp_path}; waiting"]
    finally:
        owner.release()


async def test_a_waiting_command_takes_the_lock_once_the_owner_releases_it(tmp_path: Path) -> None:
    owner = _owner(tmp_path, joinable=False)
    lock = StackLock(tmp_path)
    said: list[str] = []

    def release_on_notice(message: str) -> None:
        said.append(message)
        owner.release()

    assert await claim(lock, may_join=True, wait_seconds=5, notify=release_on_notice) is None
    assert lock.held
    assert said == [f"another trellis run is using {tmp_path}; waiting"]
    lock.release()


def test_a_killed_owners_lock_and_record_are_gone(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path; from trellis_cli.stack_lock import StackLock, StackRecord\n"
        "lock = StackLock(Path(sys.argv[1])); assert lock.try_acquire()\n"
        "lock.publish(StackRecord(pid=os.getpid(), command='trellis dev up', nats_url='nats://x:1', joinable=True))\n"
        "os._exit(0)\n"  # no release: as if killed
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=30)
    lock = StackLock(tmp_path)
    assert lock.owner() is None, "the record's pid is dead"
    assert lock.try_acquire()
    assert not lock.record_path.exists(), "the stale record was removed"
    lock.release()
