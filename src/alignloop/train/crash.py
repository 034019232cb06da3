"""Deterministic crash points, so tests can `kill -9` a stage at an exact moment.

Setting `ALIGNLOOP_CRASH_AT=NAME` makes the process kill itself with SIGKILL when
it reaches `crash_point(NAME)`: nothing is flushed or cleaned up, exactly as if
the machine had died there. Unset (always, outside tests), it costs nothing.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """Die here, uncleanly, if the environment asks for it."""
    if os.environ.get("ALIGNLOOP_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
