"""Running the app with uvicorn: in the foreground (`alignloop serve`) or in a background thread.

Both bind the listening socket themselves first, so a port in use is one clear
error before anything is printed, and port 0 (any free port) tells the caller
the port it got. The background server (used by `alignloop annotate
--simulated`, `loop --human`, the browser tests and the load benchmark)
listens on loopback by default, so simulated annotators go through real HTTP
like people do.

The access log never shows invite tokens: they are secrets in the URL.
"""

from __future__ import annotations

import copy
import errno
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from alignloop.errors import AlignloopError

_SECRET_IN_PATH = re.compile(r"(/invite/)[^/?#\s\"]+")


def redact(text: str) -> str:
    """`text` with every invite token in a URL path replaced by `[redacted]`."""
    return _SECRET_IN_PATH.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Takes invite tokens out of log records (uvicorn's access log has the path as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with `RedactTokens` on every handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), or a one-line `AlignloopError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AlignloopError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, _type, _proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AlignloopError(f"port {port} on {host} is in use; choose another with --port "
                                 f"(--port 0 picks a free one)") from None
        if exc.errno == errno.EACCES:
            raise AlignloopError(f"not allowed to listen on port {port} on {host}; use a port above 1023") from None
        raise AlignloopError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def bound_port(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://[{shown}]:{port}" if ":" in shown and not shown.startswith("[") else f"http://{shown}:{port}"


def _config(app: FastAPI, log_level: str, access_log: bool, limit_concurrency: Optional[int] = None
            ) -> uvicorn.Config:
    # Proxy headers are the app's business (WebSettings.forwarded_allow_ips), not uvicorn's.
    return uvicorn.Config(app, log_level=log_level, lifespan="off", proxy_headers=False, server_header=False,
                          access_log=access_log, log_config=log_config(), limit_concurrency=limit_concurrency,
                          backlog=1024)


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on the already bound `sock` until interrupted."""
    uvicorn.Server(_config(app, log_level, access_log=True)).run(sockets=[sock])


@contextmanager
def background(app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning",
               limit_concurrency: int | None = None, port: int = 0) -> Iterator[str]:
    """Serve `app` in a thread on `port` of `host` (0: a free one); yields the base URL, stops on exit."""
    sock = bind(host, port)
    server = uvicorn.Server(_config(app, log_level, access_log=False, limit_concurrency=limit_concurrency))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="alignloop-web")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web server did not start")
        time.sleep(0.02)
    try:
        yield url_of(host, bound_port(sock))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
