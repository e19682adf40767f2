"""One embedded stack per data directory: `trellis run` finds its state whatever directory it
starts in, waits for another `trellis run` on the same data, joins a running `trellis dev up`,
and a SIGKILLed `trellis run` leaves no server behind."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from embedded_stack_support import (
    DEMO,
    alive,
    cli_env,
    kill_activity,
    servers_of,
    slow_template,
    start_dev_up,
    trellis,
    wait_until,
)


def test_a_destroy_from_another_directory_finds_the_deploy_in_the_per_user_data_dir(stack_dir: Path) -> None:
    env = cli_env(stack_dir / "unused") | {"XDG_DATA_HOME": str(stack_dir / "share")}
    del env["TRELLIS_DATA_DIR"]
    for action, cwd in (("deploy", stack_dir / "here"), ("destroy", stack_dir / "there")):
        cwd.mkdir()
        done = subprocess.run(
            trellis("run", str(DEMO), "--environment", "demo", "--action", action, "--json"),
            capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["status"] == "succeeded"
        assert not (cwd / ".trellis").exists()
    assert (stack_dir / "share" / "trellis" / "nats").is_dir()


def test_a_second_run_on_the_same_data_dir_waits_for_the_first(stack_dir: Path) -> None:
    marker = slow_template(stack_dir / "slow")
    data = stack_dir / "data"
    first = subprocess.Popen(
        trellis("run", str(stack_dir / "slow"), "--environment", "slow", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env(data), cwd=stack_dir,
    )
    second_err = stack_dir / "second.err"
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: marker.exists() and marker.read_text().strip() != "", 60, "the slow activity started")
        with open(second_err, "w") as err:
            second = subprocess.Popen(
                trellis("run", str(DEMO), "--environment", "demo", "--json"),
                stdout=subprocess.PIPE, stderr=err, text=True, env=cli_env(data), cwd=stack_dir,
            )
        waiting = f"another trellis run is using {data}; waiting"
        wait_until(lambda: waiting in second_err.read_text(), 30, "the second run said it waits")
        assert len(servers_of(data / "nats")) == 1, "one nats-server on the store"
        assert second.poll() is None
        os.kill(int(marker.read_text()), signal.SIGKILL)  # the first run fails and stops its stack
        first_out, _ = first.communicate(timeout=60)
        second_out, _ = second.communicate(timeout=120)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        kill_activity(marker)
    assert json.loads(first_out)["status"] == "failed"
    assert second is not None
    assert second.returncode == 0, second_err.read_text()[-3000:]
    assert json.loads(second_out)["status"] == "succeeded"


def test_a_run_joins_the_dev_up_running_on_its_data_dir(stack_dir: Path) -> None:
    data = stack_dir / "data"
    up, url = start_dev_up(data, stack_dir)
    try:
        done = subprocess.run(
            trellis("run", str(DEMO), "--environment", "demo", "--json"),
            capture_output=True, text=True, timeout=120, env=cli_env(data), cwd=stack_dir,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["status"] == "succeeded"
        assert f"using the stack of trellis dev up (pid {up.pid}) at {url}" in done.stderr
        assert len(servers_of(data / "nats")) == 1
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert up.returncode == 0


def test_a_sigkilled_run_leaves_neither_server_nor_activity_behind(stack_dir: Path) -> None:
    marker = slow_template(stack_dir / "slow")
    data = stack_dir / "data"
    run = subprocess.Popen(
        trellis("run", str(stack_dir / "slow"), "--environment", "slow"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(data), cwd=stack_dir,
    )
    try:
        wait_until(lambda: marker.exists() and marker.read_text().strip() != "", 60, "the slow activity started")
        servers = servers_of(data / "nats")
        assert len(servers) == 1
        activity = int(marker.read_text())
        run.kill()
        run.communicate(timeout=30)
        wait_until(lambda: not any(alive(pid) for pid in servers), 30, "nats-server ended with trellis run")
        wait_until(lambda: not alive(activity), 30, "the activity ended with trellis run")
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=30)
        kill_activity(marker)


def test_run_and_dev_up_help_say_where_the_data_dir_is(monkeypatch: pytest.MonkeyPatch, stack_dir: Path) -> None:
    from trellis_cli.main import build_parser

    for chosen in (str(stack_dir / "mine"), ""):
        monkeypatch.setenv("TRELLIS_DATA_DIR", chosen)
        monkeypatch.setenv("XDG_DATA_HOME", str(stack_dir / "share"))
        monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside the path
        parser = build_parser()
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        dev = next(a for a in subcommands.choices["dev"]._actions if isinstance(a, argparse._SubParsersAction))
        for command in (subcommands.choices["run"], dev.choices["up"]):
            text = " ".join(command.format_help().split())
            expected = f"TRELLIS_DATA_DIR={chosen}" if chosen else f"per-user data directory {stack_dir}/share/trellis"
            assert expected in text, text
