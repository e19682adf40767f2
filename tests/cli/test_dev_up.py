"""`trellis dev up` starts the whole stack on the port asked for, serves runs submitted with
TRELLIS_NATS_URL or from the same data directory, stops cleanly on Ctrl-C (at once on a second),
and leaves nothing behind even when SIGKILLed."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import nats
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

from trellis_core.embedded import free_port


async def test_dev_up_starts_every_service_serves_a_run_and_stops_cleanly_on_ctrl_c(stack_dir: Path) -> None:
    data = stack_dir / "data"
    proc, nats_url = start_dev_up(data, stack_dir)
    try:
        nc = await nats.connect(nats_url)
        streams = {s.config.name for s in await nc.jetstream().streams_info()}
        await nc.close()
        assert {"TRELLIS_RUNS", "TRELLIS_EVENTS", "TRELLIS_WORK_default", "TRELLIS_LOGS"} <= streams
        # Its compiler, scheduler and agent serve a run submitted from another process.
        run = subprocess.run(
            trellis("run", str(DEMO), "--environment", "demo", "--json"),
            capture_output=True, text=True, timeout=90, cwd=stack_dir,
            env=cli_env(stack_dir / "elsewhere", TRELLIS_NATS_URL=nats_url),
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout)["status"] == "succeeded"
    finally:
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Stopped." in out
    assert time.monotonic() - started < 60
    assert not servers_of(stack_dir), "servers outlived trellis dev up"


async def test_dev_up_prints_a_postgresql_that_answers(stack_dir: Path) -> None:
    proc = subprocess.Popen(
        trellis("dev", "up", "--port", str(free_port())),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(stack_dir / "data"), cwd=stack_dir,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        pg_url = lines[2].split()[-1]
        assert pg_url.startswith("postgresql://"), lines
        conn = await asyncpg.connect(pg_url)
        assert await conn.fetchval("select 1") == 1
        await conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_nats_listens_on_the_port_given_so_its_url_survives_a_restart(stack_dir: Path) -> None:
    port = free_port()
    urls = []
    for _ in range(2):
        proc, url = start_dev_up(stack_dir / "data", stack_dir, "--port", str(port))  # the last --port wins
        urls.append(url)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert urls == [f"nats://127.0.0.1:{port}"] * 2


def test_a_port_that_is_taken_is_an_error_saying_so(stack_dir: Path) -> None:
    first, url = start_dev_up(stack_dir / "one", stack_dir)
    try:
        port = url.rsplit(":", 1)[1]
        second = subprocess.run(
            trellis("dev", "up", "--port", port), capture_output=True, text=True, timeout=60,
            env=cli_env(stack_dir / "two"), cwd=stack_dir,
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert second.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in second.stderr
    assert "Traceback" not in second.stderr
    assert not servers_of(stack_dir / "two")


def test_a_second_dev_up_on_the_same_data_dir_says_which_one_runs(stack_dir: Path) -> None:
    first, url = start_dev_up(stack_dir / "data", stack_dir)
    try:
        second = subprocess.run(
            trellis("dev", "up", "--port", str(free_port())), capture_output=True, text=True, timeout=60,
            env=cli_env(stack_dir / "data"), cwd=stack_dir,
        )
        assert second.returncode == 1
        assert f"trellis dev up (pid {first.pid}) already runs the stack on {stack_dir / 'data'}" in second.stderr
        assert f"export TRELLIS_NATS_URL={url}" in second.stderr
        assert len(servers_of(stack_dir / "data" / "nats")) == 1
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_a_second_ctrl_c_cancels_running_activities_and_stops_without_a_traceback(stack_dir: Path) -> None:
    marker = slow_template(stack_dir / "slow")
    proc, _ = start_dev_up(stack_dir / "data", stack_dir)
    run = subprocess.Popen(
        trellis("run", str(stack_dir / "slow"), "--environment", "slow", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=stack_dir,
        env=cli_env(stack_dir / "data"),
    )
    try:
        wait_until(marker.exists, 60, "the slow activity started")
        wait_until(lambda: marker.read_text().strip() != "", 10, "the slow activity wrote its pid")
        activity = int(marker.read_text())
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while "export " in line:  # the rest of the lines to paste, after the one start_dev_up read
            line = proc.stdout.readline()
        assert line.startswith("Stopping: waiting for 1 running activity (up to 30 s)"), line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        run.kill()
        run.communicate(timeout=30)
        kill_activity(marker)
    assert proc.returncode == 0, err
    assert "Stopping now: running activities are cancelled." in out
    assert "Stopped." in out
    assert "Traceback" not in err, err[err.index("Traceback") - 300:]
    assert not alive(activity), "the cancelled activity outlived trellis dev up"
    assert not servers_of(stack_dir / "data")


def test_a_sigkilled_dev_up_leaves_no_server_behind(stack_dir: Path) -> None:
    proc, _ = start_dev_up(stack_dir / "data", stack_dir)
    servers = servers_of(stack_dir / "data")
    assert len(servers) >= 2, "nats-server and postgres run"
    proc.kill()
    proc.communicate(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in servers), 30, "the servers ended with trellis dev up")
    # The lock died with it: the next dev up on that data dir starts at once.
    again, _ = start_dev_up(stack_dir / "data", stack_dir)
    again.send_signal(signal.SIGINT)
    again.communicate(timeout=60)
    assert again.returncode == 0
