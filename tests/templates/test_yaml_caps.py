"""Hostile YAML is refused before it is composed: nesting depth, alias expansion, text size."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trellis_cli.main import main
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunEvent, RunRejected, RunRequested, SourceFile, decode_run_event
from trellis_core.settings import Settings
from trellis_templates.compiler import compile_sources
from trellis_templates.errors import Problems
from trellis_templates.loader import LIBYAML, MAX_DEPTH, MAX_NODES, Budget, Reader, load_text

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "templates.yaml"
TIMEOUT = 15.0
READERS: list[Reader] = ["auto", "pyyaml", *(["libyaml"] if LIBYAML else [])]  # type: ignore[list-item]


def deep(kind: str, levels: int) -> str:
    """A document nested `levels` collections deep, in one of the shapes a composer recurses on."""
    if kind == "flow":
        return "a: " + "[" * (levels - 1) + "x" + "]" * (levels - 1) + "\n"
    if kind == "compact":
        return "- " * levels + "x\n"
    return "".join(" " * i + "a:\n" for i in range(levels - 1)) + " " * (levels - 1) + "b: 1\n"


def alias_bomb() -> str:
    """About 240 bytes that expand to 6**9 (ten million) nodes."""
    lines = ["a: &a [x,x,x,x,x,x]"]
    lines += [f"{n}: &{n} [{','.join([f'*{p}'] * 6)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    return "\n".join(lines) + "\n"


_PROBE = """
import json, sys
from trellis_templates.errors import Problems
from trellis_templates.loader import load_text
problems = Problems()
docs = load_text(sys.stdin.read(), "deep.yaml", problems, reader=sys.argv[1])
print(json.dumps([len(docs), [(e.file, e.line, e.message) for e in problems.errors]]))
"""


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", ["flow", "compact"])
def test_a_document_nested_50_000_deep_is_refused_naming_file_line_and_cap(kind: str, reader: str) -> None:
    text = deep(kind, 50_000)  # about 100 KB; in a child process, as a composer crash would kill it
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, reader], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count, [[file, line, message]] = json.loads(done.stdout)
    assert (count, file, line) == (0, "deep.yaml", 1)
    assert message == f"YAML nested deeper than {MAX_DEPTH} levels: refused"


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", ["flow", "compact", "indented"])
def test_the_depth_cap_admits_its_last_level_and_refuses_the_next(kind: str, reader: Reader) -> None:
    problems = Problems()
    assert len(load_text(deep(kind, MAX_DEPTH), "f.yaml", problems, reader=reader)) == 1
    assert problems.errors == []
    problems = Problems()
    assert load_text(deep(kind, MAX_DEPTH + 1), "f.yaml", problems, reader=reader) == []
    [error] = problems.errors
    assert f"nested deeper than {MAX_DEPTH} levels" in error.message
    assert error.line == (MAX_DEPTH + 1 if kind == "indented" else 1)


def test_aliases_nesting_past_the_cap_are_refused_once_expanded() -> None:
    lines = ["a0: &a0 [x]", *(f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 5))]
    problems = Problems()
    assert load_text("\n".join(lines) + "\n", "chain.yaml", problems) == []
    [error] = problems.errors
    assert (error.file, error.line) == ("chain.yaml", 1)
    assert f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded" in error.message


def test_every_document_of_a_request_shares_one_node_budget() -> None:
    bomb = alias_bomb()
    assert len(bomb) < 260
    sources = [SourceFile(path=f"bomb{i}.yaml", text=f"---\n{bomb}---\n{bomb}") for i in range(3)]
    result = compile_sources(sources, "demo")
    assert result.workflow is None
    assert [(e.file, e.line) for e in result.errors] == [(f"bomb{i}.yaml", n) for i in range(3) for n in (2, 12)]
    assert all(f"more than {MAX_NODES:,} YAML nodes" in e.message for e in result.errors)


def test_small_alias_documents_pass_until_the_shared_budget_runs_out() -> None:
    budget, problems = Budget(nodes=25), Problems()
    text = "a: &a [1, 2, 3]\nb: [*a, *a]\n"  # 1 + 4 + 1 + 8 = 14 nodes
    assert len(load_text(text, "one.yaml", problems, reader="pyyaml", budget=budget)) == 1
    assert load_text(text, "two.yaml", problems, reader="pyyaml", budget=budget) == []
    [error] = problems.errors
    assert (error.file, error.line) == ("two.yaml", 1)


def test_text_over_the_size_cap_is_refused_before_it_is_read() -> None:
    budget, problems = Budget(chars=20), Problems()
    assert len(load_text("a: 1\n", "small.yaml", problems, budget=budget)) == 1
    assert load_text("b: " + "x" * 20 + "\n", "big.yaml", problems, budget=budget) == []
    [error] = problems.errors
    assert (error.file, error.line) == ("big.yaml", 1)
    assert "larger than" in error.message


def test_template_validate_names_the_deep_file_line_and_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "deep.yaml").write_text(deep("compact", 50_000))
    (tmp_path / "bomb.yaml").write_text(f"{alias_bomb()}---\n{alias_bomb()}")
    assert main(["template", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"nested deeper than {MAX_DEPTH} levels" in text
    assert "deep.yaml:1" in text
    assert text.count(f"more than {MAX_NODES:,} YAML nodes") == 2


@pytest.fixture
def compiler_process(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`trellis compiler` in its own process: were a composer to crash, it would die, not the test."""
    env = {**os.environ, "TRELLIS_NATS_URL": settings.nats_url, "TRELLIS_STREAM_STORAGE": settings.stream_storage}
    with (tmp_path / "compiler.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trellis_cli.main", "compiler"], env=env, stdout=log, stderr=log, cwd=tmp_path
        )
        yield proc
        proc.terminate()
        proc.wait(15)


@pytest.fixture
async def run_events(bus: Bus, unique: str) -> AsyncIterator[asyncio.Queue[RunEvent]]:
    queue: asyncio.Queue[RunEvent] = asyncio.Queue()

    async def collect(msg: object) -> None:
        await queue.put(decode_run_event(msg.data))  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe(subjects.all_run_events(unique), cb=collect)
    yield queue
    await sub.unsubscribe()


async def request(bus: Bus, tenant: str, run_id: str, *files: tuple[str, str]) -> None:
    sources = tuple(SourceFile(path=path, text=text) for path, text in files)
    event = RunRequested(tenant=tenant, run_id=run_id, environment="demo", sources=sources, requested_by="tester")
    await bus.publish(subjects.runs_requested(tenant), event, msg_id=f"{run_id}/request")


async def test_the_compiler_service_rejects_hostile_yaml_and_then_compiles_an_ordinary_request(
    bus: Bus, compiler_process: subprocess.Popen[bytes], run_events: asyncio.Queue[RunEvent], unique: str
) -> None:
    await request(bus, unique, "run-deep", ("deep.yaml", deep("flow", 50_000)))
    rejected = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(rejected, RunRejected), rejected
    assert [(e.file, e.line, e.message) for e in rejected.errors] == [
        ("deep.yaml", 1, f"YAML nested deeper than {MAX_DEPTH} levels: refused")
    ]

    bombs = [(f"bomb{i}.yaml", alias_bomb()) for i in range(3)]
    await request(bus, unique, "run-bombs", *bombs)
    rejected = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(rejected, RunRejected), rejected
    assert [e.file for e in rejected.errors] == ["bomb0.yaml", "bomb1.yaml", "bomb2.yaml"]
    assert all(f"more than {MAX_NODES:,} YAML nodes" in e.message for e in rejected.errors)

    await request(bus, unique, "run-ok", ("demo.yaml", DEMO.read_text()))
    compiled = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(compiled, RunCompiled), compiled
    assert compiler_process.poll() is None  # the same process all along
