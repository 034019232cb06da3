"""Annotating: the queue page, submitting and skipping (HTML), and the same as JSON under /api."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.errors import DataError
from alignloop.feedback.answers import Answer
from alignloop.feedback.models import ASPECTS
from alignloop.feedback.store import AssignmentView, Progress, Store
from alignloop.web.deps import Auth, get_store, require_user
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_user)])


class JudgmentBody(BaseModel):
    """A judgment sent to the API; which fields matter depends on the item kind (see `Answer`)."""

    model_config = ConfigDict(extra="forbid")
    choice: Optional[str] = Field(None, description="pair: a, b, tie or both_bad")
    strength: Optional[int] = Field(None, description="pair, when A or B wins: 1 slightly, 2 clearly, 3 much better")
    ranking: Optional[list[int]] = Field(None, description="ranking: response ids, best first")
    ratings: dict[int, dict[str, Optional[int]]] = Field(default_factory=dict,
                                                         description="{response id: {aspect: 1-5}}")
    critique: Optional[str] = None
    rewrite: Optional[str] = None
    time_spent_ms: Optional[int] = None

    def answer(self) -> Answer:
        ratings = {rid: {a: s for a, s in scores.items() if s is not None} for rid, scores in self.ratings.items()}
        return Answer(choice=self.choice, strength=self.strength, ranking=self.ranking, ratings=ratings,
                      critique=self.critique, rewrite=self.rewrite, time_spent_ms=self.time_spent_ms)


def progress_json(progress: Progress) -> dict[str, int]:
    return {"done": progress.done, "skipped": progress.skipped, "remaining": progress.remaining}


def assignment_json(view: AssignmentView) -> dict[str, Any]:
    """What an annotator sees of an assignment: never who wrote a response, never others' judgments."""
    item = view.item
    return {"id": view.id, "status": view.status,
            "item": {"id": item.id, "kind": item.kind, "prompt": item.prompt,
                     "responses": [{"id": r.id, "label": r.label, "text": r.text} for r in item.responses]}}


def _int(value: Any, name: str) -> Optional[int]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a whole number") from None


def answer_from_form(form: FormData) -> Answer:
    """The queue page's form as an `Answer` (rating fields are named rating-<response id>-<aspect>)."""
    ranking_text = str(form.get("ranking") or "").strip()
    ranking = [_int(x, "ranking") for x in ranking_text.split(",") if x.strip()] if ranking_text else None
    ratings: dict[int, dict[str, int]] = {}
    for key, value in form.multi_items():
        if key.startswith("rating-") and isinstance(value, str) and value.strip():
            _, response_id, aspect = key.split("-", 2)
            if aspect in ASPECTS:
                ratings.setdefault(_int(response_id, "rating"), {})[aspect] = _int(value, aspect)
    return Answer(choice=(form.get("choice") or None), strength=_int(form.get("strength"), "strength"),
                  ranking=ranking, ratings=ratings, critique=form.get("critique") or None,
                  rewrite=form.get("rewrite") or None, time_spent_ms=_int(form.get("time_spent_ms"), "time spent"))


# ---- HTML ----------------------------------------------------------------------------------

def _queue_page(request: Request, store: Store, auth: Auth, view: Optional[AssignmentView], error: str = "",
                status: int = 200) -> Response:
    progress = store.progress(auth.user.id)
    if view is None:
        return page(request, "queue_empty.html", progress=progress)
    return page(request, "queue.html", status_code=status, assignment=view, item=view.item, progress=progress,
                error=error)


@router.get("/queue")
def queue_page(request: Request, auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    return _queue_page(request, store, auth, store.next_assignment(auth.user.id))


@router.get("/guidelines")
def guidelines_page(request: Request, store: Store = Depends(get_store)) -> Response:
    return page(request, "guidelines.html", guidelines=store.guidelines)


@router.post("/queue/{assignment_id}")
async def submit_form(request: Request, assignment_id: int, auth: Auth = Depends(require_user),
                      store: Store = Depends(get_store)) -> Response:
    form = await request.form()
    try:
        answer = answer_from_form(form)
        await run_in_threadpool(store.submit, assignment_id, auth.user.id, answer)
    except DataError as exc:
        view = await run_in_threadpool(store.get_assignment, assignment_id, auth.user.id)
        return await run_in_threadpool(_queue_page, request, store, auth, view, str(exc), 422)
    return RedirectResponse("/queue", status_code=303)


@router.post("/queue/{assignment_id}/skip")
def skip_form(assignment_id: int, auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    store.skip(assignment_id, auth.user.id)
    return RedirectResponse("/queue", status_code=303)


# ---- JSON API ------------------------------------------------------------------------------

@router.get("/api/guidelines")
def api_guidelines(store: Store = Depends(get_store)) -> dict[str, str]:
    return {"guidelines": store.guidelines}


@router.get("/api/queue/next")
def api_next(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, Any]:
    """The caller's open assignment, or a new one; `assignment` is null when nothing is left."""
    view = store.next_assignment(auth.user.id)
    return {"assignment": None if view is None else assignment_json(view)}


@router.get("/api/assignments/{assignment_id}")
def api_assignment(assignment_id: int, auth: Auth = Depends(require_user),
                   store: Store = Depends(get_store)) -> dict[str, Any]:
    return assignment_json(store.get_assignment(assignment_id, auth.user.id))


@router.post("/api/assignments/{assignment_id}/judgment", status_code=201)
def api_submit(assignment_id: int, body: JudgmentBody, auth: Auth = Depends(require_user),
               store: Store = Depends(get_store)) -> Response:
    judgment_id = store.submit(assignment_id, auth.user.id, body.answer())
    return JSONResponse({"judgment_id": judgment_id}, status_code=201)


@router.post("/api/assignments/{assignment_id}/skip")
def api_skip(assignment_id: int, auth: Auth = Depends(require_user), store: Store = Depends(get_store)
             ) -> dict[str, bool]:
    store.skip(assignment_id, auth.user.id)
    return {"skipped": True}


@router.get("/api/progress")
def api_progress(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, int]:
    return progress_json(store.progress(auth.user.id))
