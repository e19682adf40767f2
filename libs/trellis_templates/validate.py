"""Raw YAML values to document Structs, collecting every problem with its position and a hint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec
from msgspec import inspect as mi

from trellis_templates.documents import API_VERSIONS, KINDS, RAFAY_API_VERSION, RAFAY_UNIMPLEMENTED, Document
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.loader import RawDocument

_BAD = object()  # a value that failed validation
# Unknown fields that are a known misunderstanding: (the struct, the key) -> (message, hint).
_MISPLACED: dict[tuple[str, str], tuple[str, str]] = {
    ("ProviderHooks", "custom"): (
        "hooks.provider.custom: custom resources have no provider stages",
        "run hooks of a custom resource from spec.hooks.onInit, onSuccess, onFailure, onCompletion, "
        "or as tasks in spec.providerOptions.custom.tasks",
    ),
    **{
        ("StaticResourceSpec", key): (
            f"a StaticResource runs nothing, so {key!r} cannot apply: its variables are its outputs",
            "to run something, write a ResourceTemplate and list it with kind: resourcetemplate",
        )
        for key in ("provider", "providerOptions", "repositoryOptions", "hooks", "agents", "contexts")
    },
}
# Read leniently, a bad hook or task `type` is kept as written rather than dropping the task
# (and with it every `dependsOn` that names it): the compiler leaves out a hook it cannot run.
_KEPT_AS_WRITTEN = frozenset({("Hook", "type"), ("Task", "type")})
_TYPE_NOUNS = {
    "Hook": "hook type",
    "Task": "task type",
    "DriverConfig": "driver type",
    "Override": "override type",
    "NotificationOptions": "notification type",
    "ApprovalOptions": "approval type",
}


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """A validated document and where it came from."""

    document: Document
    source: Source

    @property
    def kind(self) -> str:
        return type(self.document).__name__


@cache
def _info(cls: type[msgspec.Struct]) -> mi.Type:
    return mi.type_info(cls)


def _type_name(t: mi.Type) -> str:
    if isinstance(t, mi.Metadata):
        return _type_name(t.type)
    names = {
        mi.StrType: "a string",
        mi.IntType: "an integer",
        mi.BoolType: "true or false",
        mi.FloatType: "a number",
        mi.ListType: "a list",
        mi.DictType: "a mapping",
        mi.StructType: "a mapping",
        mi.NoneType: "null",
        mi.AnyType: "any value",
    }
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in t.values)
    if isinstance(t, mi.UnionType):
        return " or ".join(_type_name(m) for m in t.types if not isinstance(m, mi.NoneType))
    return names.get(type(t), str(type(t).__name__))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


class _Walker:
    """Checks raw values against a document type; `lenient` builds what it can of a bad document.

    Strict, it returns builtins for msgspec to convert, or `_BAD`. Lenient (a second pass over a
    document that has errors, already reported), it returns the Struct itself: a bad optional
    field or list item is dropped, a name that breaks its pattern is kept as written, and only a
    bad required field makes its struct bad. The later checks then still see the rest.
    """

    def __init__(self, source: Source, problems: Problems, rafay: bool, lenient: bool = False) -> None:
        self.source = source
        self.problems = problems
        self.rafay = rafay
        self.lenient = lenient
        self.owner = ""

    def wrong(self, path: Path, t: mi.Type, value: Any) -> object:
        self.problems.error(self.source, path, f"expected {_type_name(t)}, got {_describe(value)}")
        return _BAD

    def walk(self, value: Any, t: mi.Type, path: Path, description: str = "") -> Any:
        if isinstance(t, mi.Metadata):
            desc = str((t.extra_json_schema or {}).get("description", ""))
            return self.walk(value, t.type, path, desc)
        if isinstance(t, mi.AnyType):
            return value
        if isinstance(t, mi.NoneType):
            return None if value is None else self.wrong(path, t, value)
        if isinstance(t, mi.UnionType):
            return self.union(value, t, path, description)
        if isinstance(t, mi.StrType):
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                return self.wrong(path, t, value)
            return self.string(value, t, path, description)
        if isinstance(t, mi.BoolType):
            return value if isinstance(value, bool) else self.wrong(path, t, value)
        if isinstance(t, mi.IntType):
            if not isinstance(value, int) or isinstance(value, bool):
                return self.wrong(path, t, value)
            return self.bounded(value, t, path)
        if isinstance(t, mi.FloatType):
            if not isinstance(value, int | float) or isinstance(value, bool):
                return self.wrong(path, t, value)
            return float(value)
        if isinstance(t, mi.LiteralType):
            return self.literal(value, t, path)
        if isinstance(t, mi.ListType):
            if not isinstance(value, list):
                return self.wrong(path, t, value)
            items = [self.walk(item, t.item_type, (*path, index)) for index, item in enumerate(value)]
            if self.lenient:
                return [item for item in items if item is not _BAD]
            return _BAD if any(item is _BAD for item in items) else items
        if isinstance(t, mi.DictType):
            if not isinstance(value, dict):
                return self.wrong(path, t, value)
            out = {str(k): self.walk(v, t.value_type, (*path, str(k))) for k, v in value.items()}
            if self.lenient:
                return {k: v for k, v in out.items() if v is not _BAD}
            return _BAD if any(v is _BAD for v in out.values()) else out
        if isinstance(t, mi.StructType):
            return self.struct(value, t, path)
        return value  # pragma: no cover - a type the documents do not use

    def string(self, value: str, t: mi.StrType, path: Path, description: str) -> object:
        too_long = t.max_length is not None and len(value) > t.max_length
        too_short = t.min_length is not None and len(value) < t.min_length
        if too_long or too_short or (t.pattern and not re.match(t.pattern, value)):
            what = description or f"a string matching {t.pattern}"
            self.problems.error(self.source, path, f"{value!r} is not valid here: expected {what}")
            return value if self.lenient else _BAD
        return value

    def bounded(self, value: int, t: mi.IntType, path: Path) -> object:
        if (t.ge is not None and value < t.ge) or (t.le is not None and value > t.le):
            self.problems.error(self.source, path, f"{value} is out of range [{t.ge}, {t.le}]")
            return value if self.lenient else _BAD
        return value

    def literal(self, value: Any, t: mi.LiteralType, path: Path) -> object:
        if value in t.values:
            return value
        if isinstance(value, str):
            for v in t.values:
                if isinstance(v, str) and v.lower() == value.lower():
                    return v
        field = next((k for k in reversed(path) if isinstance(k, str)), "value")
        if field == "type" and self.owner in _TYPE_NOUNS:
            field = _TYPE_NOUNS[self.owner]
        options = ", ".join(str(v) for v in t.values)
        hint = closest(str(value), [str(v) for v in t.values]) if isinstance(value, str) else ""
        self.problems.error(self.source, path, f"unknown {field} {value!r}: expected one of {options}", hint)
        return _BAD

    def union(self, value: Any, t: mi.UnionType, path: Path, description: str) -> object:
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if value is None and len(members) < len(t.types):
            return None
        if len(members) == 1:
            return self.walk(value, members[0], path, description)
        for member in members:
            trial = _Walker(self.source, Problems(), self.rafay, self.lenient)
            result = trial.walk(value, member, path, description)
            if result is not _BAD and not trial.problems.errors:
                self.problems.warnings.extend(trial.problems.warnings)
                return result
        return self.wrong(path, t, value)

    def struct(self, value: Any, t: mi.StructType, path: Path) -> object:
        if not isinstance(value, dict):
            return self.wrong(path, t, value)
        fields = {f.encode_name: f for f in t.fields}
        tag_field = t.cls.__struct_config__.tag_field
        rafay_only = RAFAY_UNIMPLEMENTED.get(t.cls, frozenset())
        out: dict[str, Any] = {}
        bad = False
        for key, item in value.items():
            child = (*path, key)
            if key == tag_field:
                out[key] = item
                continue
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                if self.rafay and key in rafay_only:
                    self.problems.warn(
                        self.source,
                        child,
                        f"Rafay field {key!r} is not implemented by Trellis and is ignored",
                        key=True,
                    )
                    continue
                message, hint = _MISPLACED.get(
                    (t.cls.__name__, str(key)), (f"unknown field {key!r}", closest(str(key), fields))
                )
                self.problems.error(self.source, child, message, hint, key=True)
                bad = True
                continue
            self.owner = t.cls.__name__
            result = self.walk(item, field.type, child)
            if result is _BAD and self.lenient and (t.cls.__name__, key) in _KEPT_AS_WRITTEN and isinstance(item, str):
                result = item  # the compiler skips the hook, and its name still counts for dependsOn
            if result is _BAD:
                bad = True
            else:
                out[key] = result
        for field in t.fields:
            if field.required and field.encode_name not in value:
                self.problems.error(self.source, path, f"missing required field {field.encode_name!r}")
                bad = True
        if self.lenient:
            return _partial(t, fields, out)
        return _BAD if bad else out


def _partial(t: mi.StructType, fields: dict[str, mi.Field], values: dict[str, Any]) -> object:
    """The struct from the fields that were good, or `_BAD` when a required one is not."""
    if any(f.required and f.encode_name not in values for f in t.fields):
        return _BAD
    return t.cls(**{fields[k].name: v for k, v in values.items() if k in fields})


def parse_document(raw: RawDocument, problems: Problems) -> SourceDocument | None:
    """Validate one raw document; every problem goes to `problems`; None when it has errors."""
    data, source = raw.data, raw.source
    if not isinstance(data, dict):
        problems.error(source, (), f"a document must be a mapping, got {_describe(data)}")
        return None
    api, kind = data.get("apiVersion"), data.get("kind")
    ok = True
    if api not in API_VERSIONS:
        where = ("apiVersion",) if "apiVersion" in data else ()
        msg = f"unknown apiVersion {api!r}" if api is not None else "missing required field 'apiVersion'"
        problems.error(source, where, msg, closest(str(api), API_VERSIONS) or f"use {API_VERSIONS[0]}")
        ok = False
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        where = ("kind",) if "kind" in data else ()
        msg = f"unknown kind {kind!r}" if kind is not None else "missing required field 'kind'"
        problems.error(source, where, msg, closest(str(kind), KINDS) or "expected one of " + ", ".join(KINDS))
        return None
    if ok and (direct := _direct(data, cls)) is not None:
        return SourceDocument(direct, source)
    before = len(problems.errors)
    walker = _Walker(source, problems, rafay=api == RAFAY_API_VERSION)
    cleaned = walker.walk(data, _info(cls), ())
    if not ok or cleaned is _BAD or len(problems.errors) > before:
        return None
    try:
        document: Document = msgspec.convert(cleaned, cls)  # type: ignore[assignment]
    except msgspec.ValidationError as exc:  # a rule the walker does not mirror
        problems.error(source, _path_of(str(exc)), str(exc).split(" - at ")[0])
        return None
    return SourceDocument(document, source)


def _direct(data: dict[str, Any], cls: type[msgspec.Struct]) -> Document | None:
    """The document straight from msgspec, when that is exactly what the walker would give.

    A valid document needs none of the walker's leniencies (numbers as strings, any-case
    literals, ignored Rafay fields), so msgspec alone converts it, in one C call; anything it
    refuses goes through the walker for precise problems. The one place where both accept a
    value but differ is a union such as `str | int`: the walker tries its members in order and
    makes 500 the string "500", msgspec keeps the int. Such a document goes to the walker too.
    """
    try:
        document: Document = msgspec.convert(data, cls)  # type: ignore[assignment]
    except msgspec.ValidationError:
        return None
    return None if _union_takes_a_non_string(document) else document


def _strip(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _struct_types(t: mi.Type) -> list[type[msgspec.Struct]]:
    t = _strip(t)
    if isinstance(t, mi.UnionType):
        return [c for m in t.types for c in _struct_types(m)]
    if isinstance(t, mi.ListType):
        return _struct_types(t.item_type)
    if isinstance(t, mi.DictType):
        return _struct_types(t.value_type)
    return [t.cls] if isinstance(t, mi.StructType) else []


def _unions(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    """The attributes of `cls` typed as a union of more than one member besides None."""
    fields = _info(cls).fields  # type: ignore[attr-defined]
    return tuple(
        f.name
        for f in fields
        if isinstance(t := _strip(f.type), mi.UnionType) and sum(not isinstance(m, mi.NoneType) for m in t.types) > 1
    )


@cache
def _reaches_a_union(cls: type[msgspec.Struct]) -> bool:
    seen, todo = {cls}, [cls]
    while todo:
        current = todo.pop()
        if _unions(current):
            return True
        for f in _info(current).fields:  # type: ignore[attr-defined]
            for c in _struct_types(f.type):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
    return False


@cache
def _plan(cls: type[msgspec.Struct]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(union attributes of `cls`, attributes that may hold a struct reaching a union)."""
    fields = _info(cls).fields  # type: ignore[attr-defined]
    unions = _unions(cls)
    nested = tuple(
        f.name for f in fields if f.name not in unions and any(_reaches_a_union(c) for c in _struct_types(f.type))
    )
    return unions, nested


def _union_takes_a_non_string(obj: msgspec.Struct) -> bool:
    unions, nested = _plan(type(obj))
    for name in unions:
        value = getattr(obj, name)
        if value is not None and not isinstance(value, str):
            return True
    for name in nested:
        value = getattr(obj, name)
        items = value if isinstance(value, list) else value.values() if isinstance(value, dict) else (value,)
        if any(isinstance(item, msgspec.Struct) and _union_takes_a_non_string(item) for item in items):
            return True
    return False


_SEGMENT = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")


def _path_of(message: str) -> Path:
    """msgspec's "... - at `$.spec.resources[0]`" to a path tuple."""
    at = message.rpartition("at `$")[2].rstrip("`")
    return tuple(int(m[1]) if m[1] else m[0] for m in _SEGMENT.finditer(at))


def parse_documents(raws: list[RawDocument], problems: Problems) -> list[SourceDocument]:
    return [d for raw in raws if (d := parse_document(raw, problems)) is not None]


Unreadable = frozenset[tuple[str, str]]


def read_leniently(raws: list[RawDocument], problems: Problems) -> tuple[list[SourceDocument], Unreadable]:
    """Every document as far as it can be understood, for validation: one with errors (reported)
    takes part in the later checks without its bad fields; (kind, name) of those that cannot."""
    documents: list[SourceDocument] = []
    unreadable: set[tuple[str, str]] = set()
    for raw in raws:
        before = len(problems.errors)
        doc = parse_document(raw, problems)
        if doc is not None:
            documents.append(doc)
            continue
        if len(problems.errors) == before:
            continue
        partial = _lenient(raw)
        if partial is not None:
            documents.append(partial)
        elif isinstance(raw.data, dict) and isinstance(kind := raw.data.get("kind"), str):
            name = raw.data.get("metadata", {}).get("name") if isinstance(raw.data.get("metadata"), dict) else None
            unreadable.add((kind, str(name)))
    return documents, frozenset(unreadable)


def _lenient(raw: RawDocument) -> SourceDocument | None:
    data = raw.data
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    rafay = data.get("apiVersion") == RAFAY_API_VERSION
    if data.get("apiVersion") not in API_VERSIONS:
        data = {**data, "apiVersion": API_VERSIONS[0]}
    document = _Walker(raw.source, Problems(), rafay, lenient=True).walk(data, _info(cls), ())
    if not isinstance(document, msgspec.Struct):
        return None
    return SourceDocument(document, raw.source)  # type: ignore[arg-type]
