"""`trellis dev up` starts the whole stack on free ports, serves a run submitted with
TRELLIS_NATS_URL from another process, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


async def test_dev_up_starts_every_service_serves_a_run_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {"TRELLIS_DATA_DIR": str(tmp_path / "data"), "TRELLIS_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trellis_cli.main", "dev", "up"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("  Use it:"):
                break
        text = "".join(lines)
        nats_url = re.search(r"NATS:\s+(\S+)", text)
        pg_url = re.search(r"PostgreSQL:\s+(\S+)", text)
        assert nats_url, text
        assert pg_url, text
        assert not nats_url.group(1).endswith(":4222")
        nc = await nats.connect(nats_url.group(1))
        streams = {s.config.name for s in await nc.jetstream().streams_info()}
        await nc.close()
        assert {"TRELLIS_RUNS", "TRELLIS_EVENTS", "TRELLIS_WORK", "TRELLIS_LOGS"} <= streams
        conn = await asyncpg.connect(pg_url.group(1))
        assert await conn.fetchval("select 1") == 1
        await conn.close()
        # Its compiler, scheduler and agent serve a run submitted from another process.
        run = subprocess.run(
            [sys.executable, "-m", "trellis_cli.main", "run", str(DEMO), "--environment", "demo", "--json"],
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
            env={**env, "TRELLIS_NATS_URL": nats_url.group(1)},
        )
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(run.stdout)
        assert result["status"] == "succeeded"
    finally:
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Stopped." in out
    assert time.monotonic() - started < 60
    assert not _processes_mentioning(str(tmp_path)), "servers outlived trellis dev up"


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions `text` (no pgrep: slim images lack procps)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
