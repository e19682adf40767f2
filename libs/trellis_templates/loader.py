"""YAML files to plain values, keeping the file, line and column of every node."""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import yaml

from trellis_templates import fastyaml
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.walk import walk

Reader = Literal["auto", "fast", "libyaml", "pyyaml"]
LIBYAML = yaml.__with_libyaml__


@lru_cache(maxsize=4096)
def _scalar_tag(value: str) -> str:
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return str(tag)


class _ResolveOnce:
    """A plain scalar's tag depends only on its text: resolve each distinct text once."""

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> Any:
        if kind is yaml.ScalarNode and implicit[0] and not getattr(self, "yaml_path_resolvers", None):
            return _scalar_tag(value)
        return super().resolve(kind, value, implicit)  # type: ignore[misc]


class _PyLoader(_ResolveOnce, yaml.SafeLoader):
    pass


if LIBYAML:

    class _CLoader(_ResolveOnce, yaml.CSafeLoader):
        pass

    _Loader: Any = _CLoader
else:  # pragma: no cover - libyaml missing
    _Loader = _PyLoader

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class RawDocument:
    """One YAML document as builtins, with where each of its nodes is."""

    data: Any
    source: Source
    index: int = 0  # position of the document in its file


# Caps on what one request may make the loader build, checked before any composer runs: the
# compiler service loads what any bus client sends. Aliases let a few lines expand into billions
# of nodes ("billion laughs"), so every file and document of a request shares one node budget;
# composers recurse once per nesting level (PyYAML's to a RecursionError, libyaml's on the C
# stack), so a document is refused past MAX_DEPTH levels, counted by the parser's events first.
MAX_NODES = 1_000_000
MAX_DEPTH = fastyaml.MAX_DEPTH
MAX_CHARS = 32_000_000


class _TooLarge(Exception):
    pass


class _TooDeep(Exception):
    pass


class Budget:
    """What one request (every file and document of a bundle) may still build: nodes and text."""

    def __init__(self, nodes: int = MAX_NODES, chars: int = MAX_CHARS) -> None:
        self.nodes, self.chars = nodes, chars

    def take_text(self, text: str) -> bool:
        """Count a file's text against the request's size cap; False once it is exceeded."""
        self.chars -= len(text)
        return self.chars >= 0


class _Builder:
    """Turns a composed node tree into builtins, recording 1-based positions by path."""

    def __init__(self, file: str, problems: Problems, budget: Budget) -> None:
        self.budget = budget
        self.file = file
        self.problems = problems
        self.positions: dict[Path, tuple[int, int]] = {}
        self.keys: dict[Path, tuple[int, int]] = {}
        self.constructor = yaml.constructor.SafeConstructor()

    def source(self) -> Source:
        return Source(self.file, self.positions, self.keys)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.budget.nodes -= 1
        if self.budget.nodes < 0:
            raise _TooLarge
        if len(path) >= MAX_DEPTH and isinstance(node, yaml.CollectionNode):
            raise _TooDeep  # aliases nest deeper than the parser saw
        mark = node.start_mark
        self.positions[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            explicit = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
            self.constructor.flatten_mapping(node)  # `<<: *anchor` entries first, then the node's own
            out: dict[Any, Any] = {}
            written: set[Any] = set()  # keys written in this mapping itself (not merged in)
            for key_node, value_node in node.value:
                key = key_node.value if key_node.tag == _STR_TAG else self.constructor.construct_object(key_node)
                if not isinstance(key, str | int) or isinstance(key, bool):
                    key = str(key)
                child = (*path, key)
                own = id(key_node) in explicit
                self.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if own and key in written:
                    self.problems.error(self.source(), child, f"duplicate key {key!r}", key=True)
                    continue
                if own:
                    written.add(key)
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if node.tag == _STR_TAG:
            return node.value
        return self.constructor.construct_object(node, deep=True)


def load_text(
    text: str, file: str, problems: Problems, *, reader: Reader = "auto", budget: Budget | None = None
) -> list[RawDocument]:
    """Every document of one YAML text; a syntax error becomes a problem at its position.

    `auto` reads the text with `fastyaml` and, for anything beyond its subset, with PyYAML
    (over libyaml when installed); `fast`, `libyaml` and `pyyaml` force one reader (for tests:
    `fast` raises `fastyaml.Unsupported` instead of falling back). `budget` is shared by every
    file of one request (a fresh one per call without it); over any cap the text is refused
    with a problem naming the cap, before or instead of composing it.
    """
    budget = budget or Budget()
    if not budget.take_text(text):
        message = f"the request's YAML text is larger than {MAX_CHARS:,} characters (at this file): refused"
        problems.error(Source(file, {(): (1, 1)}), (), message)
        return []
    with gc_paused():
        if reader in ("auto", "fast"):
            try:
                documents = fastyaml.read(text)
                return [RawDocument(d.data, Source(file, d.positions, d.keys), d.index) for d in documents]
            except Exception:  # Unsupported, deep nesting, or a bug: PyYAML is the reference
                if reader == "fast":
                    raise
        loader = _PyLoader if reader == "pyyaml" else _Loader
        return _compose(text, file, problems, loader, budget)


def _too_deep(text: str, loader: Any) -> tuple[int, int] | None:
    """Line and column where the text first nests deeper than MAX_DEPTH, read from the parser's events.

    Both parsers keep their state on explicit stacks: only the composers recurse, so this walk
    is safe at any depth. A syntax error is left to the composer to report.
    """
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    return (mark.line + 1, mark.column + 1) if mark else (1, 1)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:  # libyaml's scanner stops at 1,000 levels before it says so
        mark = exc.problem_mark
        return (mark.line + 1, mark.column + 1) if mark and "maximum nesting depth" in str(exc.problem) else None
    except yaml.YAMLError:
        return None
    return None


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while building a large acyclic tree of dicts and lists.

    Each collection would walk every container built so far, over and over as the tree grows
    (a fifth of the load time of a 1,000-resource bundle); what is built here holds no cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _compose(
    text: str, file: str, problems: Problems, loader: Any, budget: Budget, first: int = 0, *, split: bool = True
) -> list[RawDocument]:
    documents: list[RawDocument] = []
    if (deep := _too_deep(text, loader)) is not None:
        where = Source(file, {(): deep})
        problems.error(where, (), f"YAML nested deeper than {MAX_DEPTH} levels: refused", _DEEP_HINT)
        return documents
    try:
        nodes = list(yaml.compose_all(text, Loader=loader))
    except yaml.MarkedYAMLError as exc:
        chunks = _chunks(text) if split else []
        if len(chunks) > 1:  # read each document alone: only the broken one is lost
            return [
                doc
                for i, (lines, chunk) in enumerate(chunks)
                for doc in _compose(lines + chunk, file, problems, loader, budget, i, split=False)
            ]
        (line, col), message, hint = syntax_error(text, exc)
        problems.error(Source(file, {(): (line, col)}), (), message, hint)
        return documents
    except yaml.YAMLError as exc:
        problems.error(Source(file), (), f"YAML error: {exc}")
        return documents
    for index, node in enumerate(nodes):
        if node is None:
            continue
        builder = _Builder(file, problems, budget)
        mark = node.start_mark
        at = Source(file, {(): (mark.line + 1, mark.column + 1)})
        try:
            data = builder.build(node, ())
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            problems.error(Source(file, {(): (line, col)}), (), f"YAML error: {exc.problem}")
            continue
        except _TooLarge:
            message = f"the request expands to more than {MAX_NODES:,} YAML nodes (nested aliases?): refused"
            problems.error(at, (), message, "every file and document of a request share this budget")
            continue
        except (_TooDeep, RecursionError):
            message = f"document nested deeper than {MAX_DEPTH} levels once its aliases are expanded: refused"
            problems.error(at, (), message, _DEEP_HINT)
            continue
        if data is None:
            continue
        documents.append(RawDocument(data, builder.source(), first + index))
    return documents


_DEEP_HINT = "flatten the structure: templates need a few levels, not hundreds"


_SEPARATOR = re.compile(r"^---(?=[ \t]|$)", re.MULTILINE)


def _chunks(text: str) -> list[tuple[str, str]]:
    """The text cut before each `---` line: (newlines standing for the lines before, the chunk)."""
    starts = [0, *(m.start() for m in _SEPARATOR.finditer(text) if m.start() > 0)]
    ends = [*starts[1:], len(text)]
    return [("\n" * text.count("\n", 0, a), text[a:b]) for a, b in zip(starts, ends, strict=True)]


# Constructs the parser reads on past their mistake: an unclosed one is where its context starts.
_UNCLOSED = {
    "quoted scalar": "is a quote left open here?",
    "flow mapping": "is a '}' missing after this '{'?",
    "flow sequence": "is a ']' missing after this '['?",
}


def syntax_error(text: str, exc: yaml.MarkedYAMLError) -> tuple[tuple[int, int], str, str]:
    """Position, message and hint of a YAML syntax error, at the line of the mistake.

    The parser notices an unclosed quote or bracket only where the text ends or the next token
    cannot follow: its context mark ("while scanning a quoted scalar", line 9) is where the
    mistake is, its problem mark (line 40) where it was noticed. Both are named; a tab in the
    indentation, which the parser reports as a character that cannot start a token, is named so.
    """
    problem, context = exc.problem_mark, exc.context_mark
    if problem is not None:
        lines = text.splitlines()
        row = lines[problem.line] if problem.line < len(lines) else ""
        indent = row[: len(row) - len(row.lstrip(" \t"))]
        if "\t" in indent:
            where = (problem.line + 1, indent.index("\t") + 1)
            return where, "tabs are not allowed in YAML indentation", "indent with spaces"
    found = f"{exc.problem}" + (f" (line {problem.line + 1}, column {problem.column + 1})" if problem else "")
    unclosed = next((h for k, h in _UNCLOSED.items() if (exc.context or "").endswith(k)), None)
    if context is not None and unclosed is not None and (problem is None or context.line < problem.line):
        message = f"YAML syntax error {exc.context} that starts here: {found}"
        return (context.line + 1, context.column + 1), message, unclosed
    mark = problem or context
    at = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    during = f" ({exc.context} at line {context.line + 1})" if context is not None and exc.context else ""
    return at, f"YAML syntax error: {exc.problem or exc}{during}", ""


def load_paths(paths: Sequence[str], problems: Problems) -> list[RawDocument]:
    """Every document of the given files and of the template files `walk` finds under the given directories."""
    found = walk(paths)
    for missing in found.missing:
        problems.error(Source(missing), (), f"no such file or directory: {missing}")
    documents: list[RawDocument] = []
    budget = Budget()  # one for the whole bundle
    for path in found.templates:
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.error(Source(file), (), f"cannot read file: {exc}")
            continue
        documents.extend(load_text(text, os.path.normpath(file), problems, budget=budget))
    return documents
