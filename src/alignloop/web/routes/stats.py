"""The admin dashboard: progress per annotator, agreement per item kind, gold accuracy."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from alignloop.feedback.store import Store
from alignloop.web.deps import MAX_ID, get_store, require_admin
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_admin)])


@router.get("/admin")
def dashboard(request: Request, store: Store = Depends(get_store)) -> Response:
    return page(request, "admin_dashboard.html", counts=store.counts(), annotators=store.annotator_table(),
                agreement=store.agreement(), overlap=store.overlap)


@router.get("/api/stats/annotators")
def api_annotators(store: Store = Depends(get_store)) -> dict[str, Any]:
    """Per annotator: done, open, skipped, remaining, mean seconds per judgment, gold accuracy."""
    return {"annotators": store.annotator_table()}


@router.get("/api/stats/agreement")
def api_agreement(round: Optional[int] = Query(None, ge=0, le=MAX_ID), store: Store = Depends(get_store)) -> dict[str, Any]:  # noqa: A002
    round_id = None if round is None else store.round_id(round)
    return {"agreement": store.agreement(round_id), "counts": store.counts()}
