"""Passwords, tokens, login rate limiting, request size limits and security headers.

- Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).
- Session and invite tokens are 256-bit random strings; the store keeps only their SHA-256.
- Failed logins are counted per client address and per account name in a sliding
  window; past the limit the login answers 429 until the window has passed.
- Request bodies are limited by size (413) before any of them is parsed.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from alignloop.errors import DataError

_hasher = PasswordHasher()
MIN_PASSWORD = 8
# Verifying against this makes a login for an unknown name take as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """An argon2id hash of `password` (which must be at least 8 characters)."""
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise DataError(f"a password must be at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise DataError("a password must be at most 1024 characters")


def verify_password(password_hash: Optional[str], password: str) -> bool:
    """Whether `password` matches; always does the same work, known user or not."""
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


class LoginLimiter:
    """At most `max_failures` failed logins per key within `window_s` seconds.

    In memory, per process: the app runs as one uvicorn process. Successful
    logins do not count, and a success clears the account's failures.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0):
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _prune(self, key: str, now: float) -> deque[float]:
        times = self._failures[key]
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def retry_after(self, *keys: str) -> Optional[int]:
        """Seconds until a login for these keys is allowed again, or None if allowed now."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key in keys:
                times = self._prune(key, now)
                if len(times) >= self.max_failures:
                    waits.append(int(self.window_s - (now - times[0])) + 1)
            return max(waits) if waits else None

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._prune(key, now).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class BodyLimitMiddleware:
    """Answer 413 to request bodies over the limit (by Content-Length, or while streaming).

    `upload_paths` get the larger `max_upload_bytes` (the admin's file upload).
    """

    def __init__(self, app, max_body_bytes: int, max_upload_bytes: int, upload_paths: tuple[str, ...]):  # noqa: ANN001
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_upload_bytes if scope["path"] in self.upload_paths else self.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = True
                if too_big:
                    return await _too_large(send, limit)
        received = 0
        started = rejected = False

        async def limited_receive():  # noqa: ANN202
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now and tell the app the client went away; whatever it
                    # answers to that is dropped by guarded_send.
                    rejected = True
                    if not started:
                        await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):  # noqa: ANN001, ANN202
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


async def _too_large(send, limit: int) -> None:  # noqa: ANN001
    body = f'{{"detail": "request body larger than {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS = [
    # Only our own scripts and styles run; model outputs can never bring their own.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Invite links carry a token in the URL; never send it to another site.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeadersMiddleware:
    def __init__(self, app):  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        static = scope["path"].startswith("/static/")

        async def with_headers(message):  # noqa: ANN001, ANN202
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                # Pages hold people's work and tokens: never cached. Our own scripts and styles may be.
                headers.extend((n, v) for n, v in SECURITY_HEADERS
                               if n not in present and not (static and n == b"cache-control"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
