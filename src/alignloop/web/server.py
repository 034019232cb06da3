"""Running the app with uvicorn: in the foreground (`alignloop serve`) or in a background thread.

The background server (used by `alignloop annotate --simulated`, the browser
tests and the load benchmark) listens on loopback on a port the OS picks, so
the simulated annotators go through real HTTP like people do.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="off", proxy_headers=False,
                server_header=False)


@contextmanager
def background(app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning",
               limit_concurrency: int | None = None, port: int = 0) -> Iterator[str]:
    """Serve `app` in a thread on `port` of `host` (0: a free one); yields the base URL, stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, lifespan="off", server_header=False, access_log=False,
                            limit_concurrency=limit_concurrency, backlog=1024)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="alignloop-web")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
