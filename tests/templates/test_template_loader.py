"""The loader: many documents per file, directories, positions of every node, anchors, duplicates."""

from __future__ import annotations

from pathlib import Path

from trellis_templates.errors import Problems
from trellis_templates.loader import load_paths, load_text


def test_every_node_keeps_its_line_and_column_and_every_key_its_own() -> None:
    problems = Problems()
    (doc,) = load_text("a: 1\nb:\n  - x: two\n    y: [1, 2]\n", "f.yaml", problems)
    assert doc.data == {"a": 1, "b": [{"x": "two", "y": [1, 2]}]}
    assert doc.source.at(("b", 0, "y", 1)) == (4, 12)
    assert doc.source.at(("b", 0, "y"), key=True) == (4, 5)
    assert doc.source.at(("b", 0, "nope")) == (3, 5)  # the nearest parent that exists


def test_several_documents_per_file_and_empty_ones_skipped() -> None:
    problems = Problems()
    docs = load_text("---\na: 1\n---\n---\nb: 2\n", "f.yaml", problems)
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}]
    assert docs[1].source.at(("b",)) == (5, 4)


def test_merge_keys_are_overridden_by_the_mappings_own_keys() -> None:
    problems = Problems()
    (doc,) = load_text("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n", "f.yaml", problems)
    assert doc.data["c"] == {"x": 1, "y": 3}
    assert not problems.errors


def test_a_duplicate_key_is_an_error_at_the_second_one() -> None:
    problems = Problems()
    load_text("a: 1\nb: 2\na: 3\n", "f.yaml", problems)
    assert [str(p) for p in problems.errors] == ["f.yaml:3:1: a: duplicate key 'a'"]


def test_directories_are_read_in_name_order_and_missing_paths_reported(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("b: 1\n")
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "notes.txt").write_text("not yaml: [\n")
    problems = Problems()
    docs = load_paths([str(tmp_path), str(tmp_path / "missing.yaml")], problems)
    assert [d.data for d in docs] == [{"a": 1}, {"b": 1}]
    assert [p.message for p in problems.errors] == [f"no such file or directory: {tmp_path / 'missing.yaml'}"]
