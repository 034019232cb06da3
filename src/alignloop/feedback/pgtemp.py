"""A throwaway PostgreSQL server on loopback, for tests and the load benchmark.

Uses the server binaries of Debian's `postgresql` package. PostgreSQL refuses
to run as root, so when we are root the server runs as the `postgres` user in a
temporary directory handed to that user. It listens on 127.0.0.1 only, on a
free port, with trust authentication limited to loopback, and is stopped (and
its directory removed) on exit.

Two kinds of server:
- fast (the default, for tests): `fsync=off`, `synchronous_commit=off`,
  `full_page_writes=off`. A commit is acknowledged before its WAL is written,
  so a killed server can lose the last fraction of a second of acknowledged
  transactions. Fine for tests, which do not kill it and claim no durability.
- durable (`durable=True`, for benchmarks that claim durability): PostgreSQL's
  own defaults, so an acknowledged commit survives a kill -9 of the server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

FAST_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def find_bindir() -> Optional[Path]:
    """The newest /usr/lib/postgresql/*/bin holding initdb, pg_ctl and postgres, or None."""
    found = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(bindir)
        if all((path / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            try:
                found.append((int(path.parent.name.split(".")[0]), path))
            except ValueError:
                continue
    return max(found)[1] if found else None


def unavailable_reason() -> Optional[str]:
    """Why a temporary server cannot be started here, or None when it can."""
    if find_bindir() is None:
        return "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    """One throwaway server: started, killed with SIGKILL and started again on the same data if asked."""

    def __init__(self, durable: bool = False):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.bindir = find_bindir()
        assert self.bindir is not None
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="alignloop-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sock"
        self.sockets.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.port = _free_port()
        self.env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        # The postmaster runs as our child (not daemonised by pg_ctl), so that once killed it is
        # reaped here: a zombie left to an init that does not reap would block the restart.
        self.process: Optional[subprocess.Popen] = None

    @property
    def settings(self) -> str:
        """What the benchmark reports about this server's durability."""
        return "PostgreSQL defaults (fsync=on, synchronous_commit=on)" if self.durable else \
            "fast test settings (fsync=off, synchronous_commit=off)"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_server_user([str(self.bindir / args[0]), *args[1:]]), check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.root))

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-instructions", *(() if self.durable else ("--no-sync",)))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 120.0) -> None:
        """Start the server (recovering from a crash if it was killed) and wait until it takes connections."""
        import psycopg

        command = [str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                   "-k", str(self.sockets), "-c", "max_connections=200"]
        if not self.durable:
            command += FAST_OPTIONS.split()
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(_as_server_user(command), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, cwd=str(self.root))
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if not self.running or time.monotonic() > deadline:
                    log_tail = (self.root / "server.log").read_text(errors="replace")[-500:]
                    raise RuntimeError(f"PostgreSQL did not start: {log_tail.strip()}") from None
                time.sleep(0.1)

    def _postmaster(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started, as a crash would: nothing is flushed."""
        pid = self._postmaster()
        victims = [pid, *(p for p in _processes() if _parent(p) == pid)] if pid else []
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            self.process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT): the data directory is about to be removed."""
        pid = self._postmaster()
        if self.running and pid:
            try:
                os.kill(pid, signal.SIGQUIT)
                self.process.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _parent(pid: int) -> Optional[int]:
    try:
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextmanager
def postgres_server(database: str = "alignloop", durable: bool = False) -> Iterator[PostgresServer]:
    """Start a server, create `database`, yield the server (`.url(database)`), then stop and remove it."""
    server = PostgresServer(durable=durable)
    try:
        server.init()
        server.start()
        _create_database(server.port, database)
        yield server
    except subprocess.CalledProcessError as exc:
        output = exc.stdout.decode(errors="replace") if exc.stdout else ""
        raise RuntimeError(f"starting PostgreSQL failed: {output.strip()[-500:]}") from None
    finally:
        server.remove()


@contextmanager
def temporary_postgres(database: str = "alignloop", durable: bool = False) -> Iterator[str]:
    """Start a server, create `database`, yield its `postgresql+psycopg://` URL, then stop it."""
    with postgres_server(database, durable) as server:
        yield server.url(database)


def _create_database(port: int, database: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                 autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def create_database(server_url: str, name: str) -> str:
    """A new empty database on the same server; returns its URL (tests get one each)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
