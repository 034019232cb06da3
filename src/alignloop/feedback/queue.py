"""Who gets which item: claiming, releasing and completing assignments (inside a store transaction).

The rules: an item goes to at most `overlap` annotators (its own `overlap`
or the store-wide default) and never twice to the same person. Both are
enforced by unique constraints, (item_id, slot) and (item_id, user_id), so
they hold even when the application's own check races with another request:
the loser's insert fails and it moves on to the next item.
"""

from __future__ import annotations

import hashlib
from typing import Optional

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session, selectinload

from alignloop.errors import DataError
from alignloop.feedback.answers import MAX_TIME_MS, Answer
from alignloop.feedback.limits import MAX_OVERLAP
from alignloop.feedback.models import AspectRating, Assignment, Item, ItemResponse, Judgment, User, utcnow
from alignloop.feedback.names import check_name, name_key

# How many of the oldest open items a claim looks at. Each annotator tries them
# in an order of their own (`claim_order`), which keeps concurrent annotators
# from all fighting over the same row.
CANDIDATES = 8

# Annotators per item when neither the item nor the admin says otherwise.
DEFAULT_OVERLAP = 1


def item_query() -> Select:
    return select(Item).options(selectinload(Item.slots).selectinload(ItemResponse.response),
                                selectinload(Item.prompt))


def _filled(item_column) -> object:  # noqa: ANN001
    """Number of held slots (open or done assignments) of an item."""
    return (select(func.count()).select_from(Assignment)
            .where(Assignment.item_id == item_column, Assignment.slot.is_not(None))
            .correlate(Item).scalar_subquery())


def _available(user_id: int, default_overlap: int) -> Select:
    seen = exists().where(Assignment.item_id == Item.id, Assignment.user_id == user_id)
    wanted = func.coalesce(Item.overlap, default_overlap)
    return select(Item.id, wanted.label("wanted")).where(Item.queued.is_(True), ~seen, _filled(Item.id) < wanted)


def available_count(s: Session, user_id: int, default_overlap: int) -> int:
    """Items this user could still be given."""
    return s.scalar(select(func.count()).select_from(_available(user_id, default_overlap).subquery())) or 0


def current(s: Session, user_id: int) -> Optional[Assignment]:
    """The user's open assignment, if any (read-only)."""
    return s.scalar(select(Assignment).where(Assignment.user_id == user_id, Assignment.status == "open")
                    .order_by(Assignment.id).limit(1))


def first_free_slot(used: set[int], wanted: int) -> Optional[int]:
    """The lowest slot number below `wanted` not in `used`, or None: at most len(used) + 1 looks."""
    slot = 0
    while slot in used:
        slot += 1
    return slot if slot < min(wanted, MAX_OVERLAP) else None


def claim_order(user_id: int, item_id: int) -> bytes:
    """Sort key of an item among one annotator's candidates.

    A hash of the pair rather than a random draw: annotators still spread over
    the candidates, and the same claims in the same order give the same items,
    so a simulated round replays exactly.
    """
    return hashlib.blake2b(f"{user_id}:{item_id}".encode(), digest_size=8).digest()


def claim(s: Session, user_id: int, default_overlap: int, postgres: bool = False) -> Optional[Assignment]:
    """The user's open assignment if they have one, else a new one on an item with a free slot.

    Raises IntegrityError (the caller retries in a new transaction) only if
    every candidate's free slot was taken concurrently.
    """
    mine = current(s, user_id)
    if mine is not None:
        return mine
    query = _available(user_id, default_overlap).order_by(Item.id).limit(CANDIDATES)
    if postgres:
        # Rows another claim is working on are passed over instead of waited for...
        candidates = list(s.execute(query.with_for_update(of=Item, skip_locked=True)).all())
        if not candidates:
            # ...unless they are all that is left: then wait for them, or we would
            # tell this annotator "nothing left" while slots are still free.
            candidates = list(s.execute(query.with_for_update(of=Item)).all())
    else:
        candidates = list(s.execute(query).all())
    candidates.sort(key=lambda row: claim_order(user_id, row[0]))
    for item_id, wanted in candidates:
        used = set(s.scalars(select(Assignment.slot).where(Assignment.item_id == item_id,
                                                            Assignment.slot.is_not(None))))
        slot = first_free_slot(used, wanted)
        if slot is None:
            continue
        assignment = Assignment(item_id=item_id, user_id=user_id, slot=slot, status="open", assigned_at=utcnow())
        with s.begin_nested():
            s.add(assignment)
        return assignment
    return None


def release_open(s: Session, user_id: int) -> int:
    """Give back every open assignment of a user (when the account is disabled)."""
    rows = list(s.scalars(select(Assignment).where(Assignment.user_id == user_id, Assignment.status == "open")))
    for assignment in rows:
        assignment.status, assignment.slot, assignment.finished_at = "released", None, utcnow()
    return len(rows)


def record_judgment(s: Session, assignment: Assignment, answer: Answer) -> Judgment:
    """Write an already validated answer and close the assignment.

    The time spent is measured here, from the assignment to the judgment: a
    client's own figure is never taken (it could claim any time it liked).
    """
    now = utcnow()
    time_spent = None
    if assignment.assigned_at is not None:
        time_spent = min(max(0, int((now - assignment.assigned_at).total_seconds() * 1000)), MAX_TIME_MS)
    judgment = Judgment(assignment_id=assignment.id, item_id=assignment.item_id, user_id=assignment.user_id,
                        choice=answer.choice, strength=answer.strength, ranking=answer.ranking,
                        critique=answer.critique, rewrite=answer.rewrite, time_spent_ms=time_spent, created_at=now)
    for response_id, scores in answer.ratings.items():
        for aspect, score in scores.items():
            judgment.ratings.append(AspectRating(response_id=response_id, aspect=aspect, score=score))
    s.add(judgment)
    assignment.status, assignment.finished_at = "done", now
    s.flush()
    return judgment


def import_author(s: Session, name: str) -> int:
    """The id of a sign-in-less user that imported labels are attributed to (created if needed).

    Only an import account can be one: labels are never attributed to a person or a simulated annotator.
    """
    name = check_name(name[:100] if isinstance(name, str) else name, origin="import")
    found = s.execute(select(User.id, User.origin).where(User.name_key == name_key(name))).first()
    if found is not None:
        if found.origin != "import":
            raise DataError(f"annotator {name!r} of the imported labels is the name of a {found.origin} account; "
                            f"imported labels need a name of their own")
        return found.id
    user = User(name=name, password_hash=None, role="annotator", origin="import", active=False)
    s.add(user)
    s.flush()
    return user.id
