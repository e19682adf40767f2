"""What `trellis run` and `trellis template` read from their PATHs, walked by
`trellis_templates.walk`: the template texts, and the files beside them within the size limits."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from trellis_core.errors import ConfigError
from trellis_core.events import BundleFile, SourceFile
from trellis_core.settings import Settings
from trellis_templates.walk import TEMPLATE_SUFFIXES, walk

__all__ = ["check_limits", "human", "read_files", "read_sources", "template_files", "walk"]

SHOWN_BIGGEST = 5


def template_files(paths: Sequence[str]) -> list[str]:
    """The template files for `trellis template`; a missing PATH stays in, for the loader to report."""
    found = walk(paths)
    return [*(str(p) for p in found.templates), *found.missing]


def read_sources(paths: Sequence[str]) -> list[SourceFile]:
    """Every template file named or found (recursively, *.yaml/*.yml) under the paths, as text."""
    found = walk(paths)
    if found.missing:
        raise ConfigError(f"{found.missing[0]}: no such file or directory")
    if not found.templates:
        raise ConfigError(f"no template files (*.yaml, *.yml) in {', '.join(paths)}")
    return [SourceFile(path=str(f), text=_read(f).decode()) for f in found.templates]


def read_files(paths: Sequence[str], settings: Settings) -> tuple[BundleFile, ...]:
    """The files beside the templates, byte-exact with their permission bits, within the limits of
    `settings` (TRELLIS_BUNDLE_MAX_BYTES, TRELLIS_BUNDLE_FILE_MAX_BYTES); ConfigError says what is wrong."""
    found = walk(paths, exclude=(settings.data_dir,))
    if found.problems:
        raise ConfigError("files beside the templates: " + "; ".join(found.problems))
    by_rel: dict[str, Path] = {}
    for beside in found.files:
        if (first := by_rel.setdefault(beside.rel, beside.path)) != beside.path:
            raise ConfigError(f"{first} and {beside.path} would both be {beside.rel!r} in the workspace")
    stats = [(beside, _stat(beside.path)) for beside in found.files]
    check_limits([(str(b.path), st.st_size) for b, st in stats], settings)
    out = tuple(
        BundleFile(path=b.rel, mode=stat.S_IFREG | (st.st_mode & 0o777), data=_read(b.path))
        for b, st in stats
    )
    check_limits([(str(b.path), len(f.data)) for (b, _), f in zip(stats, out, strict=True)], settings)  # grown since?
    return out


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None


def _read(path: Path) -> bytes:
    """The bytes of `path`; a template must also be UTF-8. ConfigError says why not."""
    try:
        data = path.read_bytes()
        if path.suffix in TEMPLATE_SUFFIXES:
            data.decode()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return data


def check_limits(sizes: Sequence[tuple[str, int]], settings: Settings) -> None:
    """Raise ConfigError naming the biggest files when one file or all of them exceed a limit."""
    biggest = sorted(sizes, key=lambda s: -s[1])
    each = settings.bundle_file_max_bytes
    over = [(name, size) for name, size in biggest if size > each]
    hint = "keep big files out of the template directories (a task can download them) or raise the limit"
    if over:
        raise ConfigError(
            f"files beside the templates: {len(over)} over the {human(each)} a file may have "
            f"(TRELLIS_BUNDLE_FILE_MAX_BYTES): {_listing(over)}; {hint}"
        )
    total = sum(size for _, size in sizes)
    if total > settings.bundle_max_bytes:
        raise ConfigError(
            f"files beside the templates: {len(sizes)} files, {human(total)} in all, over the "
            f"{human(settings.bundle_max_bytes)} limit (TRELLIS_BUNDLE_MAX_BYTES); biggest: {_listing(biggest)}; {hint}"
        )


def _listing(sizes: Sequence[tuple[str, int]]) -> str:
    shown = ", ".join(f"{name} ({human(size)})" for name, size in sizes[:SHOWN_BIGGEST])
    return shown + (f" and {len(sizes) - SHOWN_BIGGEST} more" if len(sizes) > SHOWN_BIGGEST else "")


def human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB".replace(".0 ", " ")
    return f"{size / 1024**2:.1f} MiB".replace(".0 ", " ")
