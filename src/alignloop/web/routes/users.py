"""Accounts (admins only): create users and invite links, disable and enable annotators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.errors import AlignloopError
from alignloop.feedback.store import Conflict, Store
from alignloop.web.deps import Auth, get_store, require_admin
from alignloop.web.routes.auth import user_json
from alignloop.web.security import hash_password, new_token
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_admin)])


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    password: str
    role: str = "annotator"


class NewInvite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = "annotator"


def _create_user(store: Store, name: str, password: str, role: str) -> int:
    return store.add_user(name, hash_password(password), role=role)


def _set_active(store: Store, auth: Auth, user_id: int, active: bool) -> None:
    if user_id == auth.user.id and not active:
        raise Conflict("you cannot disable your own account")
    store.set_active(user_id, active)


def _invite(request: Request, store: Store, auth: Auth, role: str) -> str:
    token = new_token()
    store.create_invite(token, auth.user.id, role=role)
    return str(request.base_url).rstrip("/") + f"/invite/{token}"


# ---- HTML ----------------------------------------------------------------------------------

def _users_page(request: Request, store: Store, status: int = 200, error: str = "", invite_url: str = "",
                created: str = "") -> Response:
    return page(request, "admin_users.html", status_code=status, users=store.annotator_table(), error=error,
                invite_url=invite_url, created=created)


@router.get("/admin/users")
def users_page(request: Request, created: str = "", store: Store = Depends(get_store)) -> Response:
    return _users_page(request, store, created=created)


@router.post("/admin/users")
def create_user_form(request: Request, name: str = Form(""), password: str = Form(""), role: str = Form("annotator"),
                     store: Store = Depends(get_store)) -> Response:
    try:
        _create_user(store, name, password, role)
    except AlignloopError as exc:
        return _users_page(request, store, status=422, error=str(exc))
    return RedirectResponse(f"/admin/users?created={name.strip()}", status_code=303)


@router.post("/admin/users/{user_id}/disable")
def disable_form(user_id: int, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)) -> Response:
    _set_active(store, auth, user_id, False)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{user_id}/enable")
def enable_form(user_id: int, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)) -> Response:
    _set_active(store, auth, user_id, True)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/invites")
def invite_form(request: Request, role: str = Form("annotator"), auth: Auth = Depends(require_admin),
                store: Store = Depends(get_store)) -> Response:
    return _users_page(request, store, invite_url=_invite(request, store, auth, role))


# ---- JSON API ------------------------------------------------------------------------------

@router.get("/api/users")
def api_users(store: Store = Depends(get_store)) -> dict[str, Any]:
    return {"users": [user_json(u) for u in store.list_users() if u.origin != "import"]}


@router.post("/api/users", status_code=201)
def api_create_user(body: NewUser, store: Store = Depends(get_store)) -> Response:
    user_id = _create_user(store, body.name, body.password, body.role)
    return JSONResponse({"user": user_json(store.get_user(user_id))}, status_code=201)


@router.post("/api/users/{user_id}/disable")
def api_disable(user_id: int, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)
                ) -> dict[str, Any]:
    _set_active(store, auth, user_id, False)
    return {"user": user_json(store.get_user(user_id))}


@router.post("/api/users/{user_id}/enable")
def api_enable(user_id: int, auth: Auth = Depends(require_admin), store: Store = Depends(get_store)
               ) -> dict[str, Any]:
    _set_active(store, auth, user_id, True)
    return {"user": user_json(store.get_user(user_id))}


@router.post("/api/invites", status_code=201)
def api_invite(request: Request, body: NewInvite, auth: Auth = Depends(require_admin),
               store: Store = Depends(get_store)) -> Response:
    return JSONResponse({"url": _invite(request, store, auth, body.role)}, status_code=201)
