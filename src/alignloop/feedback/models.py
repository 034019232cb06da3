"""The feedback store's tables (SQLAlchemy 2 declarative models).

A round holds prompts; a prompt has responses (each with the model and the
sampling settings that wrote it); an item shows one prompt with two responses
(pair), K responses (ranking) or one (rating). Annotators are given items
through assignments, at most `overlap` people per item, never the same item
twice to one person; each finished assignment has one judgment.

The schema is created and upgraded only by the Alembic migrations in
`migrations/versions`; `tests/test_feedback_store.py` checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ITEM_KINDS = ("pair", "ranking", "rating")
CHOICES = ("a", "b", "tie", "both_bad")
ASPECTS = ("helpfulness", "harmlessness", "coherence", "accuracy")
ROLES = ("admin", "annotator")
ASSIGNMENT_STATES = ("open", "done", "skipped", "released")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as naive UTC and read back timezone-aware.

    SQLite has no time zones; storing UTC everywhere keeps both backends alike.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        return None if value is None else value.replace(tzinfo=timezone.utc)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Round(Base):
    """One round of sampling and annotation (`rounds/NNN/` in the run directory)."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    model_name: Mapped[Optional[str]] = mapped_column(String(500))
    sampling: Mapped[Optional[dict]] = mapped_column(JSON)
    note: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[Optional[int]] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[Optional[str]] = mapped_column(String(200))
    # Format details needed to write the prompt back exactly (e.g. TRL chat messages).
    meta: Mapped[Optional[dict]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Added by migration 0004: the content key of the imported record that made this prompt
    # (`alignloop.feedback.formats.content_key`), so that importing a file again stores nothing twice.
    import_key: Mapped[Optional[str]] = mapped_column(String(64), unique=True, index=True)

    responses: Mapped[list["Response"]] = relationship(back_populates="prompt", order_by="Response.id")


class Response(Base):
    __tablename__ = "responses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model_name: Mapped[Optional[str]] = mapped_column(String(500))
    sampling: Mapped[Optional[dict]] = mapped_column(JSON)
    meta: Mapped[Optional[dict]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    prompt: Mapped[Prompt] = relationship(back_populates="responses")


class Item(Base):
    """What an annotator is shown: a prompt with 2 (pair), K (ranking) or 1 (rating) responses."""

    __tablename__ = "items"
    __table_args__ = (CheckConstraint("kind IN ('pair', 'ranking', 'rating')", name="kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[Optional[int]] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Annotators wanted for this item; None means the store-wide default setting.
    overlap: Mapped[Optional[int]] = mapped_column(Integer)
    # False for items that arrive already labelled (imported preference data).
    queued: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    slots: Mapped[list["ItemResponse"]] = relationship(order_by="ItemResponse.position", cascade="all, delete-orphan")
    gold: Mapped[Optional["GoldItem"]] = relationship(cascade="all, delete-orphan")


class ItemResponse(Base):
    """Response `position` (0 = A, 1 = B, ...) of an item."""

    __tablename__ = "item_responses"
    __table_args__ = (UniqueConstraint("item_id", "response_id"),)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)

    response: Mapped[Response] = relationship()


class GoldItem(Base):
    """The known answer of an item used to check annotators (choice for pairs, ranking of response ids)."""

    __tablename__ = "gold_items"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    choice: Mapped[Optional[str]] = mapped_column(String(16))
    ranking: Mapped[Optional[list]] = mapped_column(JSON)
    note: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _name_key_default(context: Any) -> Optional[str]:
    from alignloop.feedback.names import name_key

    name = context.get_current_parameters().get("name")
    return None if name is None else name_key(name)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('admin', 'annotator')", name="role"),
                      Index("ix_users_name_key", "name_key", unique=True))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # The name as compared for uniqueness (NFKC, case-folded, look-alike letters mapped; see
    # feedback/names.py), filled in from `name` on insert. Added by migration 0003.
    name_key: Mapped[Optional[str]] = mapped_column(String(255), default=_name_key_default)
    # None: the account cannot log in (the author of imported labels).
    password_hash: Mapped[Optional[str]] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # "person", "simulated" or "import": who is behind the account.
    origin: Mapped[str] = mapped_column(String(16), default="person")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Assignment(Base):
    """An item given to one annotator.

    `slot` numbers the annotators of an item (0 .. overlap-1); the unique
    (item_id, slot) constraint is what keeps concurrent claims within the
    overlap, and (item_id, user_id) is what keeps a person from seeing an item
    twice. A skipped or released assignment gives its slot back (slot = NULL)
    but keeps the row, so the item never comes back to that person.
    """

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        UniqueConstraint("item_id", "slot"),
        Index("ix_assignments_user_status", "user_id", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    slot: Mapped[Optional[int]] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)

    item: Mapped[Item] = relationship()


class Judgment(Base):
    """One annotator's answer on one item.

    pair: `choice` (a, b, tie, both_bad) and `strength` (1 slightly, 2 clearly,
    3 much better); ranking: `ranking`, response ids best first; any kind may
    add aspect ratings, a critique and a rewritten response.
    """

    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id"),
        CheckConstraint("choice IS NULL OR choice IN ('a', 'b', 'tie', 'both_bad')", name="choice"),
        CheckConstraint("strength IS NULL OR (strength >= 1 AND strength <= 3)", name="strength"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[Optional[int]] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    choice: Mapped[Optional[str]] = mapped_column(String(16))
    strength: Mapped[Optional[int]] = mapped_column(Integer)
    ranking: Mapped[Optional[list]] = mapped_column(JSON)
    critique: Mapped[Optional[str]] = mapped_column(Text)
    rewrite: Mapped[Optional[str]] = mapped_column(Text)
    time_spent_ms: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    ratings: Mapped[list["AspectRating"]] = relationship(cascade="all, delete-orphan", order_by="AspectRating.id")
    item: Mapped[Item] = relationship()
    assignment: Mapped[Optional[Assignment]] = relationship()


class AspectRating(Base):
    """A Likert score (1-5) for one aspect of one response, part of a judgment."""

    __tablename__ = "aspect_ratings"
    __table_args__ = (
        UniqueConstraint("judgment_id", "response_id", "aspect"),
        CheckConstraint("score >= 1 AND score <= 5", name="score"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id", ondelete="CASCADE"), index=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    aspect: Mapped[str] = mapped_column(String(32))
    score: Mapped[int] = mapped_column(Integer)


class Setting(Base):
    """Store-wide settings an admin changes: `overlap`, `guidelines`."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


# ---- added by migration 0002: web sign-in --------------------------------------


class WebSession(Base):
    """A signed-in browser or script. Only a hash of the cookie's token is stored."""

    __tablename__ = "web_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Invite(Base):
    """A single-use sign-up link made by an admin. Only a hash of its token is stored."""

    __tablename__ = "invites"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    created_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    used_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
