"""Store-wide settings (admins only): how many annotators per item, and the guidelines text."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Form, Request
from pydantic import Field
from starlette.responses import RedirectResponse, Response

from alignloop.errors import AlignloopError, DataError
from alignloop.feedback.answers import MAX_TEXT
from alignloop.feedback.store import MAX_OVERLAP, Store
from alignloop.web.bodies import Body
from alignloop.web.deps import get_store, require_admin
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_admin)])


class SettingsBody(Body):
    overlap: Optional[int] = Field(None, description=f"annotators per item (1-{MAX_OVERLAP})")
    guidelines: Optional[str] = Field(None, description="shown to annotators, as plain text")


def _apply(store: Store, overlap: Optional[int], guidelines: Optional[str]) -> None:
    if guidelines is not None and len(guidelines) > MAX_TEXT:
        raise DataError(f"guidelines are longer than {MAX_TEXT} characters")
    if overlap is not None:
        store.set_overlap(overlap)
    if guidelines is not None:
        store.set_guidelines(guidelines)


def settings_json(store: Store) -> dict[str, Any]:
    return {"overlap": store.overlap, "guidelines": store.guidelines}


@router.get("/admin/settings")
def settings_page(request: Request, saved: int = 0, store: Store = Depends(get_store)) -> Response:
    return page(request, "admin_settings.html", settings=settings_json(store), saved=bool(saved), error="")


@router.post("/admin/settings")
def settings_form(request: Request, overlap: str = Form(""), guidelines: str = Form(""),
                  store: Store = Depends(get_store)) -> Response:
    try:
        value = int(overlap) if overlap.strip() else None
        _apply(store, value, guidelines)
    except (ValueError, AlignloopError) as exc:
        message = str(exc) if isinstance(exc, AlignloopError) else "overlap must be a whole number"
        return page(request, "admin_settings.html", status_code=422, settings=settings_json(store), saved=False,
                    error=message)
    return RedirectResponse("/admin/settings?saved=1", status_code=303)


@router.get("/api/settings")
def api_settings(store: Store = Depends(get_store)) -> dict[str, Any]:
    return settings_json(store)


@router.put("/api/settings")
def api_update_settings(body: SettingsBody, store: Store = Depends(get_store)) -> dict[str, Any]:
    _apply(store, body.overlap, body.guidelines)
    return settings_json(store)
