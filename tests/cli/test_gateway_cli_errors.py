"""The gateway commands refuse plainly before they reach anything: no TRELLIS_GATEWAY_URL, no
TRELLIS_TOKEN, a gateway that does not listen, a malformed option; and a problem+json answer is
rendered with its status, title, detail, path and every template problem's file:line:col."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from embedded_stack_support import cli_env, trellis

from trellis_cli.gateway_client import describe_problem, parse_sse
from trellis_core.embedded import free_port


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        trellis(*args), capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cli_env(tmp_path, **env),
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [("env", "list"), ("env", "show", "x"), ("runs", "list"), ("runs", "show", "r1"), ("approve", "r1", "a/b"),
     ("template", "publish", "."), ("env", "deploy", "x")],
)
def test_a_gateway_command_without_trellis_gateway_url_says_to_set_it(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = _cli(tmp_path, *command)
    assert result.returncode == 2
    assert "set TRELLIS_GATEWAY_URL (and TRELLIS_TOKEN)" in result.stderr
    assert "trellis dev up` prints both" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_gateway_without_a_token_names_trellis_token(tmp_path: Path) -> None:
    result = _cli(tmp_path, "env", "list", TRELLIS_GATEWAY_URL="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "no token for the gateway at http://127.0.0.1:9: set TRELLIS_TOKEN" in result.stderr


def test_a_gateway_that_does_not_listen_is_named_with_its_variable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (("runs", "list"), ("logs", "r1"), ("cancel", "r1")):
        result = _cli(tmp_path, *command, TRELLIS_GATEWAY_URL=url, TRELLIS_TOKEN="t")
        assert result.returncode == 1, command
        assert f"cannot reach the gateway at {url} (TRELLIS_GATEWAY_URL)" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_malformed_template_option_is_a_usage_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _cli(tmp_path, "env", "apply", "x", "--template", "no-version", TRELLIS_GATEWAY_URL=url, TRELLIS_TOKEN="t")
    assert result.returncode == 2
    assert "--template 'no-version': write NAME@VERSION" in result.stderr


def test_logs_follow_needs_the_gateway(tmp_path: Path) -> None:
    result = _cli(tmp_path, "logs", "r1", "--follow", TRELLIS_NATS_URL="nats://127.0.0.1:9")
    assert result.returncode == 2
    assert "--follow works through the gateway" in result.stderr


def test_trellis_run_with_a_gateway_but_no_token_says_so_before_reading_anything_else(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("kind: Environment\n")
    result = _cli(tmp_path, "run", str(tmp_path), "-e", "x", TRELLIS_GATEWAY_URL="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "set TRELLIS_TOKEN" in result.stderr


def test_a_problem_names_status_title_detail_path_and_every_template_problem() -> None:
    body = (
        b'{"title": "Unprocessable Content", "status": 422, "detail": "2 template errors", "path": "sources",'
        b' "problems": [{"message": "unknown field", "file": "a.yaml", "line": 9, "column": 11,'
        b' "path": "spec.tasks[0]", "hint": "did you mean name?"},'
        b' {"message": "no such template", "file": "b.yaml", "line": 3, "column": 1}]}'
    )
    text = describe_problem("POST", "/v1/templates", 422, "Unprocessable Entity", body, "application/problem+json")
    assert text.splitlines() == [
        "POST /v1/templates: 422 Unprocessable Content: 2 template errors (at sources)",
        "  a.yaml:9:11: spec.tasks[0]: unknown field (did you mean name?)",
        "  b.yaml:3:1: no such template",
    ]
    unauthorised = describe_problem("GET", "/v1/runs", 401, "Unauthorized", b"", "text/plain")
    assert unauthorised == "GET /v1/runs: 401 Unauthorized — check TRELLIS_TOKEN"
    html = describe_problem("GET", "/v1/runs", 502, "Bad Gateway", b"<h1>proxy down</h1>", "text/html")
    assert html == "GET /v1/runs: 502 Bad Gateway: <h1>proxy down</h1>"


async def test_server_sent_events_are_parsed_by_the_whatwg_rules() -> None:
    async def lines():  # type: ignore[no-untyped-def]
        for line in [b": keep-alive\n", b"id: 7\n", b"event: run.started\n", b"data: {\"a\":\n", b"data: 1}\n",
                     b"\n", b"data:x\r\n", b"\r\n", b"id: 9\n", b"data: tail\n"]:
            yield line

    events = [e async for e in parse_sse(lines())]
    assert [(e.id, e.event, e.data) for e in events] == [
        ("7", "run.started", '{"a":\n1}'), ("", "message", "x"), ("9", "message", "tail"),
    ]
