"""Scalars as PyYAML's safe loader reads them, for `fastyaml`: plain ones resolved by PyYAML's
own resolver and constructor, quoted ones on one line with YAML's escapes."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import yaml


class Unsupported(Exception):
    """The text uses YAML beyond this reader's subset (or is not valid YAML): use PyYAML."""


_DOUBLE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
    "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0",
    "L": "\u2028", "P": "\u2029",
}  # fmt: skip
RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
RESOLVED_FIRST = frozenset(k for k in RESOLVERS if k)
_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float"))
_UNRESOLVED = object()


@lru_cache(maxsize=4096)
def resolved(value: str) -> Any:
    """A plain scalar as PyYAML's safe loader reads it (null, bool, int, float or the string)."""
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    if tag == _STR:
        return value
    if tag not in _SCALAR_TAGS:
        return _UNRESOLVED  # timestamps, merge keys, `=`: left to PyYAML
    return yaml.constructor.SafeConstructor().construct_object(yaml.ScalarNode(tag, value), deep=True)


def plain(value: str) -> Any:
    if value[:1] in RESOLVED_FIRST or not value:
        out = resolved(value)
        if out is _UNRESOLVED:
            raise Unsupported(value)
        return out
    return value


def _unescape(match: re.Match[str]) -> str:
    code = match[1]
    if len(code) > 1:
        point = int(code[1:], 16)
        if 0xD800 <= point <= 0xDFFF:
            raise Unsupported("surrogate escape")
        return chr(point)
    if code not in _ESCAPES:
        raise Unsupported("escape")
    return _ESCAPES[code]


def quoted(line: str, q: int) -> tuple[str, int]:
    """A one-line quoted scalar at `q`: its value and the index after its closing quote."""
    if line[q] == '"':
        m = _DOUBLE.match(line, q)
        if m is None:
            raise Unsupported("multi-line double-quoted scalar")
        body = m[1]
        return (_ESCAPE.sub(_unescape, body) if "\\" in body else body), m.end()
    parts = []
    start = q + 1
    while True:
        k = line.find("'", start)
        if k < 0:
            raise Unsupported("multi-line single-quoted scalar")
        parts.append(line[start:k])
        if line.startswith("'", k + 1):
            parts.append("'")
            start = k + 2
            continue
        return "".join(parts), k + 1


def tail_is_blank(line: str, p: int) -> bool:
    """Nothing but spaces and perhaps a comment (after at least one space) from `p` on."""
    rest = line[p:]
    stripped = rest.lstrip(" ")
    return not stripped or (stripped[0] == "#" and len(stripped) < len(rest))
