"""ASGI middleware that guards every request: Host check, body size limit, security headers.

- `HostGuardMiddleware`: 400 for a Host header that is not ours (DNS rebinding).
- `BodyLimitMiddleware`: 413 for a request body over the limit, before any of it is parsed.
- `SecurityHeadersMiddleware`: CSP, no-sniff, no framing, no caching on every answer,
  500s included.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from starlette._utils import parse_host_header
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class HostGuardMiddleware:
    """Answer 400 unless the Host header names this server.

    Accepted: any IP address (DNS rebinding needs a domain name the attacker
    controls, so an address can never be one) and the names in `names`
    (localhost, this machine's name, the public URL's host; see `WebSettings`).
    """

    def __init__(self, app, names: Iterable[str]):  # noqa: ANN001
        self.app = app
        self.names = frozenset(name.lower().rstrip(".") for name in names)

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        parsed = parse_host_header(Headers(scope=scope).get("host"))
        host = parsed.host.lower().rstrip(".") if parsed is not None else ""
        if not host or not (host in self.names or is_ip_literal(host)):
            response = PlainTextResponse("unknown Host header; use the server's configured address "
                                         "(alignloop serve --public-url)", status_code=400)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


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


def add_security_headers(headers: list[tuple[bytes, bytes]], static: bool = False) -> list[tuple[bytes, bytes]]:
    """`headers` plus those of SECURITY_HEADERS it lacks (static files may be cached)."""
    present = {name.lower() for name, _ in headers}
    # Pages hold people's work and tokens: never cached. Our own scripts and styles may be.
    return headers + [(n, v) for n, v in SECURITY_HEADERS if n not in present and not (static and n == b"cache-control")]


class SecurityHeadersMiddleware:
    """The security headers on every answer; an unhandled error becomes a 500 that has them too.

    (Starlette's own 500 is sent from outside every middleware, without them.)
    """

    def __init__(self, app):  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        static = scope["path"].startswith("/static/")
        started = False

        async def with_headers(message):  # noqa: ANN001, ANN202
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": add_security_headers(list(message.get("headers", [])), static)}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            if not started:
                body = json.dumps({"detail": "internal server error"}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 500, "headers": add_security_headers(headers)})
                await send({"type": "http.response.body", "body": body})
            raise  # still logged with its traceback by the server
