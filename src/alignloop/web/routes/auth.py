"""Signing in and out (HTML and API), invite sign-up, and the landing redirect."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.feedback.store import Store, UserInfo
from alignloop.web.deps import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Auth, get_store, optional_auth, require_user
from alignloop.web.security import hash_password, needs_rehash, new_token, verify_password
from alignloop.web.templating import page

router = APIRouter()


class LoginBody(BaseModel):
    name: str
    password: str


class Refused(Exception):
    def __init__(self, status: int, detail: str, retry_after: Optional[int] = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


def _sign_in(request: Request, name: str, password: str) -> tuple[UserInfo, str, str]:
    """Check the password (rate-limited); returns (user, session token, CSRF token)."""
    store: Store = request.app.state.store
    limiter = request.app.state.limiter
    client = request.client.host if request.client else "unknown"
    keys = (f"ip:{client}", f"name:{name.strip().lower()[:100]}")
    wait = limiter.retry_after(*keys)
    if wait is not None:
        raise Refused(429, f"too many failed sign-ins; try again in {wait} s", wait)
    user = store.user_by_name(name.strip()) if name.strip() else None
    valid = verify_password(user.password_hash if user else None, password[:1024])
    if not valid or user is None or not user.active:
        limiter.failed(*keys)
        raise Refused(401, "wrong name or password, or the account is disabled")
    limiter.succeeded(keys[1])
    if needs_rehash(user.password_hash):
        store.set_password_hash(user.id, hash_password(password))
    token, csrf = new_token(), new_token()
    store.create_session(user.id, token, csrf, timedelta(hours=request.app.state.settings.session_hours))
    return user, token, csrf


def _set_session_cookie(request: Request, response: Response, token: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_hours * 3600), httponly=True,
                        samesite="lax", secure=settings.secure_cookies, path="/")


def _login_csrf(request: Request) -> str:
    """The pre-session CSRF token: kept while the browser has one, so two open tabs both work."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return current if 32 <= len(current) <= 64 and current.replace("-", "").replace("_", "").isalnum() \
        else new_token()


def _with_login_csrf(request: Request, response: Response, token: str) -> Response:
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.app.state.settings.secure_cookies, path="/")
    return response


def _login_page(request: Request, status: int = 200, error: str = "", next_path: str = "/",
                message: str = "") -> Response:
    token = _login_csrf(request)
    response = page(request, "login.html", status_code=status, csrf_token=token, error=error,
                    next_path=next_path, message=message)
    return _with_login_csrf(request, response, token)


def _local(path: Optional[str]) -> str:
    """Only redirect within this site after signing in."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def user_json(user: UserInfo) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "role": user.role, "active": user.active, "origin": user.origin}


# ---- HTML --------------------------------------------------------------------------------

@router.get("/")
def home(auth: Auth = Depends(require_user)) -> Response:
    return RedirectResponse("/admin" if auth.user.is_admin else "/queue", status_code=303)


@router.get("/login")
def login_form(request: Request, next: str = "/", invited: int = 0) -> Response:  # noqa: A002
    if optional_auth(request) is not None:
        return RedirectResponse(_local(next), status_code=303)
    message = "Your account is ready: sign in." if invited else ""
    return _login_page(request, next_path=_local(next), message=message)


@router.post("/login")
def login(request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")) -> Response:  # noqa: A002
    try:
        user, token, _csrf = _sign_in(request, name, password)
    except Refused as refused:
        response = _login_page(request, refused.status, refused.detail, _local(next))
        if refused.retry_after:
            response.headers["Retry-After"] = str(refused.retry_after)
        return response
    target = _local(next)
    if target == "/":
        target = "/admin" if user.is_admin else "/queue"
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(request, response, token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    store.delete_session(auth.session_token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/invite/{token}")
def invite_form(request: Request, token: str, store: Store = Depends(get_store)) -> Response:
    if not store.invite_valid(token):
        return page(request, "error.html", status_code=404, status=404,
                    detail="This invite link is unknown, already used or expired.")
    csrf = _login_csrf(request)
    return _with_login_csrf(request, page(request, "invite.html", csrf_token=csrf, token=token, error=""), csrf)


@router.post("/invite/{token}")
def invite_accept(request: Request, token: str, name: str = Form(""), password: str = Form(""),
                  password2: str = Form(""), store: Store = Depends(get_store)) -> Response:
    from alignloop.errors import AlignloopError

    try:
        if password != password2:
            raise AlignloopError("the two passwords differ")
        store.accept_invite(token, name, hash_password(password))
    except AlignloopError as exc:
        csrf = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        return page(request, "invite.html", status_code=422, csrf_token=csrf, token=token, error=str(exc))
    return RedirectResponse("/login?invited=1", status_code=303)


# ---- JSON API ------------------------------------------------------------------------------

@router.post("/api/login")
def api_login(request: Request, body: LoginBody) -> Response:
    try:
        user, token, csrf = _sign_in(request, body.name, body.password)
    except Refused as refused:
        headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
        return JSONResponse({"detail": refused.detail}, status_code=refused.status, headers=headers)
    response = JSONResponse({"user": user_json(user), "csrf_token": csrf})
    _set_session_cookie(request, response, token)
    return response


@router.post("/api/logout")
def api_logout(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    store.delete_session(auth.session_token)
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/api/me")
async def api_me(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, Any]:
    progress = await run_in_threadpool(store.progress, auth.user.id)
    return {"user": user_json(auth.user), "csrf_token": auth.csrf_token,
            "progress": {"done": progress.done, "skipped": progress.skipped, "remaining": progress.remaining}}
