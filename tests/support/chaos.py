"""Private Redis and PostgreSQL servers that chaos tests may stop, kill and restart.

The machine's shared servers (Redis on 6379, PostgreSQL on 5432) serve every other test, so a
chaos test never touches them: it starts its own on free ports, in temp dirs, and restarts
those. PostgreSQL refuses to run as root, so its binaries run as the ``postgres`` OS user when
the tests run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from service.cli import worker_command
from tests.support.api import REPO_ROOT, child_env, find_free_port
from tests.support.worker import RunningWorker

START_TIMEOUT_S = 30.0


def _wait(check: object, what: str, log: Path | None, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:  # the server is still starting
            last = exc
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not up within {timeout} s (last error: {last}):\n{tail}")


class PrivateRedis:
    """``redis-server`` on a free port, without persistence: a restart loses every message,
    as a Redis without AOF/RDB does."""

    def __init__(self, work_dir: Path) -> None:
        self.port = find_free_port()
        self.log_path = work_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
                + ["--appendonly", "no", "--daemonize", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait(self.client().ping, f"redis on port {self.port}", self.log_path)

    def kill(self) -> None:
        """SIGKILL: the messages it held are gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self, down_s: float = 0.5) -> None:
        self.kill()
        time.sleep(down_s)
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        on_path = shutil.which("pg_ctl")
        if on_path is None:
            raise RuntimeError("PostgreSQL's pg_ctl is not installed")
        return Path(on_path).parent
    return Path(found[-1]).parent


class PrivatePostgres:
    """A PostgreSQL cluster of its own: ``initdb`` in a temp dir, trust auth, 127.0.0.1 on a free
    port, one database ``chaos``. ``restart`` stops it (immediate: a crash, no checkpoint) and
    starts it again on the same port and data dir."""

    def __init__(self) -> None:
        self.port = find_free_port()
        self.bin = _postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="spectral-chaos-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.restarts = 0
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chaos"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, capture_output=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')}\n{done.stderr.decode(errors='replace')}"
            )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE chaos")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log_path), "-w", "start"
        )

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=chaos", connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
        return True

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 1.0) -> None:
        self.stop("immediate")
        time.sleep(down_s)
        self.restarts += 1
        self.start()
        _wait(self.ready, f"postgres on port {self.port}", self.log_path)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


def launch_worker(
    env: dict[str, str], log_path: Path, queues: list[str], *, concurrency: int = 1
) -> RunningWorker:
    """`tests.support.worker.launch_worker` with a pool of ``concurrency`` children; the log is
    appended to, so one file can follow a worker across restarts."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            worker_command(queues, concurrency=concurrency),
            cwd=REPO_ROOT,
            env=child_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningWorker(process, log_path)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``stop`` cuts every connection and refuses new
    ones, ``start`` listens on the same port again: a network partition from a server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = find_free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
