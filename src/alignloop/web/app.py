"""The annotation web app: `create_app(store_url)` returns a FastAPI application.

HTML pages for people (Jinja2 templates, a little plain JavaScript, no build
step) and a JSON API under /api with the same operations and the same auth,
for scripts and simulated annotators. One router per resource in `routes/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from fastapi import Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import JSONResponse, Response

from alignloop.errors import AlignloopError
from alignloop.feedback.store import Conflict, NotFound, Store, open_store
from alignloop.web import deps
from alignloop.web.security import BodyLimitMiddleware, LoginLimiter, SecurityHeadersMiddleware
from alignloop.web.templating import HERE, page

UPLOAD_PATHS = ("/admin/items/upload", "/api/items/upload")


@dataclass
class WebSettings:
    """How the app guards itself; the defaults suit a local or reverse-proxied deployment."""

    secure_cookies: bool = False  # set when served over HTTPS (cookies then never travel in clear)
    session_hours: float = 12.0
    max_body_bytes: int = 1 << 20  # 1 MiB for forms and JSON
    max_upload_bytes: int = 32 << 20  # 32 MiB for the admin's file upload
    login_max_failures: int = 5
    login_window_s: float = 300.0


def create_app(store: Union[str, Path, Store], settings: WebSettings | None = None) -> FastAPI:
    """The app for the feedback store at `store` (a path, a database URL, or an open `Store`)."""
    from alignloop.web.routes import auth, export, items, queue, stats, users
    from alignloop.web.routes import settings as settings_routes

    settings = settings or WebSettings()
    opened = store if isinstance(store, Store) else open_store(store)
    app = FastAPI(title="alignloop feedback", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(deps.csrf_protect)])
    app.state.store = opened
    app.state.settings = settings
    app.state.limiter = LoginLimiter(settings.login_max_failures, settings.login_window_s)

    for module in (auth, queue, users, items, settings_routes, stats, export):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    _add_error_handlers(app)
    # Outermost first: headers on every answer, then the size limit, then the session gate.
    app.add_middleware(deps.AuthGate, store=opened)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _error(request: Request, status: int, detail: str) -> Response:
    if deps.is_api(request.url.path):
        return JSONResponse({"detail": detail}, status_code=status)
    return page(request, "error.html", status_code=status, status=status, detail=detail)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(deps.NotSignedIn)
    async def not_signed_in(request: Request, _exc: deps.NotSignedIn) -> Response:
        if deps.is_api(request.url.path):
            return JSONResponse({"detail": "not signed in"}, status_code=401)
        return deps.login_redirect(request.url.path)

    @app.exception_handler(deps.Forbidden)
    async def forbidden(request: Request, exc: deps.Forbidden) -> Response:
        return _error(request, 403, exc.detail)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> Response:
        return _error(request, 409, str(exc))

    @app.exception_handler(AlignloopError)
    async def bad_input(request: Request, exc: AlignloopError) -> Response:
        return _error(request, 422, str(exc))
