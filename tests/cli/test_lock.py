"""requirements.txt pins every dependency pyproject.toml names, at a version it allows, with hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), read from the lock's `name==version \\ --hash=...` entries."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            entries[current] = (match[2], [])
        elif current and line.strip().startswith("--hash=sha256:"):
            entries[current][1].append(line.strip().removesuffix("\\").strip())
    return entries


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["dev"]]
    names += [line for line in (ROOT / "requirements/build.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    return [Requirement(name) for name in names]


def test_every_declared_dependency_is_locked_at_an_allowed_version_with_hashes() -> None:
    locked = _locked()
    problems = []
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement.name}: not in requirements.txt (run make lock)")
            continue
        version, hashes = locked[name]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: locked {version} is outside {requirement.specifier} (run make lock)")
        if not hashes:
            problems.append(f"{requirement.name}: locked without a hash")
    assert not problems, "\n".join(problems)


def test_every_locked_package_carries_a_hash() -> None:
    unhashed = [name for name, (_, hashes) in _locked().items() if not hashes]
    assert len(_locked()) > 30
    assert not unhashed, f"locked without hashes: {unhashed}"
