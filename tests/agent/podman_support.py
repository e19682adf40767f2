"""A Podman service with a Docker-compatible socket, for the docker executor tests.

Recipe (what `.ci/run` installs: podman, runc, busybox-static and its network helpers): a
containers.conf with runtime runc, cgroupfs and ulimits; a private vfs storage; a test image
made offline by `podman import` of a tar holding busybox (no registry is reachable); and
`podman system service --time=0 unix://<tmp>/podman.sock`. Without Podman the tests skip,
or fail where TRELLIS_REQUIRE_PODMAN=1 (CI).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest

REQUIRE_PODMAN = "TRELLIS_REQUIRE_PODMAN"  # "1" (set by .ci/run): a missing Podman fails the tests
IMAGE = "localhost/trellis-test/busybox:latest"
FUNCTION_IMAGE = "localhost/trellis-test/function:latest"
BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh",
    "echo",
    "cat",
    "sleep",
    "ls",
    "true",
    "false",
    "env",
    "printf",
    "mkdir",
    "rm",
    "id",
    "httpd",
    "head",
)

# A function served at / over HTTP (busybox httpd runs /cgi-bin/index.cgi): `again` twice, then `done`.
FUNCTION_CGI = """#!/bin/sh
head -c "${CONTENT_LENGTH:-0}" > /tmp/last-request
n=$(cat /tmp/polls 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /tmp/polls
printf 'Content-Type: application/json\\r\\n\\r\\n'
if [ "$n" -lt 3 ]; then
  printf '{"status": "again", "data": {"polls": %s}}' "$n"
else
  printf '{"status": "done", "outputs": {"polls": %s, "greeting": "%s"}}' "$n" "$GREETING"
fi
"""

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


class PodmanUnusable(Exception):
    """Podman is there but cannot run containers on this machine; the message says why."""


def missing() -> str:
    """Why the Podman tests cannot run here, or '' when they can."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc busybox-static; see tests/agent/README.md)"
    if not Path(BUSYBOX).exists():
        return f"{BUSYBOX} is missing (apt-get install busybox-static)"
    if os.geteuid() != 0:
        return "the podman tests run podman as root (rootless needs a user namespace set-up)"
    return ""


def require_podman_or_skip(reason: str) -> NoReturn:
    """Skip a Podman test, or fail it where CI demands Podman (TRELLIS_REQUIRE_PODMAN=1)."""
    if os.environ.get(REQUIRE_PODMAN) == "1":
        pytest.fail(f"{REQUIRE_PODMAN}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _busybox_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        cgi = FUNCTION_CGI.encode()
        script = tarfile.TarInfo("www/cgi-bin/index.cgi")
        script.mode = 0o755
        script.size = len(cgi)
        for directory in ("bin", "tmp", "www", "www/cgi-bin"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        tar.addfile(script, io.BytesIO(cgi))


@contextmanager
def podman_service(workdir: Path) -> Iterator[str]:
    """Start the service; yield its socket path; stop it and remove its containers."""
    # Podman refuses a runroot over 50 characters, and a pytest worker's temp dir is longer.
    short = Path(tempfile.mkdtemp(prefix="trellis-podman-"))
    try:
        with _podman_service(workdir, short) as sock:
            yield sock
    finally:
        shutil.rmtree(short, ignore_errors=True)


@contextmanager
def _podman_service(workdir: Path, short: Path) -> Iterator[str]:
    conf = workdir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    base = [
        "podman",
        "--root", str(workdir / "storage"),
        "--runroot", str(short / "run"),
        "--storage-driver", "vfs",
    ]  # fmt: skip
    tar = workdir / "busybox.tar"
    _busybox_tar(tar)
    serve = 'CMD ["sh", "-c", "exec httpd -f -p ${PORT} -h /www"]'
    for image, changes in ((IMAGE, []), (FUNCTION_IMAGE, ["--change", serve])):
        command = [*base, "import", *changes, str(tar), image]
        imported = subprocess.run(command, env=env, capture_output=True, timeout=120)
        if imported.returncode != 0:
            raise RuntimeError(f"podman import of {image} failed: {imported.stderr.decode(errors='replace')[-500:]}")
    smoke = subprocess.run([*base, "run", "--rm", IMAGE, "true"], env=env, capture_output=True, timeout=120)
    if smoke.returncode != 0:
        raise PodmanUnusable(
            "podman is installed but cannot run a container here (its network backend needs netavark, "
            f"aardvark-dns and iptables): {smoke.stderr.decode(errors='replace').strip()[-300:]}"
        )
    sock = short / "podman.sock"
    log = (workdir / "service.log").open("wb")
    service = subprocess.Popen(
        [*base, "system", "service", "--time=0", f"unix://{sock}"], env=env, stdout=log, stderr=log
    )
    try:
        _wait_for_socket(sock, service, within=30)
        yield str(sock)
    finally:
        subprocess.run([*base, "rm", "--all", "--force"], env=env, capture_output=True, timeout=60)
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()


def _wait_for_socket(sock: Path, service: subprocess.Popen[bytes], within: float) -> None:
    """The service gives no readiness signal but its listening socket: try to connect."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"podman system service exited with {service.returncode}")
        if sock.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(sock))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise RuntimeError(f"podman did not listen on {sock} within {within:g}s")


async def containers_of_run(socket_path: str, run_id: str) -> list[dict[str, Any]]:
    """The containers (running or not) labelled with `run_id`."""
    filters = json.dumps({"label": [f"trellis.dev/run={run_id}"]})
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session,
        session.get("http://docker/v1.41/containers/json", params={"all": "true", "filters": filters}) as resp,
    ):
        return list(await resp.json())
