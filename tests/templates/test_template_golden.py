"""Each example compiles to its committed JSON graph; `UPDATE_GOLDEN=1` rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from trellis_templates.compiler import compile_bundle, load_bundle

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLES = [("demo", "demo"), ("opentofu", "staging"), ("contexts", "analytics-prod"), ("rafay", "eks-dev")]


def compiled(example: str, environment: str, action: str) -> bytes:
    cwd = os.getcwd()
    os.chdir(ROOT)  # file names in warnings are relative to the repository
    try:
        docs, problems = load_bundle([f"examples/{example}"])
    finally:
        os.chdir(cwd)
    assert not problems.errors, problems.errors
    result = compile_bundle(
        docs,
        environment,
        {},
        action,  # type: ignore[arg-type]
        tenant="acme",
        run_id="run-golden",
        requested_by="golden@example.com",
    )
    assert result.workflow is not None, [str(e) for e in result.errors]
    return msgspec.json.format(msgspec.json.encode(result.workflow), indent=2) + b"\n"


@pytest.mark.parametrize("action", ["deploy", "destroy"])
@pytest.mark.parametrize(("example", "environment"), EXAMPLES)
def test_example_compiles_to_its_committed_graph(example: str, environment: str, action: str) -> None:
    path = GOLDEN / f"{example}-{action}.json"
    actual = compiled(example, environment, action)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        # Rewriting in CI would compare the files with themselves: a changed graph must fail there.
        assert not os.environ.get("CI"), f"UPDATE_GOLDEN is refused in CI ({path.name} would be rewritten)"
        if not path.exists() or path.read_bytes() != actual:
            print(f"golden rewritten: {path}")
        path.write_bytes(actual)
    assert path.exists(), f"{path} is missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert actual.decode() == path.read_text(), f"{path.name} changed: review the diff, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize(("example", "environment"), EXAMPLES)
def test_compiling_twice_gives_identical_bytes(example: str, environment: str) -> None:
    assert compiled(example, environment, "deploy") == compiled(example, environment, "deploy")
