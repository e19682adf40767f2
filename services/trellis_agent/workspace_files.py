"""Reading and writing files inside a workspace without following a symlink a command left there.

Every path is walked one directory at a time from the workspace root with O_NOFOLLOW, so a
symlinked directory or file (`.trellis -> /etc`) is refused instead of leading outside.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

MAX_READ_BYTES = 16 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO there must not block


class UnsafePath(Exception):
    """A workspace path that leads through a symlink or a non-directory; the message says where."""


@contextlib.contextmanager
def directory(root: Path, rel: str, *, create: bool = True) -> Iterator[int]:
    """A descriptor of directory `rel` ("a/b", "" for the root) below `root`, made if missing."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in (p for p in rel.split("/") if p):
            if part == "..":
                raise UnsafePath("climbs out of the workspace")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:
                why = "a symlink" if _is_symlink(part, fd) else f"not a directory ({exc.strerror})"
                raise UnsafePath(f"the workspace holds {why} at {part!r}: refused, never followed") from None
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_file(root: Path, rel: str, flags: int, mode: int = 0o600) -> int:
    """Open regular file `rel` below `root` (parents made when writing); refuses a symlink, a FIFO
    or a device at `rel` or on the way to it. Raises UnsafePath, or FileNotFoundError for a read."""
    parent, _, name = rel.rpartition("/")
    if name in ("", ".", ".."):
        raise UnsafePath(f"{rel!r}: not a file name in the workspace")
    try:
        opened = _open_in(root, parent, name, flags, mode)
    except UnsafePath as exc:
        raise UnsafePath(f"{rel!r}: {exc}") from None
    if not stat.S_ISREG(os.fstat(opened).st_mode):
        os.close(opened)
        raise UnsafePath(f"{rel!r}: not a regular file in the workspace: refused")
    return opened


def _open_in(root: Path, parent: str, name: str, flags: int, mode: int) -> int:
    with directory(root, parent, create=bool(flags & os.O_CREAT)) as dir_fd:
        try:
            return os.open(name, flags, mode, dir_fd=dir_fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if _is_symlink(name, dir_fd):
                raise UnsafePath("the workspace holds a symlink there: refused, never followed") from None
            raise UnsafePath(f"cannot open it in the workspace ({exc.strerror})") from None


def write_file(root: Path, rel: str, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `rel` below `root` with permission bits `mode` (never through a symlink)."""
    with os.fdopen(open_file(root, rel, WRITE, mode), "wb") as out:
        out.write(data)
        os.fchmod(out.fileno(), mode & 0o777)


def read_file(root: Path, rel: str, limit: int = MAX_READ_BYTES) -> bytes | None:
    """At most `limit` bytes of `rel` below `root`; None when there is no such file."""
    try:
        fd = open_file(root, rel, READ)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as src:
        return src.read(limit)


def remove_file(root: Path, rel: str) -> None:
    """Remove `rel` below `root` if it is there (a symlink itself, never what it points at)."""
    parent, _, name = rel.rpartition("/")
    try:
        with directory(root, parent, create=True) as dir_fd, contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
    except UnsafePath as exc:
        raise UnsafePath(f"{rel!r}: {exc}") from None
