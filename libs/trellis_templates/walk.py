"""The one walk over template PATHs: the template files, and the files beside them that travel with a
run (docs/templates.md, "Files beside templates"); the loader and the CLI both take it.

Under a directory every file is taken except hidden ones (a name starting with '.', and all
below a hidden directory: .git, .trellis, .terraform), `__pycache__` directories, `*.pyc` and
editor backups (`*~`). `*.yaml`/`*.yml` files are templates; every other file is a file beside
the templates, at its path relative to that directory. A file named as a PATH is a template.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE_SUFFIXES = (".yaml", ".yml")
JUNK_DIRS = frozenset({"__pycache__"})
JUNK_SUFFIXES = (".pyc", "~")


@dataclass(frozen=True)
class Beside:
    """A file beside the templates: where it is, and its path in the workspace."""

    path: Path
    rel: str


@dataclass
class Walk:
    templates: list[Path] = field(default_factory=list)
    files: list[Beside] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def walk(paths: Iterable[str], *, exclude: Sequence[Path] = ()) -> Walk:
    """Templates and files beside them under `paths`, in order (each directory sorted)."""
    found = Walk()
    skip = [p.resolve() for p in exclude]
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            _walk_directory(path, found, skip)
        elif path.is_file():
            found.templates.append(path)
        else:
            found.missing.append(raw)
    return found


def _walk_directory(root: Path, found: Walk, skip: Sequence[Path]) -> None:
    templates: list[Path] = []
    files: list[Beside] = []
    for top, dirs, names in os.walk(root):
        here = Path(top)
        kept = []
        for name in sorted(dirs):
            sub = here / name
            if _ignored(name) or name in JUNK_DIRS or sub.resolve() in skip:
                continue
            if sub.is_symlink():
                found.problems.append(f"{sub} is a symlink to a directory: Trellis does not follow those (copy it)")
                continue
            kept.append(name)
        dirs[:] = kept
        for name in names:
            file = here / name
            if _ignored(name) or name.endswith(JUNK_SUFFIXES):
                continue
            if not file.is_file():  # a dangling symlink, a socket, a fifo
                found.problems.append(f"{file} is not a regular file (a dangling symlink?)")
            elif file.suffix in TEMPLATE_SUFFIXES:
                templates.append(file)
            else:
                files.append(Beside(file, file.relative_to(root).as_posix()))
    found.templates.extend(sorted(templates))
    found.files.extend(sorted(files, key=lambda b: b.rel))


def _ignored(name: str) -> bool:
    return name.startswith(".")
