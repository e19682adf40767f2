"""An index of a bundle's documents: lookups by kind, name and version that report what is missing;
and what a file shipped beside the templates may be (`file_problems`)."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trellis_core.events import BundleFile
from trellis_templates.documents import (
    ConfigContext,
    Document,
    Driver,
    Environment,
    EnvironmentTemplate,
    Repository,
    ResourceTemplate,
)
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.validate import SourceDocument, Unreadable

D = TypeVar("D", bound=Document)
_VERSIONED = (ResourceTemplate, EnvironmentTemplate, Driver)
_NUMBER = re.compile(r"(\d+)")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of free-form versions: v2 < v10, 0.3 < 0.10."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _NUMBER.split(version) if p)


def doc_version(doc: Document) -> str:
    return str(getattr(doc.spec, "version", "")) if isinstance(doc, _VERSIONED) else ""


@dataclass(slots=True)
class Bundle:
    """Every document of a bundle by (kind, name) -> {version: document}."""

    documents: list[SourceDocument]
    by_kind: dict[str, dict[str, dict[str, SourceDocument]]] = field(default_factory=dict)
    # (kind, name) of documents too broken to read: their errors are reported, a reference to
    # one is not reported again as "not found".
    unreadable: Unreadable = frozenset()

    @classmethod
    def index(
        cls, documents: Sequence[SourceDocument | Document], problems: Problems, unreadable: Unreadable = frozenset()
    ) -> Bundle:
        docs = [d if isinstance(d, SourceDocument) else SourceDocument(d, Source()) for d in documents]
        bundle = cls(docs, unreadable=unreadable)
        for sd in docs:
            kind, name, version = sd.kind, sd.document.metadata.name, doc_version(sd.document)
            versions = bundle.by_kind.setdefault(kind, {}).setdefault(name, {})
            if version in versions:
                first = versions[version].source
                where = f" (first at {first.file}:{first.at(('metadata', 'name'))[0]})" if first.file else ""
                label = f"{kind} {name!r}" + (f" version {version!r}" if version else "")
                problems.error(sd.source, ("metadata", "name"), f"duplicate {label}{where}")
                continue
            versions[version] = sd
        return bundle

    def names(self, kind: type[Any]) -> list[str]:
        return sorted(self.by_kind.get(kind.__name__, {}))

    def all(self, kind: type[D]) -> list[tuple[D, Source]]:
        out: list[tuple[D, Source]] = []
        for versions in self.by_kind.get(kind.__name__, {}).values():
            for sd in versions.values():
                out.append((sd.document, sd.source))  # type: ignore[arg-type]
        return out

    def find(
        self,
        kind: type[D],
        name: str,
        version: str,
        *,
        problems: Problems,
        where: tuple[Source | None, Path] | None,
    ) -> tuple[D, Source] | None:
        """The document `kind/name` at `version` (or the highest one), else a problem at `where`."""
        versions = self.by_kind.get(kind.__name__, {}).get(name)
        source, path = where if where else (None, ())
        if not versions and (kind.__name__, name) in self.unreadable:
            return None
        if not versions:
            problems.error(
                source,
                path,
                f"{kind.__name__} {name!r} not found in the bundle",
                closest(name, self.names(kind)),
            )
            return None
        if version:
            sd = versions.get(version)
            if sd is None:
                known = ", ".join(sorted(versions, key=version_key))
                problems.error(
                    source,
                    path,
                    f"{kind.__name__} {name!r} has no version {version!r}",
                    f"versions in the bundle: {known}",
                )
                return None
        else:
            sd = versions[max(versions, key=version_key)]
        return sd.document, sd.source  # type: ignore[return-value]

    def environment(self, name: str, problems: Problems) -> tuple[Environment, Source] | None:
        found = self.by_kind.get("Environment", {}).get(name)
        if not found and ("Environment", name) in self.unreadable:
            return None
        if not found:
            names = self.names(Environment)
            if not names:
                problems.error(
                    None,
                    (),
                    f"Environment {name!r} not found: the bundle has no Environment",
                    "add a document with `kind: Environment` whose spec.template names an EnvironmentTemplate"
                    + _listing(self.names(EnvironmentTemplate), " (templates in the bundle: "),
                )
                return None
            hint = closest(name, names)
            problems.error(
                None,
                (),
                f"Environment {name!r} not found in the bundle",
                (hint + " " if hint else "") + "environments in the bundle: " + ", ".join(names),
            )
            return None
        sd = next(iter(found.values()))
        return sd.document, sd.source  # type: ignore[return-value]


def _listing(names: list[str], prefix: str) -> str:
    return prefix + ", ".join(names) + ")" if names else ""


def file_problem(file: BundleFile) -> str:
    """Why `file` may not be written into a workspace ("" if it may): a relative POSIX path with
    no `..`, `.` or hidden part (`.trellis` is the agent's), and a regular file's mode."""
    path = file.path
    kind = stat.S_IFMT(file.mode)
    if kind == stat.S_IFLNK:
        return f"{path!r} is a symlink: only regular files travel with a run"
    if kind != stat.S_IFREG:
        return f"{path!r} is not a regular file (mode {file.mode:#o})"
    if file.mode & ~(stat.S_IFMT(file.mode) | 0o777):
        return f"{path!r} has setuid, setgid or sticky bits (mode {file.mode:#o})"
    if not path or "\x00" in path or "\\" in path or path.startswith("/"):
        return f"{path!r} is not a relative POSIX path"
    parts = path.split("/")
    if ".." in parts:
        return f"{path!r} climbs out of the workspace"
    if any(not p or p == "." for p in parts):
        return f"{path!r} has an empty or '.' part"
    if any(p.startswith(".") for p in parts):
        return f"{path!r} has a hidden part: hidden files stay behind (.trellis is the agent's)"
    return ""


def file_problems(files: Iterable[BundleFile]) -> list[str]:
    """Every reason the files of a run may not be written into a workspace, one per file."""
    problems: list[str] = []
    seen: set[str] = set()
    dirs: set[str] = set()
    for file in files:
        if why := file_problem(file):
            problems.append(why)
            continue
        if file.path in seen:
            problems.append(f"{file.path!r} appears twice")
        parents = file.path.split("/")[:-1]
        dirs.update("/".join(parents[: depth + 1]) for depth in range(len(parents)))
        seen.add(file.path)
    problems.extend(f"{path!r} is both a file and a directory" for path in sorted(seen & dirs))
    return problems


__all__ = [
    "Bundle",
    "ConfigContext",
    "Driver",
    "Repository",
    "doc_version",
    "file_problem",
    "file_problems",
    "version_key",
]
