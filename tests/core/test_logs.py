"""Logs are JSON lines with their context bound; a TTY gets the console renderer."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from trellis_core.logs import configure, get_logger
from trellis_core.settings import Settings


@pytest.fixture(autouse=True)
def _restore_structlog(quiet_logs: Settings) -> Iterator[None]:
    yield
    configure(quiet_logs)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_logs_carry_tenant_run_and_activity() -> None:
    out = io.StringIO()
    configure(Settings.from_env({}, log_format="auto", log_level="info"), stream=out)
    get_logger("agent", tenant="acme").bind(run="r1", activity="resource/vpc/plan").info("activity_started")
    get_logger("agent").debug("not_shown")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "activity_started"
    assert (lines[0]["tenant"], lines[0]["run"], lines[0]["activity"]) == ("acme", "r1", "resource/vpc/plan")
    assert lines[0]["level"] == "info"
    assert lines[0]["component"] == "agent"


def test_a_logger_made_before_configure_follows_the_configuration() -> None:
    early = get_logger("scheduler", tenant="acme")
    out = io.StringIO()
    configure(Settings.from_env({}, log_format="json", log_level="warning"), stream=out)
    early.info("hidden")
    early.warning("shown")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["shown"]


def test_a_terminal_gets_readable_lines_not_json() -> None:
    out = _Tty()
    configure(Settings.from_env({}, log_format="auto"), stream=out)
    get_logger("scheduler", tenant="acme").info("run_started")
    text = out.getvalue()
    assert "run_started" in text
    assert "tenant" in text
    assert not text.lstrip().startswith("{")
