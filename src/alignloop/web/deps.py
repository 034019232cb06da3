"""What every route depends on: the store, the signed-in user, their role, and the CSRF check.

Deny by default: `AuthGate` (an ASGI middleware) resolves the session cookie
once per request and turns away every request without a valid session except
to the few public paths (login, invite sign-up, static files), with 401 for
the JSON API and a redirect to the login page for HTML; it also answers 403 to
a non-admin on an admin route before a byte of the body is read (uploads may
be large). Routers then require a role (`require_user`, `require_admin`), and
`csrf_protect`, applied to the whole app, checks a CSRF token on every
state-changing request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Optional
from urllib.parse import quote

import anyio.to_thread
from fastapi import Depends, Path, Request
from sqlalchemy.exc import OperationalError
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.errors import DataError
from alignloop.feedback.store import Store, UserInfo
from alignloop.web.security import same_token
from alignloop.web.templating import page

SESSION_COOKIE = "alignloop_session"
LOGIN_CSRF_COOKIE = "alignloop_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
PUBLIC_PATHS = frozenset({"/login", "/api/login", "/healthz", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/invite/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Ids are INTEGER columns: 32-bit on PostgreSQL. A larger one could only ever be "not found",
# and would overflow the database driver on the way there.
MAX_ID = 2**31 - 1
PathId = Annotated[int, Path(ge=1, le=MAX_ID, description="a row id")]


@dataclass(frozen=True)
class Auth:
    user: UserInfo
    csrf_token: str
    session_token: str


class NotSignedIn(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, detail: str = "forbidden"):
        super().__init__(detail)
        self.detail = detail


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def round_number(value: str) -> Optional[int]:
    """A round number from a form or query field (blank: none); only ASCII digits count."""
    text = (value or "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise DataError("round must be a whole number")
    return int(text)


def client_address(request: Request) -> str:
    """The client's address: the peer's, or the one a trusted proxy forwarded (`--forwarded-allow-ips`)."""
    return request.client.host if request.client else "unknown"


def login_redirect(path: str) -> RedirectResponse:
    target = "/login" if path in ("/", "/logout") else f"/login?next={quote(path, safe='/')}"
    return RedirectResponse(target, status_code=303)


class AuthGate:
    """Resolve the session cookie into `request.state.auth`; refuse non-public paths without one,
    and admin paths (matched by `admin_paths`) to anyone but an admin."""

    def __init__(self, app, store: Store, admin_paths: Sequence[re.Pattern] = ()):  # noqa: ANN001
        self.app = app
        self.store = store
        self.admin_paths = tuple(admin_paths)

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = HTTPConnection(scope).cookies.get(SESSION_COOKIE)
        auth = None
        if token and len(token) < 200:
            try:
                found = await anyio.to_thread.run_sync(self.store.session_user, token)
            except OperationalError:
                return await database_down(Request(scope))(scope, receive, send)
            if found is not None:
                auth = Auth(user=found[0], csrf_token=found[1], session_token=token)
        scope.setdefault("state", {})["auth"] = auth
        path = scope["path"]
        if auth is None and not is_public(path):
            if is_api(path):
                response = JSONResponse({"detail": "not signed in"}, status_code=401,
                                        headers={"WWW-Authenticate": "Cookie"})
            else:
                response = login_redirect(path)
            return await response(scope, receive, send)
        if auth is not None and not auth.user.is_admin and any(p.match(path) for p in self.admin_paths):
            return await error_response(Request(scope), 403, "admins only")(scope, receive, send)
        await self.app(scope, receive, send)


def database_down(request: Request) -> Response:
    """503 while the database cannot be reached (restarting, or SQLite's write lock held too long by
    another process): nothing was stored, and the client may simply retry."""
    return error_response(request, 503, "the database is unavailable; try again shortly", {"Retry-After": "2"})


def error_response(request: Request, status: int, detail: str, headers: Optional[dict[str, str]] = None) -> Response:
    """An error as JSON for the API, as the error page for people."""
    if is_api(request.url.path):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    response = page(request, "error.html", status_code=status, status=status, detail=detail)
    response.headers.update(headers or {})
    return response


def get_store(request: Request) -> Store:
    return request.app.state.store


def optional_auth(request: Request) -> Optional[Auth]:
    return getattr(request.state, "auth", None)


def require_user(request: Request) -> Auth:
    """Any signed-in, active account (annotators and admins both annotate)."""
    auth = optional_auth(request)
    if auth is None:
        raise NotSignedIn()
    return auth


def require_admin(auth: Auth = Depends(require_user)) -> Auth:
    if not auth.user.is_admin:
        raise Forbidden("admins only")
    return auth


async def _submitted_token(request: Request) -> Optional[str]:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def csrf_protect(request: Request) -> None:
    """Applied to every route: state-changing requests must prove they come from our own pages.

    Signed in: the session's CSRF token, in the `X-CSRF-Token` header (API) or
    the `csrf_token` form field (HTML). Signing in: the JSON API requires a JSON
    body (which a cross-site form cannot send); the HTML forms carry the token
    that is also in a SameSite=Strict cookie (double submit).
    """
    if request.method in SAFE_METHODS:
        return
    path = request.url.path
    auth = optional_auth(request)
    if path == "/api/login":
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise Forbidden("sign in through the API with a JSON body")
        return
    if auth is None or path == "/login" or path.startswith("/invite/"):
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    else:
        expected = auth.csrf_token
    if not same_token(await _submitted_token(request), expected):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")
