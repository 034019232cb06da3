"""Signing in and out (HTML and API), invite sign-up, changing one's password, and the landing redirect.

Every password check goes through the app's guards (`app.Guards`): the
attempt is counted by the throttle before the slow argon2 check, per
(address, name) and per address, and the check runs in one of a few hashing
slots. Invite sign-ups are throttled per address and per invite link.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.errors import DataError
from alignloop.feedback.names import name_key
from alignloop.feedback.store import Conflict, NotFound, Store, UserInfo, token_digest
from alignloop.web.bodies import Body
from alignloop.web.deps import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Auth,
    client_address,
    get_store,
    optional_auth,
    require_user,
)
from alignloop.web.security import Busy, needs_rehash, new_token
from alignloop.web.templating import page

router = APIRouter()

# Said for a sign-up name that is taken (or a look-alike of one): saying which would make a
# valid invite an oracle of the names that exist.
NAME_REFUSED = "that name cannot be used; choose another"
WRONG_PASSWORD = "wrong name or password, or the account is disabled"


class LoginBody(Body):
    name: str
    password: str


class PasswordChange(Body):
    current_password: str
    new_password: str


class Refused(Exception):
    def __init__(self, status: int, detail: str, retry_after: Optional[int] = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


def _reserve(request: Request, limits: dict[str, int]) -> None:
    """Count an attempt against the throttle's keys, or raise `Refused` (429) while a wait is due."""
    wait = request.app.state.guards.throttle.reserve(limits)
    if wait is not None:
        raise Refused(429, f"too many failed attempts; try again in {wait} s", wait)


def password_matches(request: Request, user: Optional[UserInfo], name: str, password: str) -> bool:
    """Whether `password` is that of `user` (None: an unknown name) and the account is active; throttled."""
    guards, settings = request.app.state.guards, request.app.state.settings
    address = client_address(request)
    pair, spray = f"login:{address}\n{name_key(name.strip()[:200])}", f"login-address:{address}"
    _reserve(request, {pair: settings.login_free_failures, spray: settings.address_free_failures})
    try:
        valid = guards.hashes.verify(user.password_hash if user else None, password)
    except Busy:
        guards.throttle.release(pair, spray)  # not checked, so not a failure
        raise
    if valid and user is not None and user.active:
        guards.throttle.clear(pair)
        guards.throttle.release(spray)
        return True
    return False


def _sign_in(request: Request, name: str, password: str) -> tuple[UserInfo, str, str]:
    """Check the password; returns (user, session token, CSRF token)."""
    store: Store = request.app.state.store
    user = store.user_by_name(name.strip()) if name.strip() else None
    if not password_matches(request, user, name, password):
        raise Refused(401, WRONG_PASSWORD)
    if needs_rehash(user.password_hash):
        store.set_password_hash(user.id, request.app.state.guards.hashes.hash(password, policy=False))
    token, csrf = new_token(), new_token()
    store.create_session(user.id, token, csrf, timedelta(hours=request.app.state.settings.session_hours))
    return user, token, csrf


def change_own_password(request: Request, auth: Auth, current: str, new: str) -> int:
    """Change the signed-in user's password; their other sessions end. Returns how many ended."""
    store: Store = request.app.state.store
    user = store.get_user(auth.user.id)
    if not password_matches(request, user, user.name, current):
        raise Refused(403, "the current password is wrong")
    if new == current:
        raise DataError("the new password is the current one")
    password_hash = request.app.state.guards.hashes.hash(new, user.name)
    return store.change_password(user.id, password_hash, keep_session=auth.session_token)


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
        response.headers.update(refused.headers())
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


def _invite_page(request: Request, token: str, status: int = 200, error: str = "",
                 headers: Optional[dict[str, str]] = None) -> Response:
    csrf = _login_csrf(request)
    response = page(request, "invite.html", status_code=status, csrf_token=csrf, token=token, error=error)
    response.headers.update(headers or {})
    return _with_login_csrf(request, response, csrf)


def _invite_gone(request: Request) -> Response:
    return page(request, "error.html", status_code=404, status=404,
                detail="This invite link is unknown, already used or expired.")


@router.get("/invite/{token}")
def invite_form(request: Request, token: str, store: Store = Depends(get_store)) -> Response:
    if len(token) > 200 or not store.invite_valid(token):
        return _invite_gone(request)
    return _invite_page(request, token)


@router.post("/invite/{token}")
def invite_accept(request: Request, token: str, name: str = Form(""), password: str = Form(""),
                  password2: str = Form(""), store: Store = Depends(get_store)) -> Response:
    """Create the invited account. Cheap checks first: the link, the name, the policy; argon2 last."""
    settings, guards = request.app.state.settings, request.app.state.guards
    address_key, link_key = f"invite-address:{client_address(request)}", f"invite:{token_digest(token[:200])}"
    try:
        _reserve(request, {address_key: settings.invite_free_failures, link_key: settings.invite_free_failures})
    except Refused as refused:
        return _invite_page(request, token, refused.status, refused.detail, refused.headers())
    if len(token) > 200 or not store.invite_valid(token):
        return _invite_gone(request)
    try:
        if password != password2:
            raise DataError("the two passwords differ")
        try:
            name = store.check_new_name(name)
            password_hash = guards.hashes.hash(password, name)
            store.accept_invite(token, name, password_hash)
        except Conflict:
            raise DataError(NAME_REFUSED) from None
    except NotFound:
        return _invite_gone(request)
    except DataError as exc:
        return _invite_page(request, token, 422, str(exc))
    except Busy as busy:
        guards.throttle.release(address_key, link_key)
        return _invite_page(request, token, 503, str(busy), {"Retry-After": str(busy.retry_after)})
    guards.throttle.release(address_key)
    return RedirectResponse("/login?invited=1", status_code=303)


@router.get("/account")
def account_page(request: Request, changed: int = 0, auth: Auth = Depends(require_user)) -> Response:
    return page(request, "account.html", error="", changed=bool(changed))


@router.post("/account/password")
def account_password(request: Request, current_password: str = Form(""), new_password: str = Form(""),
                     new_password2: str = Form(""), auth: Auth = Depends(require_user)) -> Response:
    try:
        if new_password != new_password2:
            raise DataError("the two new passwords differ")
        change_own_password(request, auth, current_password, new_password)
    except Refused as refused:
        response = page(request, "account.html", status_code=refused.status, error=refused.detail, changed=False)
        response.headers.update(refused.headers())
        return response
    except DataError as exc:
        return page(request, "account.html", status_code=422, error=str(exc), changed=False)
    return RedirectResponse("/account?changed=1", status_code=303)


# ---- JSON API ------------------------------------------------------------------------------

@router.post("/api/login")
def api_login(request: Request, body: LoginBody) -> Response:
    """Sign in; answers the user and the CSRF token to send as `X-CSRF-Token`, and sets the session cookie."""
    try:
        user, token, csrf = _sign_in(request, body.name, body.password)
    except Refused as refused:
        return JSONResponse({"detail": refused.detail}, status_code=refused.status, headers=refused.headers())
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
def api_me(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, Any]:
    progress = store.progress(auth.user.id)
    return {"user": user_json(auth.user), "csrf_token": auth.csrf_token,
            "progress": {"done": progress.done, "skipped": progress.skipped, "remaining": progress.remaining}}


@router.post("/api/me/password")
def api_change_password(request: Request, body: PasswordChange, auth: Auth = Depends(require_user)) -> Response:
    """Change your own password; every other session of yours is signed out."""
    try:
        ended = change_own_password(request, auth, body.current_password, body.new_password)
    except Refused as refused:
        return JSONResponse({"detail": refused.detail}, status_code=refused.status, headers=refused.headers())
    return JSONResponse({"changed": True, "other_sessions_ended": ended})
