"""Throttling failed attempts (sign-ins, invite sign-ups) with growing waits, in bounded memory.

A key (say "this address, this account name") may fail `free` times for
nothing (each key brings its own `free`); after that each attempt must wait `delay_s * 2 ** (failures - free)`
seconds (at most `max_delay_s`) after the key's last failure. Nothing is ever
locked for good: the right password from another address is not slowed by
someone else's failures, and a key is forgotten `forget_s` after its last
failure.

An attempt is counted when it starts (`reserve`), before the slow password
check, under one lock: a burst sent all at once is counted exactly as if the
same attempts had come one after another. A success gives its count back
(`release`) or wipes the key (`clear`).

In memory, per process (the app runs as one uvicorn process), holding at most
`max_keys` keys: past that the key that failed longest ago is dropped, so
guessing many names cannot grow the server's memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Optional


def wait_after(failures: int, free: int, delay_s: float, max_delay_s: float) -> float:
    """Seconds a key must wait after its last failure once it has `failures` of them."""
    if failures < free:
        return 0.0
    return min(max_delay_s, delay_s * 2.0 ** min(failures - free, 64))


class Throttle:
    def __init__(self, delay_s: float = 1.0, max_delay_s: float = 300.0, forget_s: float = 900.0,
                 max_keys: int = 10_000):
        self.delay_s, self.max_delay_s = delay_s, max_delay_s
        self.forget_s, self.max_keys = forget_s, max_keys
        # key -> [failures, monotonic time of the last one, free failures], least recently failed first
        self._keys: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def _live(self, key: str, now: float) -> Optional[list]:
        entry = self._keys.get(key)
        if entry is not None:
            waited = now - entry[1]
            if waited >= max(self.forget_s, self._pause(entry)):
                del self._keys[key]
                return None
        return entry

    def _pause(self, entry: list) -> float:
        return wait_after(entry[0], entry[2], self.delay_s, self.max_delay_s)

    def reserve(self, limits: dict[str, int]) -> Optional[int]:
        """Count one attempt against every key of `limits` ({key: free failures}) and return None, or
        return the whole seconds to wait (counting nothing) when any key must still wait."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key in limits:
                entry = self._live(key, now)
                if entry is not None:
                    wait = max(wait, entry[1] + self._pause(entry) - now)
            if wait > 0:
                return max(1, math.ceil(wait))
            for key, free in limits.items():
                entry = self._keys.pop(key, None) or [0, now, free]
                entry[0] += 1
                entry[1] = now
                self._keys[key] = entry  # now the most recent
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return None

    def release(self, *keys: str) -> None:
        """Give back one attempt of each key (it turned out not to be a failure)."""
        with self._lock:
            for key in keys:
                entry = self._keys.get(key)
                if entry is not None:
                    entry[0] -= 1
                    if entry[0] <= 0:
                        del self._keys[key]

    def clear(self, *keys: str) -> None:
        """Forget every failure of these keys."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)
