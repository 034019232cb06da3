"""Passwords and tokens: hashing, the password policy, and a cap on concurrent hashing.

- Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory
  profile: 64 MiB and about 0.1 s of one core per hash or check).
- The policy: 8-1024 characters, not one of the most common leaked passwords (a
  short list shipped with the package), and 8 characters besides the account's
  name (`ann12345` is refused for `ann`, `Joanna's secret` is not).
- `HashGate` lets at most a few hashes run at once, so that a flood of sign-in or
  sign-up requests queues (then gets 503) instead of taking the memory and CPU of
  the whole server.
- Session and invite tokens are 256-bit random strings; the store keeps only their SHA-256.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from alignloop.errors import DataError
from alignloop.feedback.names import name_key
from alignloop.feedback.text import lone_surrogate_at

_hasher = PasswordHasher()
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
# Verifying against this makes a login for an unknown name take as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent / "common_passwords.txt"


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, case-folded."""
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().casefold() for line in lines if line.strip() and not line.startswith("#"))


def check_password(password: object, name: Optional[str] = None) -> None:
    """Raise a one-line `DataError` unless `password` meets the policy (for the account `name`, if given)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise DataError(f"a password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise DataError(f"a password must be at most {MAX_PASSWORD} characters")
    if lone_surrogate_at(password):
        raise DataError("a password must be valid Unicode text")
    if password.strip().casefold() in common_passwords():
        raise DataError("that password is one of the most common ones; choose another")
    if name and name.strip():
        if len(name_key(password).replace(name_key(name.strip()), "")) < MIN_PASSWORD:
            raise DataError(f"a password needs {MIN_PASSWORD} characters besides the account's name")


def hash_password(password: str, name: Optional[str] = None) -> str:
    """An argon2id hash of `password`, which must meet the policy (`check_password`)."""
    check_password(password, name)
    return _hasher.hash(password)


def verify_password(password_hash: Optional[str], password: str) -> bool:
    """Whether `password` matches; always does the same work, known user or not."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD or lone_surrogate_at(password):
        password = ""  # cannot match any hash we made; still costs one check below
    try:
        if not password_hash:
            _hasher.verify(_DUMMY_HASH, password + "x")
            return False
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(a: Optional[str], b: Optional[str]) -> bool:
    """Constant-time comparison of two tokens (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


class Busy(Exception):
    """No hashing slot came free in time: the server answers 503 with Retry-After."""

    def __init__(self, retry_after: int):
        super().__init__("the server is busy checking passwords; try again in a few seconds")
        self.retry_after = retry_after


class HashGate:
    """At most `slots` password hashes or checks at once; others wait up to `wait_s`, then `Busy`.

    `peak` is the most that ever ran at once (the tests read it).
    """

    def __init__(self, slots: int = 2, wait_s: float = 10.0):
        self.slots = slots
        self.wait_s = wait_s
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.total = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._semaphore.acquire(timeout=self.wait_s):
            raise Busy(retry_after=max(1, int(self.wait_s)))
        with self._lock:
            self.running += 1
            self.total += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._semaphore.release()

    def hash(self, password: str, name: Optional[str] = None, policy: bool = True) -> str:
        """`hash_password` in a slot (the policy, unless `policy` is False, checked first, outside it).

        `policy=False` only re-hashes a password already accepted (argon2 parameters upgraded)."""
        if policy:
            check_password(password, name)
        with self.slot():
            return _hasher.hash(password)

    def verify(self, password_hash: Optional[str], password: str) -> bool:
        """`verify_password` in a slot."""
        with self.slot():
            return verify_password(password_hash, password)
