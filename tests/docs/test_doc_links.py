"""Every relative link in README.md, docs/ and the examples' READMEs names a file that exists,
and every `#anchor` names a heading of the page it points at (GitHub's heading slugs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted({ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/**/README.md")})
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The page without code blocks and code spans, where `[x](y)` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}: ({target})"
        if not linked.exists():
            problems.append(f"{where}: {path_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading #{anchor} in {linked.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_a_missing_file_and_a_missing_anchor_are_both_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## The `trellis` command\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#the-trellis-command) [gone](nowhere.md) [bad](other.md#no-such)\n"
        "`[code](not-a-link.md)`\n```\n[fenced](not-a-link-either.md)\n```\n[web](https://example.com/x)\n"
    )
    assert broken_links(page, tmp_path) == [
        "page.md: (nowhere.md): nowhere.md does not exist",
        "page.md: (other.md#no-such): no heading #no-such in other.md",
    ]


MD_NAME = re.compile(r"(?<![\w/.*-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt"}
TEXT_NAMES = {"Makefile", "Dockerfile", "Tiltfile"}


def project_files(root: Path) -> list[Path]:
    """The repository's text files, without hidden directories (.venv, .git, .trellis) and caches."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        found.extend(Path(folder, n) for n in names if Path(n).suffix in TEXT_SUFFIXES or n in TEXT_NAMES)
    return sorted(found)


def missing_md_files(root: Path, skip: Path | None = None) -> list[str]:
    """Every `NAME.md` that a file mentions and the repository lacks, as `file:line: NAME.md`.
    A name with a folder is looked up from the repository root and from the file's folder."""
    files = project_files(root)
    basenames = {p.name for p in files if p.suffix == ".md"}
    problems = []
    for path in files:
        if path == skip:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for name in MD_NAME.findall(line):
                exists = (root / name).exists() or (path.parent / name).exists() if "/" in name else name in basenames
                if not exists:
                    problems.append(f"{path.relative_to(root)}:{number}: {name}")
    return problems


def test_no_file_of_the_repository_names_a_document_it_does_not_have() -> None:
    assert missing_md_files(ROOT, skip=Path(__file__).resolve()) == []


def test_a_mention_of_a_document_the_repository_lacks_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("see guide.md\n")
    (tmp_path / "mod.py").write_text('"""The streams of NOTES.md section 1 (docs/guide.md, docs/gone.md)."""\n')
    assert missing_md_files(tmp_path) == ["mod.py:1: NOTES.md", "mod.py:1: docs/gone.md"]
