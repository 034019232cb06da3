"""Annotating: the queue page, submitting and skipping (HTML), and the same as JSON under /api.

Taking an item is a state change, so it happens on POST only (`POST /queue/next`,
`POST /api/queue/next`, and after each submit or skip): a GET, which another
site can make a browser send, only shows the item already taken.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import JSONResponse, RedirectResponse, Response

from alignloop.errors import DataError
from alignloop.feedback.answers import Answer
from alignloop.feedback.models import ASPECTS
from alignloop.feedback.store import AssignmentView, Progress, Store
from alignloop.web.bodies import Body
from alignloop.web.deps import Auth, PathId, get_store, require_user
from alignloop.web.templating import page

router = APIRouter(dependencies=[Depends(require_user)])

RATING_FIELD = re.compile(r"rating-([0-9]{1,10})-([a-z]+)")


class JudgmentBody(Body):
    """A judgment sent to the API; which fields matter depends on the item kind (see `Answer`)."""

    choice: Optional[str] = Field(None, description="pair: a, b, tie or both_bad (A and B also do)")
    strength: Optional[int] = Field(None, description="pair, when A or B wins: 1 slightly, 2 clearly, 3 much better")
    ranking: Optional[list[int]] = Field(None, description="ranking: response ids, best first")
    ratings: dict[int, dict[str, Optional[int]]] = Field(default_factory=dict,
                                                         description="{response id: {aspect: 1-5}}")
    critique: Optional[str] = None
    rewrite: Optional[str] = None
    time_spent_ms: Optional[int] = Field(None, description="ignored: the server measures the time spent "
                                                           "(accepted so that older clients still work)")

    def answer(self) -> Answer:
        ratings = {rid: {a: s for a, s in scores.items() if s is not None} for rid, scores in self.ratings.items()}
        return Answer(choice=self.choice, strength=self.strength, ranking=self.ranking, ratings=ratings,
                      critique=self.critique, rewrite=self.rewrite)


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
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]{1,10}", text):
        raise DataError(f"{name} must be a whole number")
    return int(text)


def _text(form: FormData, key: str) -> Optional[str]:
    value = form.get(key)
    return value if isinstance(value, str) and value else None  # an uploaded file in a text field is ignored


def answer_from_form(form: FormData) -> Answer:
    """The queue page's form as an `Answer` (rating fields are named rating-<response id>-<aspect>)."""
    ranking_text = str(form.get("ranking") or "").strip()
    ranking = [_int(x, "ranking") for x in ranking_text.split(",") if x.strip()] if ranking_text else None
    ratings: dict[int, dict[str, int]] = {}
    for key, value in form.multi_items():
        if not key.startswith("rating-") or not isinstance(value, str) or not value.strip():
            continue
        field = RATING_FIELD.fullmatch(key)
        if field is None or field.group(2) not in ASPECTS:
            raise DataError(f"unknown rating field {key[:60]!r}; expected rating-<response id>-<aspect>")
        ratings.setdefault(int(field.group(1)), {})[field.group(2)] = _int(value, field.group(2))
    return Answer(choice=_text(form, "choice"), strength=_int(form.get("strength"), "strength"), ranking=ranking,
                  ratings=ratings, critique=_text(form, "critique"), rewrite=_text(form, "rewrite"))


# ---- HTML ----------------------------------------------------------------------------------

def _queue_page(request: Request, store: Store, auth: Auth, view: Optional[AssignmentView], error: str = "",
                status: int = 200) -> Response:
    progress = store.progress(auth.user.id)
    if view is None:
        return page(request, "queue_empty.html", progress=progress)
    return page(request, "queue.html", status_code=status, assignment=view, item=view.item, progress=progress,
                error=error)


def _next_page() -> Response:
    return RedirectResponse("/queue", status_code=303)


@router.get("/queue")
def queue_page(request: Request, auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    """The item this annotator has taken, or a button to take the next one (a GET claims nothing)."""
    return _queue_page(request, store, auth, store.current_assignment(auth.user.id))


@router.post("/queue/next")
def take_next_form(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    store.next_assignment(auth.user.id)
    return _next_page()


@router.get("/guidelines")
def guidelines_page(request: Request, store: Store = Depends(get_store)) -> Response:
    return page(request, "guidelines.html", guidelines=store.guidelines)


@router.post("/queue/{assignment_id}")
async def submit_form(request: Request, assignment_id: PathId, auth: Auth = Depends(require_user),
                      store: Store = Depends(get_store)) -> Response:
    form = await request.form()
    try:
        answer = answer_from_form(form)
        await run_in_threadpool(store.submit, assignment_id, auth.user.id, answer)
    except DataError as exc:
        view = await run_in_threadpool(store.get_assignment, assignment_id, auth.user.id)
        return await run_in_threadpool(_queue_page, request, store, auth, view, str(exc), 422)
    await run_in_threadpool(store.next_assignment, auth.user.id)
    return _next_page()


@router.post("/queue/{assignment_id}/skip")
def skip_form(assignment_id: PathId, auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> Response:
    store.skip(assignment_id, auth.user.id)
    store.next_assignment(auth.user.id)
    return _next_page()


# ---- JSON API ------------------------------------------------------------------------------

@router.get("/api/guidelines")
def api_guidelines(store: Store = Depends(get_store)) -> dict[str, str]:
    return {"guidelines": store.guidelines}


@router.post("/api/queue/next")
def api_next(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, Any]:
    """The caller's open assignment, or a newly taken one; `assignment` is null when nothing is left.

    Safe to repeat: while an assignment is open, the same one comes back."""
    view = store.next_assignment(auth.user.id)
    return {"assignment": None if view is None else assignment_json(view)}


@router.get("/api/queue/current")
def api_current(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, Any]:
    """The caller's open assignment, or null; takes nothing."""
    view = store.current_assignment(auth.user.id)
    return {"assignment": None if view is None else assignment_json(view)}


@router.get("/api/assignments/{assignment_id}")
def api_assignment(assignment_id: PathId, auth: Auth = Depends(require_user),
                   store: Store = Depends(get_store)) -> dict[str, Any]:
    return assignment_json(store.get_assignment(assignment_id, auth.user.id))


@router.post("/api/assignments/{assignment_id}/judgment", status_code=201)
def api_submit(assignment_id: PathId, body: JudgmentBody, auth: Auth = Depends(require_user),
               store: Store = Depends(get_store)) -> Response:
    """Judge one of your open assignments; answers the judgment's id (409 if it is already judged)."""
    judgment_id = store.submit(assignment_id, auth.user.id, body.answer())
    return JSONResponse({"judgment_id": judgment_id}, status_code=201)


@router.post("/api/assignments/{assignment_id}/skip")
def api_skip(assignment_id: PathId, auth: Auth = Depends(require_user), store: Store = Depends(get_store)
             ) -> dict[str, bool]:
    """Give an open assignment back: it goes to someone else, never again to you."""
    store.skip(assignment_id, auth.user.id)
    return {"skipped": True}


@router.get("/api/progress")
def api_progress(auth: Auth = Depends(require_user), store: Store = Depends(get_store)) -> dict[str, int]:
    return progress_json(store.progress(auth.user.id))
