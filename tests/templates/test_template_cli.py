"""`trellis template validate|compile`: exit codes, the problem lines, JSON and Mermaid output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from template_support import BASE, mutate

from trellis_cli import template_cmd

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def trellis(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="trellis")
    template_cmd.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.mark.parametrize("example", ["demo", "opentofu", "contexts", "rafay"])
def test_validate_exits_zero_for_every_example(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert trellis("template", "validate", str(EXAMPLES / example)) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_prints_every_error_as_file_line_col_path_message_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        mutate(
            ("  provider: opentofu", "  provider: opentofoo"),
            ("        type: script", "        type: scrpit"),
        )
    )
    assert trellis("template", "validate", str(bad)) == 1
    lines = capsys.readouterr().err.splitlines()
    assert (
        f"{bad}:5:13: spec.provider: unknown provider 'opentofoo': expected one of custom, opentofu, "
        'terraform (did you mean "opentofu"?)' in lines
    )
    assert any(line.startswith(f"{bad}:16:15: spec.hooks.onInit[0].type: unknown hook type") for line in lines)


def test_validate_json_reports_problems_for_machines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(mutate(("dependsOn: [{name: vpc}]", "dependsOn: [{name: vcp}]")))
    assert trellis("template", "validate", "--json", str(bad)) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert report["errors"][0]["path"] == "spec.resources[1].dependsOn[0].name"
    assert report["errors"][0]["hint"] == 'did you mean "vpc"?'


def test_compile_prints_the_workflow_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = trellis(
        "template",
        "compile",
        str(EXAMPLES / "demo"),
        "--environment",
        "demo",
        "--var",
        "notify_url=http://localhost:1/x",
        "--action",
        "destroy",
    )
    assert code == 0
    workflow = json.loads(capsys.readouterr().out)
    assert (workflow["environment"], workflow["action"]) == ("demo", "destroy")
    assert workflow["scope"]["environment"]["variables"]["notify_url"] == "http://localhost:1/x"


def test_compile_prints_a_mermaid_flowchart(capsys: pytest.CaptureFixture[str]) -> None:
    assert trellis("template", "compile", str(EXAMPLES / "opentofu"), "-e", "staging", "--format", "mermaid") == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD\n")
    assert 'subgraph r_cluster["cluster"]' in out


def test_compile_rejects_a_malformed_var_and_a_missing_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trellis("template", "compile", str(EXAMPLES / "demo"), "-e", "demo", "--var", "novalue") == 2
    (tmp_path / "b.yaml").write_text(BASE)
    assert trellis("template", "compile", str(tmp_path), "-e", "prod") == 1
    assert "Environment 'prod' not found in the bundle" in capsys.readouterr().err


def test_validate_compiles_a_template_no_environment_uses_and_warns_about_missing_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE[: BASE.index("---\napiVersion: trellis.dev/v1\nkind: Environment\n")]
    (tmp_path / "t.yaml").write_text(text)
    assert trellis("template", "validate", str(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "warning:" in err
    assert "required variable 'team' has no value" in err
