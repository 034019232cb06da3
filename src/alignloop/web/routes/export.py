"""Export (admins only): the same files as `alignloop feedback export`, as a download."""

from __future__ import annotations

import json
from typing import Literal, Optional

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from alignloop.feedback import formats
from alignloop.feedback.store import Store
from alignloop.web.deps import get_store, require_admin, round_number
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_admin)])


def _download(store: Store, fmt: str, ties: str, aggregate: str, round_number: Optional[int]) -> Response:
    round_id = None if round_number is None else store.round_id(round_number)
    lines = formats.export_lines(store, fmt, round_id=round_id, aggregate=aggregate, ties=ties)
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    name = f"feedback-{fmt}.jsonl"
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/admin/export")
def export_page(request: Request, store: Store = Depends(get_store)) -> Response:
    return page(request, "admin_export.html", rounds=store.rounds())


@router.get("/admin/export/file")
@router.get("/api/export")
def export_file(format: Literal["trl", "hh", "rich"] = "trl", ties: Literal["drop", "keep"] = "drop",  # noqa: A002
                aggregate: Literal["majority", "annotator"] = "majority", round: str = "",  # noqa: A002
                store: Store = Depends(get_store)) -> Response:
    """JSONL download: `trl` or `hh` preference pairs, or `rich` records of every judgment."""
    return _download(store, format, ties, aggregate, round_number(round))
