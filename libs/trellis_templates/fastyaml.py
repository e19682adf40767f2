"""A fast reader for the plain YAML templates are written in, with the position of every node.

PyYAML's composer (even over libyaml) builds a Python node, two marks and a resolver call for
every scalar; on a large bundle that is seconds. This reader walks the lines itself and covers
the common subset: block mappings and sequences, one-line flow collections, plain and one-line
quoted scalars, literal block scalars (`|`, `|-`) and comments. Anything else — anchors, tags,
merge keys, folded or multi-line scalars, duplicate keys, tabs, syntax errors — raises
`Unsupported`, and the loader hands the whole text to PyYAML, which stays the reference: for
what this reader accepts it gives the same values, lines and columns (tests/templates compare
the two on every example and on generated documents). A document's positions are recorded as
it is read except those of `key: scalar` lines, the bulk of a bundle: the document is read
again, recording all, when its positions are first asked for (that is, when it has a problem).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trellis_templates.errors import Path
from trellis_templates.yamlscalars import RESOLVED_FIRST, RESOLVERS, Unsupported, plain, quoted, tail_is_blank

__all__ = ["FastDocument", "Positions", "Unsupported", "read"]

Position = tuple[int, int]
MAX_DEPTH = 200  # collections inside each other; past it the loader refuses the text (it reports where)


@dataclass(frozen=True, slots=True)
class FastDocument:
    data: Any
    positions: Mapping[Path, Position]
    keys: Mapping[Path, Position]
    index: int


# Characters outside this set (tabs, CR, NEL, LS/PS, controls, BOM) send the text to PyYAML.
_UNSUPPORTED_CHAR = re.compile(r"[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$(./][A-Za-z0-9_$()./\-]*(?=:(?: |$))")
_FLOW_PLAIN = re.compile(r"[^\s,\[\]{}#'\"&*!|>%@`?:-][^,\[\]{}]*|-[^\s,\[\]{}][^,\[\]{}]*")
_FLOW_KEY = re.compile(r"[^\s,\[\]{}#'\"&*!|>%@`?:-][^,\[\]{}:]*")
_ENTRY = re.compile(r"([A-Za-z0-9_$(./][A-Za-z0-9_$()./\-]*):(?:$| +(.*))")
_EMPTIES = frozenset({"[]", "{}", "''", '""'})
_INDICATORS = "?:,[]{}#&*!|>'\"%@`"  # no plain scalar starts with one of these
_NOT_PLAIN = "-" + _INDICATORS  # nor, for the inline fast path, with `-`
_BLOCK_HEADER = re.compile(r"\|(-?)(?: +#.*| *)")


class _Reader:
    def __init__(self, lines: list[str], indents: list[int], ends_with_newline: bool, track: bool) -> None:
        self.lines = lines
        self.indents = indents  # -1 for blank and comment lines
        self.end = 0
        self.last_has_newline = ends_with_newline
        self.track = track  # record every position (else only those off the `key: scalar` path)
        self.positions: dict[Path, Position] = {}
        self.keys: dict[Path, Position] = {}

    def next(self, i: int) -> int:
        indents, end = self.indents, self.end
        while i < end and indents[i] < 0:
            i += 1
        return i

    def document(self, start: int, end: int) -> Any:
        self.end, self.positions, self.keys = end, {}, {}
        i = self.next(start)
        value, i = self.block(i, self.indents[i], ())
        if self.next(i) < end:
            raise Unsupported("content after the document's root node")
        return value

    def is_entry(self, line: str, col: int) -> bool:
        return line.startswith("-", col) and (len(line) == col + 1 or line[col + 1] == " ")

    def block(self, i: int, col: int, path: Path) -> tuple[Any, int]:
        if len(path) >= MAX_DEPTH:
            raise Unsupported("nested too deep")  # the loader's reference path reports where
        line = self.lines[i]
        if self.is_entry(line, col):
            return self.sequence(i, col, path)
        if self.key_at(line, col) is None:
            raise Unsupported("a scalar or flow node on its own line")
        return self.mapping(i, col, path)

    def key_at(self, line: str, q: int) -> tuple[Any, int] | None:
        """The key starting at `q` and the index of its `:`, if a mapping entry starts there."""
        ch = line[q]
        if ch in "'\"":
            value, p = quoted(line, q)
            if line.startswith(":", p) and (len(line) == p + 1 or line[p + 1] == " "):
                return value, p
            return None
        m = _PLAIN_KEY.match(line, q)
        if m is None:
            return None
        key = plain(m[0])
        if not isinstance(key, str):
            raise Unsupported("a key that is not a string")
        return key, m.end()

    def mapping(self, i: int, col: int, path: Path) -> tuple[dict[Any, Any], int]:
        self.positions[path] = (i + 1, col + 1)
        out: dict[Any, Any] = {}
        lines, indents, positions, keys, end = self.lines, self.indents, self.positions, self.keys, self.end
        match, key_column, track = _ENTRY.match, col + 1, self.track
        while True:
            m = match(lines[i], col)
            if m is not None:  # the common `key: plain scalar` is read here, inline
                key, colon, text = m[1], m.end(1), m[2] or ""
                if key[0] in RESOLVED_FIRST and not isinstance(key := plain(key), str):
                    raise Unsupported("a key that is not a string")
            elif (found := self.key_at(lines[i], col)) is not None:
                (key, colon), text = found, ""
            else:
                raise Unsupported("not a mapping entry")
            if key in out:
                raise Unsupported("duplicate key")  # PyYAML's path reports it
            line_number = i + 1
            simple = (
                text and text[0] not in _NOT_PLAIN and " #" not in text and ": " not in text and text[-1] not in ": "
            )
            if simple or text in _EMPTIES:  # `key: scalar`, or `[]`, `{}`, `''`, `""` as dumped YAML has them
                if simple:
                    out[key] = plain(text) if text[0] in RESOLVED_FIRST else text
                else:
                    out[key] = [] if text == "[]" else {} if text == "{}" else ""
                if track:  # else the positions are read again when first asked for
                    child = (*path, key)
                    keys[child] = (line_number, key_column)
                    positions[child] = (line_number, m.start(2) + 1)  # type: ignore[union-attr]
                i = line_number
            else:
                child = (*path, key)
                keys[child] = (line_number, key_column)
                out[key], i = self.value(i, colon + 1, col, child, indentless=True)
            while i < end and indents[i] < 0:
                i += 1
            if i >= end or indents[i] < col:
                return out, i
            if indents[i] > col:
                raise Unsupported("over-indented line")

    def sequence(self, i: int, col: int, path: Path) -> tuple[list[Any], int]:
        self.positions[path] = (i + 1, col + 1)
        out: list[Any] = []
        lines, indents = self.lines, self.indents
        while True:
            item, i = self.value(i, col + 1, col, (*path, len(out)), indentless=False)
            out.append(item)
            i = self.next(i)
            if i >= self.end or indents[i] < col:
                return out, i
            if indents[i] > col:
                raise Unsupported("over-indented line")
            if not self.is_entry(lines[i], col):
                return out, i  # the next key of the mapping holding this indentless sequence

    def value(self, i: int, p: int, col: int, path: Path, *, indentless: bool) -> tuple[Any, int]:
        """The value after a key's `:` or an entry's `-` at index `p`; `col` is its parent's column."""
        line = self.lines[i]
        if tail_is_blank(line, p):
            j = self.next(i + 1)
            if j < self.end:
                c = self.indents[j]
                if c > col:
                    return self.block(j, c, path)
                if indentless and c == col and self.is_entry(self.lines[j], c):
                    return self.sequence(j, c, path)
            self.positions[path] = (i + 1, p + 1)
            return None, i + 1
        q = len(line) - len(line[p:].lstrip(" "))
        if not indentless:  # a sequence entry: a compact mapping, or a nested entry
            if self.is_entry(line, q):
                raise Unsupported("compact nested sequence")
            if self.key_at(line, q) is not None:
                return self.mapping(i, q, path)
        ch = line[q]
        if ch == "|":
            return self.literal(i, q, col, path)
        self.positions[path] = (i + 1, q + 1)
        if ch in "{[":
            value, end = self.flow(line, q, i, path)
            if not tail_is_blank(line, end):
                raise Unsupported("text after a flow collection")
        elif ch in "'\"":
            value, end = quoted(line, q)
            if not tail_is_blank(line, end):
                raise Unsupported("text after a quoted scalar")
        else:
            value = self.plain(line, q)
        return value, i + 1  # a continuation line is over-indented: the caller gives up on it

    def plain(self, line: str, q: int) -> Any:
        text = line[q:]
        cut = text.find(" #")
        if cut >= 0:
            text = text[:cut]
        text = text.rstrip(" ")
        first = text[0]
        if first in _INDICATORS or (first == "-" and (len(text) == 1 or text[1] == " ")):
            raise Unsupported("an indicator starting a plain scalar")
        if ": " in text or text.endswith(":"):
            raise Unsupported("a mapping indicator inside a plain scalar")
        return plain(text)

    def literal(self, i: int, q: int, col: int, path: Path) -> tuple[str, int]:
        header = _BLOCK_HEADER.fullmatch(self.lines[i], q)
        if header is None:
            raise Unsupported("a block scalar other than | and |-")
        lines, end = self.lines, self.end
        j = i + 1
        if j >= end or not lines[j].strip(" "):
            raise Unsupported("a block scalar starting with an empty line")
        indent = len(lines[j]) - len(lines[j].lstrip(" "))
        if indent <= col:
            raise Unsupported("an empty block scalar")
        pieces: list[str] = []
        while j < end:
            text = lines[j]
            if text.strip(" "):
                if len(text) - len(text.lstrip(" ")) < indent:
                    break
            elif len(text) <= indent:
                text = ""
            pieces.append(text[indent:])
            j += 1
        while pieces and not pieces[-1]:
            pieces.pop()
        if j >= len(lines) and not self.last_has_newline:
            raise Unsupported("a block scalar ending the text without a newline")
        self.positions[path] = (i + 1, q + 1)
        body = "\n".join(pieces)
        return (body if header[1] == "-" else body + "\n"), j

    def flow(self, line: str, q: int, i: int, path: Path) -> tuple[Any, int]:
        """A one-line flow node at `q`: its value and the index after it."""
        if q >= len(line):
            raise Unsupported("a flow collection continued on the next line")
        self.positions[path] = (i + 1, q + 1)
        ch = line[q]
        if ch in "'\"":
            return quoted(line, q)
        if ch in "{[" and len(path) >= MAX_DEPTH:
            raise Unsupported("nested too deep")
        if ch == "{":
            return self.flow_mapping(line, q, i, path)
        if ch == "[":
            return self.flow_sequence(line, q, i, path)
        m = _FLOW_PLAIN.match(line, q)
        if m is None:
            raise Unsupported("flow scalar")
        text = m[0].rstrip(" ")
        if ": " in text or " #" in text or "?" in text or text.endswith(":"):
            raise Unsupported("flow scalar")
        return plain(text), q + len(text)

    def flow_mapping(self, line: str, q: int, i: int, path: Path) -> tuple[dict[Any, Any], int]:
        out: dict[Any, Any] = {}
        p = _skip(line, q + 1)
        if line.startswith("}", p):
            return out, p + 1
        while True:
            if p >= len(line):
                raise Unsupported("multi-line flow mapping")
            if line[p] in "'\"":
                key, k = quoted(line, p)
            else:
                m = _FLOW_KEY.match(line, p)
                if m is None or m[0].endswith(" ") or " #" in m[0] or "?" in m[0]:
                    raise Unsupported("flow key")
                key, k = plain(m[0]), m.end()
                if not isinstance(key, str):
                    raise Unsupported("a key that is not a string")
            if not line.startswith(": ", k) or key in out:
                raise Unsupported("flow mapping entry")
            child = (*path, key)
            self.keys[child] = (i + 1, p + 1)
            out[key], p = self.flow(line, _skip(line, k + 2), i, child)
            p = _skip(line, p)
            if line.startswith("}", p):
                return out, p + 1
            if not line.startswith(",", p):
                raise Unsupported("flow mapping")
            p = _skip(line, p + 1)
            if line.startswith("}", p):
                raise Unsupported("trailing comma")

    def flow_sequence(self, line: str, q: int, i: int, path: Path) -> tuple[list[Any], int]:
        out: list[Any] = []
        p = _skip(line, q + 1)
        if line.startswith("]", p):
            return out, p + 1
        while True:
            if p >= len(line):
                raise Unsupported("multi-line flow sequence")
            item, p = self.flow(line, p, i, (*path, len(out)))
            out.append(item)
            p = _skip(line, p)
            if line.startswith("]", p):
                return out, p + 1
            if not line.startswith(",", p):
                raise Unsupported("flow sequence")
            p = _skip(line, p + 1)
            if line.startswith("]", p):
                raise Unsupported("trailing comma")


def _skip(line: str, p: int) -> int:
    while line.startswith(" ", p):
        p += 1
    return p


class _Where:
    """The positions of one document's nodes, read again from its lines when first asked for."""

    def __init__(self, reader: _Reader, start: int, end: int) -> None:
        self.reader, self.start, self.end = reader, start, end
        self.tables: tuple[dict[Path, Position], dict[Path, Position]] | None = None

    def table(self, which: int) -> dict[Path, Position]:
        if self.tables is None:
            r = self.reader
            again = _Reader(r.lines, r.indents, r.last_has_newline, track=True)
            again.end = self.end
            again.document(self.start, self.end)
            self.tables = (again.positions, again.keys)
        return self.tables[which]


class Positions(Mapping[Path, Position]):
    """Path -> (line, column) of a document's nodes (`which` 0) or keys (1), built on first use."""

    def __init__(self, where: _Where, which: int) -> None:
        self.where, self.which = where, which

    def __getitem__(self, path: Path) -> Position:
        return self.where.table(self.which)[path]

    def __contains__(self, path: object) -> bool:
        return path in self.where.table(self.which)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.where.table(self.which))

    def __len__(self) -> int:
        return len(self.where.table(self.which))


def read(text: str) -> list[FastDocument]:
    """Every non-empty document of `text`; raises `Unsupported` for anything beyond the subset."""
    if _UNSUPPORTED_CHAR.search(text) or None in RESOLVERS:  # or a resolver for any first character
        raise Unsupported("a character or a resolver this reader leaves to PyYAML")
    lines = text.split("\n")
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    indents = [len(line) - len(s) if (s := line.lstrip(" ")) and s[0] != "#" else -1 for line in lines]
    markers: list[int] = []  # the `---` lines, each starting a document
    for n, line in enumerate(lines):
        if line.startswith(("---", "...", "%")):
            if line.rstrip(" ") != "---":
                raise Unsupported("a directive, document end or marker with content")
            markers.append(n)
            indents[n] = -1
    implicit = any(x >= 0 for x in indents[: markers[0] if markers else len(lines)])
    starts = [0, *markers] if implicit else markers
    reader = _Reader(lines, indents, ends_with_newline, track=False)
    documents: list[FastDocument] = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(lines)
        reader.end = end
        if reader.next(start) >= end:
            continue  # an empty document: PyYAML gives null, which the loader skips
        data = reader.document(start, end)
        where = _Where(reader, start, end)
        documents.append(FastDocument(data, Positions(where, 0), Positions(where, 1), index))
    return documents
