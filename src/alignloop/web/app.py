"""The annotation web app: `create_app(store_url)` returns a FastAPI application.

HTML pages for people (Jinja2 templates, a little plain JavaScript, no build
step) and a JSON API under /api with the same operations and the same auth,
for scripts and simulated annotators. One router per resource in `routes/`.
What guards it, and the settings below, are described in docs/security.md.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from starlette.responses import Response

from alignloop.errors import AlignloopError, ConfigError
from alignloop.feedback.store import Conflict, NotFound, Store, open_store
from alignloop.web import deps
from alignloop.web.middleware import BodyLimitMiddleware, HostGuardMiddleware, SecurityHeadersMiddleware
from alignloop.web.security import Busy, HashGate
from alignloop.web.templating import HERE
from alignloop.web.throttle import Throttle

UPLOAD_PATHS = ("/admin/items/upload", "/api/items/upload")


@dataclass
class WebSettings:
    """How the app guards itself; the defaults suit a local or reverse-proxied deployment."""

    secure_cookies: bool = False  # set when served over HTTPS (cookies then never travel in clear)
    session_hours: float = 12.0
    max_body_bytes: int = 1 << 20  # 1 MiB for forms and JSON
    max_upload_bytes: int = 32 << 20  # 32 MiB for the admin's file upload
    # Sign-in: per (address, name), `login_free_failures` failures cost nothing, then each attempt waits
    # login_delay_s * 2**k (at most login_max_delay_s); one address may fail `address_free_failures`
    # times over all names before its own waits start. Failures are forgotten after `throttle_forget_s`.
    login_free_failures: int = 5
    address_free_failures: int = 50
    login_delay_s: float = 1.0
    login_max_delay_s: float = 300.0
    throttle_forget_s: float = 900.0
    throttle_max_keys: int = 10_000
    # Invite sign-ups: failed attempts per address and per invite link, the same growing waits.
    invite_free_failures: int = 5
    # Password hashes (argon2: 64 MiB and ~0.1 s each) running at once; others wait this long, then 503.
    hash_slots: int = 2
    hash_wait_s: float = 10.0
    # Where people reach the app (https://annotate.example.org/): invite links use it, and its host is
    # accepted in the Host header besides IP addresses, localhost and this machine's name.
    public_url: Optional[str] = None
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    # Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed ("*": any).
    forwarded_allow_ips: Optional[str] = None

    def __post_init__(self) -> None:
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ConfigError(f"public URL {self.public_url!r} must look like https://HOST[:PORT][/PATH]")
            self.public_url = self.public_url.rstrip("/")

    def host_names(self) -> set[str]:
        """Host names accepted in the Host header (IP addresses always are)."""
        names = {"localhost", socket.gethostname(), *self.allowed_hosts}
        if self.public_url:
            names.add(urlsplit(self.public_url).hostname or "")
        return {n for n in names if n}


@dataclass
class Guards:
    """The app's in-memory throttle (sign-ins and invite sign-ups) and its password-hashing gate."""

    throttle: Throttle
    hashes: HashGate

    @classmethod
    def from_settings(cls, s: WebSettings) -> "Guards":
        return cls(Throttle(s.login_delay_s, s.login_max_delay_s, s.throttle_forget_s, s.throttle_max_keys),
                   HashGate(s.hash_slots, s.hash_wait_s))


def create_app(store: Union[str, Path, Store], settings: WebSettings | None = None) -> FastAPI:
    """The app for the feedback store at `store` (a path, a database URL, or an open `Store`)."""
    from alignloop.web.routes import auth, docs, export, items, queue, stats, users
    from alignloop.web.routes import settings as settings_routes

    settings = settings or WebSettings()
    opened = store if isinstance(store, Store) else open_store(store)
    app = FastAPI(title="alignloop feedback", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(deps.csrf_protect)])
    app.state.store = opened
    app.state.settings = settings
    app.state.guards = Guards.from_settings(settings)

    admin_routers = (users.router, items.router, settings_routes.router, stats.router, export.router, docs.router)
    for router in (auth.router, queue.router, *admin_routers):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    _add_error_handlers(app)
    admin_paths = [re.compile(route.path_regex.pattern) for router in admin_routers for route in router.routes]
    # Outermost last: proxy headers first, then headers on every answer, the Host check,
    # the size limit, and the session gate.
    app.add_middleware(deps.AuthGate, store=opened, admin_paths=admin_paths)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(HostGuardMiddleware, names=settings.host_names())
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.forwarded_allow_ips:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(deps.NotSignedIn)
    async def not_signed_in(request: Request, _exc: deps.NotSignedIn) -> Response:
        if deps.is_api(request.url.path):
            return deps.error_response(request, 401, "not signed in")
        return deps.login_redirect(request.url.path)

    @app.exception_handler(deps.Forbidden)
    async def forbidden(request: Request, exc: deps.Forbidden) -> Response:
        return deps.error_response(request, 403, exc.detail)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return deps.error_response(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> Response:
        return deps.error_response(request, 409, str(exc))

    @app.exception_handler(AlignloopError)
    async def bad_input(request: Request, exc: AlignloopError) -> Response:
        return deps.error_response(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own answer echoes the input: passwords, and text that may not even be encodable.
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return deps.error_response(request, 422, "; ".join(problems) or "invalid request")

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> Response:
        return deps.error_response(request, 503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, _exc: OperationalError) -> Response:
        return deps.database_down(request)
