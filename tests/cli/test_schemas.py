"""The committed JSON Schemas are generated from the Structs and never stale."""

from __future__ import annotations

from pathlib import Path

from trellis_cli.schemas_cmd import render_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_structs() -> None:
    expected = render_schemas()
    stale = [name for name, text in expected.items() if not (SCHEMAS / name).exists()
             or (SCHEMAS / name).read_text() != text]
    extra = sorted(
        str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("*.schema.json")
        if str(p.relative_to(SCHEMAS)) not in expected
    )
    assert not stale, f"stale schemas, run `trellis schemas export`: {stale}"
    assert not extra, f"schemas with no Struct behind them: {extra}"


def test_every_event_and_document_kind_has_a_schema() -> None:
    names = set(render_schemas())
    assert "events/run.requested.schema.json" in names
    assert "events/activity.log.schema.json" in names
    assert "templates/ResourceTemplate.schema.json" in names
    assert "workflow/Workflow.schema.json" in names


def test_schema_descriptions_do_not_depend_on_how_msgspec_formats_docstrings() -> None:
    from trellis_cli.schemas_cmd import _normalise_descriptions

    indented = {"description": "First line.\n\n    Second line,\n    indented.", "properties": {
        "description": {"description": "A field named description.\n        indented"}}}
    dedented = {"description": "First line.\n\nSecond line,\nindented.", "properties": {
        "description": {"description": "A field named description.\nindented"}}}
    assert _normalise_descriptions(indented) == _normalise_descriptions(dedented) == dedented
