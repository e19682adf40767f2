"""One embedded stack per data directory: its owner holds `stack.lock` (flock) and records its NATS
and gateway URLs in `stack.json`, so a second command on that directory joins the stack or waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from trellis_core.errors import TrellisError

POLL_SECONDS = 0.2


class StackBusy(TrellisError):
    """Another command owns the data directory's embedded stack, and this one cannot share it."""


class StackRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the owner of a data directory's stack tells the commands that come after it."""

    pid: int
    command: str  # "trellis dev up", "trellis run"
    nats_url: str  # empty while its NATS starts
    joinable: bool  # it serves other commands' runs until stopped (`trellis dev up`)
    gateway_url: str = ""  # its gateway, once it answers (tokens: credentials.json beside the record)


_decode = msgspec.json.Decoder(StackRecord).decode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StackLock:
    """The data directory's lock file and record; the kernel drops the lock when its owner dies."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock_path = data_dir / "stack.lock"
        self.record_path = data_dir / "stack.json"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; a record left by an owner that was killed is removed."""
        if self._fd is not None:
            return True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        self.record_path.unlink(missing_ok=True)
        return True

    def publish(self, record: StackRecord) -> None:
        """Tell later commands where this stack's NATS listens (written whole, then renamed)."""
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        tmp.replace(self.record_path)

    def owner(self) -> StackRecord | None:
        """The live owner's record, or None while it has written none (or left a stale one)."""
        try:
            record = _decode(self.record_path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        return record if _alive(record.pid) else None

    def release(self) -> None:
        if self._fd is None:
            return
        self.record_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


async def claim(
    lock: StackLock, *, may_join: bool, wait_seconds: float, notify: Callable[[str], None]
) -> StackRecord | None:
    """None once this command owns the data directory; the owner's record when it should join a
    running `trellis dev up` instead. Waits (saying so once) while another `trellis run` owns it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    told = False
    where = lock.data_dir
    while True:
        if lock.try_acquire():
            return None
        owner = lock.owner()
        if owner is not None and owner.joinable and owner.nats_url:
            if may_join:
                return owner
            gateway = f"; export TRELLIS_GATEWAY_URL={owner.gateway_url}" if owner.gateway_url else ""
            raise StackBusy(
                f"{owner.command} (pid {owner.pid}) already runs the stack on {where}, NATS at {owner.nats_url}: "
                f"use it (export TRELLIS_NATS_URL={owner.nats_url}{gateway}; the tokens are in "
                f"{where / 'credentials.json'}) or set TRELLIS_DATA_DIR to another directory"
            )
        if not told:
            who = owner.command if owner is not None else "trellis command"
            notify(f"another {who} is using {where}; waiting")
            told = True
        if loop.time() > deadline:
            raise StackBusy(
                f"another trellis command still uses {where} after {wait_seconds:g} s "
                "(TRELLIS_STACK_WAIT_SECONDS); stop it or set TRELLIS_DATA_DIR to another directory"
            )
        await asyncio.sleep(POLL_SECONDS)
