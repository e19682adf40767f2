"""The embedded nats-server and PostgreSQL die with the process that started them, even when it
is SIGKILLed, and a port asked for that is taken is an error saying so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trellis_core.embedded import EmbeddedNats, EmbeddedServerError, free_port, port_is_free

STARTER = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    from trellis_core.embedded import EmbeddedNats, EmbeddedPostgres
    base = Path(sys.argv[1])
    nats = EmbeddedNats(base / "nats")
    nats.start()
    pg = EmbeddedPostgres(base / "pg", durable=False)
    pg.start()
    print(json.dumps({"nats": nats.proc.pid, "postgres": pg.proc.pid}), flush=True)
    threading.Event().wait()
    """
)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], within: float) -> list[int]:
    """The pids still alive after waiting up to `within` seconds for all of them to end."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_servers_die_with_their_parent_even_when_it_is_sigkilled(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        pids = json.loads(line)
        assert alive(pids["nats"])
        assert alive(pids["postgres"])
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert wait_gone([pids["nats"], pids["postgres"]], within=30) == []


def test_a_port_asked_for_that_is_taken_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(EmbeddedServerError, match=f"port {port} on 127.0.0.1 is taken"):
            EmbeddedNats(tmp_path / "nats", port=port).start()


def test_nats_listens_on_the_port_asked_for(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", port=port)
    try:
        assert server.start() == f"nats://127.0.0.1:{port}"
    finally:
        server.stop()
    assert port_is_free(port)
    assert os.path.exists(tmp_path / "nats" / "jetstream")


def test_stop_sends_no_signal_to_a_server_already_gone(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    server.stop()
    assert server.proc is None


def test_secure_mode_runs_from_a_generated_config_that_reloads(tmp_path: Path) -> None:
    """Secure mode: nats-server reads the generated config (its authorization in an include, the
    control plane's seed 0600 beside it); no credentials, no connection; a new user after a
    reload connects, and reloading a stopped server is an error saying so."""
    import asyncio

    import nats
    import nats.errors

    from trellis_core import nats_auth

    server = EmbeddedNats(tmp_path / "nats", secure=True)
    server.start()
    try:
        for private in (server.control_seed_file, server.auth_file, server.config_file):
            assert private.stat().st_mode & 0o777 == 0o600, private
        assert server.pid_file.read_text().strip() == str(server.proc.pid if server.proc else "")

        async def connect(seed_file: Path | None) -> bool:
            try:
                nc = await nats.connect(
                    servers=[server.url], nkeys_seed=str(seed_file) if seed_file else None,
                    allow_reconnect=False, connect_timeout=3,
                )
            except (nats.errors.Error, OSError):
                return False
            await nc.close()
            return True

        seed, public = nats_auth.new_user_seed()
        (tmp_path / "agent.nk").write_text(seed)
        assert asyncio.run(connect(None)) is False
        assert asyncio.run(connect(server.control_seed_file)) is True
        assert asyncio.run(connect(tmp_path / "agent.nk")) is False
        server.write_authorization([("acme", public)])
        server.reload()
        deadline = time.monotonic() + 10
        while not asyncio.run(connect(tmp_path / "agent.nk")):
            assert time.monotonic() < deadline, "the reloaded server never knew the new user"
            time.sleep(0.05)
    finally:
        server.stop()
    with pytest.raises(EmbeddedServerError, match="not running: nothing to reload"):
        server.reload()
