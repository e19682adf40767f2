"""`trellis schemas export`: JSON Schema for every bus message and template document into schemas/."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from trellis_core.events import RUN_EVENT_TYPES, CancelActivity, DeadLetter, WorkItem
from trellis_core.workflow import Workflow


def _document_types() -> tuple[type[Any], ...]:
    from trellis_templates.documents import DOCUMENT_TYPES

    return tuple(DOCUMENT_TYPES)


def _normalise_descriptions(node: Any) -> Any:
    """Descriptions cleaned as `inspect.cleandoc` does, so the files do not depend on how a
    msgspec release formats docstrings (0.23 started dedenting them; earlier ones did not)."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value) if key == "description" and isinstance(value, str)
            else _normalise_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_normalise_descriptions(item) for item in node]
    return node


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, one file per message or document kind, deterministic."""
    files: dict[str, str] = {}
    groups: dict[str, tuple[type[Any], ...]] = {
        "events": (*RUN_EVENT_TYPES, WorkItem, CancelActivity, DeadLetter),
        "workflow": (Workflow,),
        "templates": _document_types(),
    }
    for folder, types in groups.items():
        for t in types:
            schema = _normalise_descriptions(msgspec.json.schema(t))
            name = t.__struct_config__.tag or t.__name__
            files[f"{folder}/{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def export(target: Path) -> list[Path]:
    written = []
    for rel, text in render_schemas().items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def _run(args: argparse.Namespace) -> int:
    target = Path(args.out)
    written = export(target)
    expected = set(render_schemas())
    stale = [p for p in target.rglob("*.schema.json") if str(p.relative_to(target)) not in expected]
    for path in stale:
        path.unlink()
    print(f"{len(written)} schema file(s) written, {len(stale)} removed, under {target}/")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    schemas = subparsers.add_parser("schemas", help="JSON Schema of every message and template document")
    sub = schemas.add_subparsers(metavar="ACTION")
    export_parser = sub.add_parser("export", help="write schemas/ from the Python Structs")
    export_parser.add_argument("--out", default="schemas", help="target folder (default: schemas)")
    export_parser.set_defaults(func=_run)
