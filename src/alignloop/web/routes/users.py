"""Accounts (admins only): create users and invite links, set passwords, disable and enable accounts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.errors import AlignloopError
from alignloop.feedback.store import Conflict, NotFound, Store
from alignloop.web.bodies import Body
from alignloop.web.deps import MAX_ID, Auth, PathId, get_store, require_admin
from alignloop.web.routes.auth import user_json
from alignloop.web.security import new_token
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_admin)])


class NewUser(Body):
    name: str
    password: str
    role: str = "annotator"


class NewInvite(Body):
    role: str = "annotator"


class NewPassword(Body):
    password: str


def _create_user(request: Request, store: Store, name: str, password: str, role: str) -> int:
    name = store.check_new_name(name)
    return store.add_user(name, request.app.state.guards.hashes.hash(password, name), role=role)


def set_password(request: Request, store: Store, auth: Auth, user_id: int, password: str) -> int:
    """An admin sets someone's password (a reset): every session of theirs ends (but the admin's own
    current one, when it is their own password). Returns how many ended."""
    user = store.get_user(user_id)
    keep = auth.session_token if user.id == auth.user.id else None
    return store.change_password(user.id, request.app.state.guards.hashes.hash(password, user.name), keep)


def _set_active(store: Store, auth: Auth, user_id: int, active: bool) -> None:
    if user_id == auth.user.id and not active:
        raise Conflict("you cannot disable your own account")
    store.set_active(user_id, active)


def _invite(request: Request, store: Store, auth: Auth, role: str) -> str:
    """A new invite link, on the configured public URL (else the address this request came to,
    which the Host check has already found to be ours)."""
    token = new_token()
    store.create_invite(token, auth.user.id, role=role)
    base = request.app.state.settings.public_url or str(request.base_url).rstrip("/")
    return f"{base}/invite/{token}"


# ---- HTML ----------------------------------------------------------------------------------

def _users_page(request: Request, store: Store, status: int = 200, error: str = "", invite_url: str = "",
                notice: str = "") -> Response:
    return page(request, "admin_users.html", status_code=status, users=store.annotator_table(), error=error,
                invite_url=invite_url, notice=notice)


@router.get("/admin/users")
def users_page(request: Request, created: str = "", password_set: str = "",
               store: Store = Depends(get_store)) -> Response:
    # Ids, not names, in the URL: a link someone sends an admin cannot put its own text on this page.
    notice = ""
    for value, what in ((created, "Created"), (password_set, "New password set for")):
        if value.isascii() and value.isdigit() and 0 < int(value[:12]) <= MAX_ID:
            try:
                notice = f"{what} {store.get_user(int(value)).name}."
            except NotFound:
                pass
    return _users_page(request, store, notice=notice)


@router.post("/admin/users")
def create_user_form(request: Request, name: str = Form(""), password: str = Form(""), role: str = Form("annotator"),
                     store: Store = Depends(get_store)) -> Response:
    try:
        user_id = _create_user(request, store, name, password, role)
    except AlignloopError as exc:
        return _users_page(request, store, status=422, error=str(exc))
    return RedirectResponse(f"/admin/users?created={user_id}", status_code=303)


@router.post("/admin/users/{user_id}/password")
def password_form(request: Request, user_id: PathId, password: str = Form(""), auth: Auth = Depends(require_admin),
                  store: Store = Depends(get_store)) -> Response:
    try:
        set_password(request, store, auth, user_id, password)
    except AlignloopError as exc:
        return _users_page(request, store, status=422, error=str(exc))
    return RedirectResponse(f"/admin/users?password_set={user_id}", status_code=303)


@router.post("/admin/users/{user_id}/disable")
def disable_form(user_id: PathId, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)) -> Response:
    _set_active(store, auth, user_id, False)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{user_id}/enable")
def enable_form(user_id: PathId, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)) -> Response:
    _set_active(store, auth, user_id, True)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/invites")
def invite_form(request: Request, role: str = Form("annotator"), auth: Auth = Depends(require_admin),
                store: Store = Depends(get_store)) -> Response:
    return _users_page(request, store, invite_url=_invite(request, store, auth, role))


# ---- JSON API ------------------------------------------------------------------------------

@router.get("/api/users")
def api_users(store: Store = Depends(get_store)) -> dict[str, Any]:
    """Every account that can sign in (the authors of imported labels left out)."""
    return {"users": [user_json(u) for u in store.list_users() if u.origin != "import"]}


@router.post("/api/users", status_code=201)
def api_create_user(request: Request, body: NewUser, store: Store = Depends(get_store)) -> Response:
    user_id = _create_user(request, store, body.name, body.password, body.role)
    return JSONResponse({"user": user_json(store.get_user(user_id))}, status_code=201)


@router.post("/api/users/{user_id}/password")
def api_set_password(request: Request, user_id: PathId, body: NewPassword, auth: Auth = Depends(require_admin),
                     store: Store = Depends(get_store)) -> dict[str, Any]:
    """Set a user's password (e.g. they forgot it); all their sessions end."""
    ended = set_password(request, store, auth, user_id, body.password)
    return {"user": user_json(store.get_user(user_id)), "sessions_ended": ended}


@router.post("/api/users/{user_id}/disable")
def api_disable(user_id: PathId, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)
                ) -> dict[str, Any]:
    _set_active(store, auth, user_id, False)
    return {"user": user_json(store.get_user(user_id))}


@router.post("/api/users/{user_id}/enable")
def api_enable(user_id: PathId, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)
               ) -> dict[str, Any]:
    _set_active(store, auth, user_id, True)
    return {"user": user_json(store.get_user(user_id))}


@router.post("/api/invites", status_code=201)
def api_invite(request: Request, body: NewInvite, auth: Auth = Depends(require_admin),
               store: Store = Depends(get_store)) -> Response:
    """A single-use sign-up link (valid 7 days) for the given role."""
    return JSONResponse({"url": _invite(request, store, auth, body.role)}, status_code=201)
