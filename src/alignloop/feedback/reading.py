"""Reading judgments back out of the store: for export, the reward model and the admin's figures."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from alignloop.feedback import queue
from alignloop.feedback.models import Assignment, Item, ItemResponse, Judgment, Round, User

if TYPE_CHECKING:
    from alignloop.feedback.store import Store


def judgment_rows(store: "Store", round_id: Optional[int] = None, include_imported: bool = True,
                   include_gold: bool = True) -> list[dict[str, Any]]:
    with store.read() as s:
        query = (select(Judgment, User.name, User.origin, Item, Round.number)
                 .join(User, User.id == Judgment.user_id)
                 .join(Item, Item.id == Judgment.item_id)
                 .outerjoin(Round, Round.id == Item.round_id)
                 .options(selectinload(Judgment.ratings),
                          selectinload(Item.slots).selectinload(ItemResponse.response),
                          selectinload(Item.prompt), selectinload(Item.gold))
                 .order_by(Judgment.item_id, Judgment.id))
        if round_id is not None:
            query = query.where(Item.round_id == round_id)
        if not include_imported:
            query = query.where(User.origin != "import")
        rows = []
        for judgment, name, origin, item, round_number in s.execute(query):
            if item.gold is not None and not include_gold:
                continue
            ratings: dict[int, dict[str, int]] = {}
            for rating in judgment.ratings:
                ratings.setdefault(rating.response_id, {})[rating.aspect] = rating.score
            gold = None if item.gold is None else {"choice": item.gold.choice, "ranking": item.gold.ranking}
            rows.append({
                "judgment_id": judgment.id, "item_id": item.id, "kind": item.kind, "round": round_number,
                "item_source": item.source, "prompt": item.prompt.text, "prompt_meta": item.prompt.meta,
                "responses": [{"id": slot.response.id, "text": slot.response.text, "model": slot.response.model_name,
                               "sampling": slot.response.sampling, "meta": slot.response.meta}
                              for slot in item.slots],
                "annotator": name, "annotator_origin": origin,
                "choice": judgment.choice, "strength": judgment.strength, "ranking": judgment.ranking,
                "ratings": ratings, "critique": judgment.critique, "rewrite": judgment.rewrite,
                "time_spent_ms": judgment.time_spent_ms, "created_at": judgment.created_at.isoformat(),
                "gold": gold,
            })
        return rows


def annotator_table(store: "Store") -> list[dict[str, Any]]:
    overlap = store.overlap
    with store.read() as s:
        users = list(s.scalars(select(User).where(User.origin != "import").order_by(User.id)))
        status = defaultdict(dict)
        for user_id, state, count in s.execute(select(Assignment.user_id, Assignment.status, func.count())
                                               .group_by(Assignment.user_id, Assignment.status)):
            status[user_id][state] = count
        timing = dict(s.execute(select(Judgment.user_id, func.avg(Judgment.time_spent_ms))
                                .group_by(Judgment.user_id)).all())
        table = []
        for user in users:
            counts = status.get(user.id, {})
            table.append({"id": user.id, "name": user.name, "role": user.role, "active": user.active,
                          "origin": user.origin, "done": counts.get("done", 0), "open": counts.get("open", 0),
                          "skipped": counts.get("skipped", 0),
                          "remaining": queue.available_count(s, user.id, overlap) + counts.get("open", 0),
                          "mean_time_s": None if timing.get(user.id) is None
                          else round(float(timing[user.id]) / 1000.0, 1)})
        return table

