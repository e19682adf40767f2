"""`trellis dev up` starts the whole stack on free ports and stops it cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats


async def test_dev_up_starts_nats_and_postgres_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
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
    finally:
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Stopped." in out
    assert time.monotonic() - started < 60
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout == "", "servers outlived trellis dev up"
