"""One writer per run directory: an advisory lock that names its holder.

Two commands writing one run directory at once (two `loop`s, a `reward` while
the loop trains) would delete each other's checkpoints and interleave their
manifest updates. Every command that writes a run takes an exclusive `flock`
on the run directory itself: the kernel releases it when the holder exits,
however it exits, so a lock left by a killed process is never in the way.
While it holds the lock, the holder names itself (pid, command, start time) in
`RUN/.lock` for the message a second command prints, and removes that file
when it lets go. Nested takes by the same process (the loop calling the
stages) are counted, not re-locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from alignloop.errors import AlignloopError

LOCK_NAME = ".lock"

_held: dict[str, tuple[int, int]] = {}  # resolved run path -> (file descriptor, depth)


class RunBusy(AlignloopError):
    """Another process holds the run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} (`{info['command']}`, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def run_lock(root: Path, command: str | None = None) -> Iterator[None]:
    """Hold the lock of run directory `root` (created if missing) for the block; refuse if another process has it.

    Under a launcher only rank 0 locks: the other ranks are the same command and write nothing of their own.
    """
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    path = root / LOCK_NAME
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunBusy(f"run directory {root} is in use by {_holder(path)}; wait for it to finish or stop it, "
                      f"then rerun") from None
    _held[key] = (fd, 1)
    try:
        path.write_text(json.dumps({"pid": os.getpid(),
                                    "command": command or " ".join(["alignloop", *sys.argv[1:]])[:200],
                                    "since": time.strftime("%Y-%m-%dT%H:%M:%S")}), encoding="utf-8")
        yield
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing the descriptor releases the lock
