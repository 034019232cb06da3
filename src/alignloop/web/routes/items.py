"""Items (admins only): upload prompts and responses (JSONL), add items as JSON, mark gold items."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from alignloop.errors import AlignloopError, DataError
from alignloop.feedback import formats
from alignloop.feedback.store import Store
from alignloop.web.bodies import Body
from alignloop.web.deps import MAX_ID, PathId, get_store, require_admin, round_number
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_admin)])


class NewItems(Body):
    records: list[dict[str, Any]]
    round: Optional[int] = Field(None, ge=0, le=MAX_ID)


class Gold(Body):
    choice: Optional[str] = None
    ranking: Optional[list[int]] = None
    note: Optional[str] = None


def _round_id(store: Store, number: Optional[int]) -> Optional[int]:
    return None if number is None else store.round_id(number)


async def _upload(store: Store, file: UploadFile, fmt: str, kind: str, round_number: Optional[int]
                  ) -> dict[str, Any]:
    raw = await file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{file.filename or 'the upload'} is not UTF-8 text") from None

    def work() -> dict[str, Any]:
        return formats.import_text(store, text, fmt, name=file.filename or "upload",
                                   round_id=_round_id(store, round_number), kind=kind)

    return await run_in_threadpool(work)


# ---- HTML ----------------------------------------------------------------------------------

@router.get("/admin/items")
def items_page(request: Request, store: Store = Depends(get_store)) -> Response:
    return page(request, "admin_items.html", counts=store.counts(), rounds=store.rounds(), result=None, error="")


@router.post("/admin/items/upload")
async def upload_form(request: Request, file: UploadFile = File(...), format: str = Form("auto"),  # noqa: A002
                      kind: str = Form("auto"), round: str = Form(""),  # noqa: A002
                      store: Store = Depends(get_store)) -> Response:
    result, error, status = None, "", 200
    try:
        result = await _upload(store, file, format, kind, round_number(round))
    except AlignloopError as exc:
        error, status = str(exc), 422
    counts, rounds = await run_in_threadpool(lambda: (store.counts(), store.rounds()))
    return page(request, "admin_items.html", status_code=status, counts=counts, rounds=rounds, result=result,
                error=error)


# ---- JSON API ------------------------------------------------------------------------------

@router.post("/api/items", status_code=201)
def api_add_items(body: NewItems, store: Store = Depends(get_store)) -> Response:
    """Add items from records like the `responses` JSONL format, in one transaction."""
    ids = store.add_items(body.records, round_id=_round_id(store, body.round), source="api")
    return JSONResponse({"item_ids": ids}, status_code=201)


@router.post("/api/items/upload", status_code=201)
async def api_upload(file: UploadFile = File(...), format: str = Form("auto"), kind: str = Form("auto"),  # noqa: A002
                     round: str = Form(""), store: Store = Depends(get_store)) -> Response:  # noqa: A002
    result = await _upload(store, file, format, kind, round_number(round))
    return JSONResponse(result, status_code=201)


@router.get("/api/items/{item_id}")
def api_item(item_id: PathId, store: Store = Depends(get_store)) -> dict[str, Any]:
    item = store.get_item(item_id)
    return {"id": item.id, "kind": item.kind, "round_id": item.round_id, "prompt": item.prompt,
            "responses": [{"id": r.id, "label": r.label, "text": r.text, "model": r.model_name}
                          for r in item.responses]}


@router.post("/api/items/{item_id}/gold")
def api_gold(item_id: PathId, body: Gold, store: Store = Depends(get_store)) -> dict[str, Any]:
    """Mark an item gold: `choice` for a pair, `ranking` (positions 0.., best first) for a ranking."""
    store.set_gold(item_id, body.model_dump(exclude_none=True))
    return {"item_id": item_id, "gold": body.model_dump(exclude_none=True)}
