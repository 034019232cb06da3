"""A throwaway PostgreSQL server on loopback, for tests and the load benchmark.

Uses the server binaries of Debian's `postgresql` package. PostgreSQL refuses
to run as root, so when we are root the server runs as the `postgres` user in a
temporary directory handed to that user. It listens on 127.0.0.1 only, on a
free port, with trust authentication limited to loopback, and is stopped (and
its directory removed) on exit.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional


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


@contextmanager
def temporary_postgres(database: str = "alignloop") -> Iterator[str]:
    """Start a server, create `database`, yield its `postgresql+psycopg://` URL, then stop it."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = find_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="alignloop-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    run = dict(check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    started = False
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                        "-E", "UTF8", "--no-sync", "--no-instructions"]), **run)
        options = (f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                                        "-o", options, "-w", "-t", "60", "start"]), **run)
        started = True
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
        _create_database(port, database)
        yield url
    except subprocess.CalledProcessError as exc:
        output = exc.stdout.decode(errors="replace") if exc.stdout else ""
        raise RuntimeError(f"starting PostgreSQL failed: {output.strip()[-500:]}") from None
    finally:
        if started:
            subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env, cwd=str(root))
        shutil.rmtree(root, ignore_errors=True)


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
