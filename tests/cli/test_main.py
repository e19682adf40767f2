"""`trellis --help` lists every command; a command loads only its own module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trellis_cli.main import COMMAND_MODULES, main

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trellis_cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for module in COMMAND_MODULES:
        command = module.removeprefix("trellis_cli.").removesuffix("_cmd")
        assert f"    {command} " in out or f"    {command}\n" in out, command


def test_a_command_imports_only_its_own_module() -> None:
    probe = (
        "import sys; from trellis_cli.main import main; "
        f"code = main(['template', 'validate', {str(DEMO)!r}]); "
        "print(code, 'nats' in sys.modules, 'trellis_agent' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split()[-3:] == ["0", "False", "False"]


def test_an_unknown_command_exits_2_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["deploy-everything"])
    assert exc.value.code == 2
    assert "invalid choice: 'deploy-everything'" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out
