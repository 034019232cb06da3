"""The feedback store: one object that every writer and reader of feedback goes through.

`open_store(path_or_url)` opens (and creates or migrates) the database and
returns a `Store`. Every method is one transaction. The web app, the CLI,
`alignloop sample` and the reward-model stage all use these methods, so the
rules (overlap, one judgment per person per item, validation) live here once.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError, DataError
from alignloop.feedback import db, preferences, queue, reading, stats
from alignloop.feedback.answers import Answer, normal_choice, validate_answer
from alignloop.feedback.models import (
    ITEM_KINDS,
    ROLES,
    Assignment,
    GoldItem,
    Invite,
    Item,
    ItemResponse,
    Judgment,
    Prompt,
    Response,
    Round,
    Setting,
    User,
    WebSession,
    utcnow,
)
from alignloop.feedback.names import MAX_NAME, check_name, name_key
from alignloop.feedback.text import lone_surrogate_at, reject_lone_surrogates

DEFAULT_OVERLAP = queue.DEFAULT_OVERLAP
MAX_OVERLAP = queue.MAX_OVERLAP
DEFAULT_GUIDELINES = (
    "Read the prompt, then every response in full.\n"
    "Prefer the response that is more helpful, harmless, coherent and accurate, in that order of importance.\n"
    "Choose 'tie' when neither is better, and 'both bad' when neither is acceptable.\n"
    "Say how strongly you prefer: 1 slightly, 2 clearly, 3 much better.\n"
    "Skip an item you cannot judge. Write a short critique when something is wrong."
)


class NotFound(AlignloopError):
    """The item, assignment, user or invite does not exist (or is not yours)."""


class Conflict(AlignloopError):
    """The action clashes with the current state: a second judgment, a taken name, a used invite."""


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str
    active: bool
    origin: str
    password_hash: Optional[str] = field(default=None, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class ResponseView:
    id: int
    text: str
    model_name: Optional[str]
    label: str  # "A", "B", ... for pairs; "1", "2", ... otherwise


@dataclass(frozen=True)
class ItemView:
    id: int
    kind: str
    round_id: Optional[int]
    prompt: str
    responses: tuple[ResponseView, ...]


@dataclass(frozen=True)
class AssignmentView:
    id: int
    status: str
    item: ItemView


@dataclass(frozen=True)
class Progress:
    done: int
    skipped: int
    remaining: int


def _user_info(user: User) -> UserInfo:
    return UserInfo(user.id, user.name, user.role, user.active, user.origin, user.password_hash)


def _item_view(item: Item) -> ItemView:
    labels = [chr(ord("A") + i) for i in range(len(item.slots))] if item.kind == "pair" else \
        [str(i + 1) for i in range(len(item.slots))]
    responses = tuple(ResponseView(s.response.id, s.response.text, s.response.model_name, label)
                      for s, label in zip(item.slots, labels))
    return ItemView(item.id, item.kind, item.round_id, item.prompt.text, responses)


def check_overlap(value: Any, where: str = "overlap") -> int:
    """`value` if it is a whole number from 1 to MAX_OVERLAP (annotators per item), else a `DataError`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_OVERLAP:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise DataError(f"{where} must be a whole number from 1 to {MAX_OVERLAP}, not {shown}")
    return value


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a user named {name!r} already exists (names are compared ignoring case and look-alike letters)")


def token_digest(token: str) -> str:
    """How secrets (session and invite tokens) are stored: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def _pairs(count: int, limit: Optional[int], rng: random.Random) -> list[tuple[int, int]]:
    """Index pairs of `count` responses: all C(count, 2), or `limit` of them chosen at random."""
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    if limit is not None and limit < len(pairs):
        pairs = sorted(rng.sample(pairs, limit))
    return _random_order(pairs, rng)


def _random_order(pairs: list[tuple[int, int]], rng: random.Random) -> list[tuple[int, int]]:
    # Random A/B order, so a position bias of annotators cannot favour the first sample.
    return [(j, i) if rng.random() < 0.5 else (i, j) for i, j in pairs]


def _chosen_pairs(record: dict[str, Any], count: int, where: str) -> Optional[list[tuple[int, int]]]:
    """The record's own `pairs` of response positions (chosen by `sample select`), or None to draw them."""
    chosen = record.get("pairs")
    if chosen is None:
        return None
    valid = isinstance(chosen, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(type(x) is int and 0 <= x < count for x in p)
        and p[0] != p[1] for p in chosen)
    if not valid:
        raise DataError(f"{where}: 'pairs' must be a list of [i, j] positions of two different responses "
                        f"(0 to {count - 1})")
    return [(int(i), int(j)) for i, j in chosen]


class Store:
    """The feedback database. Build it with `open_store`."""

    def __init__(self, url: str, write_engine: Engine, read_engine: Engine):
        self.url = url
        self.write_engine = write_engine
        self.read_engine = read_engine
        # SQLite has one writer at a time. Queueing our own threads on a lock wakes the
        # next one as soon as the writer commits, where SQLite's busy handler would poll
        # with growing sleeps (long, unfair waits under load). Other processes still
        # wait through the busy timeout.
        self._write_lock = threading.Lock() if self.backend == "sqlite" else contextlib.nullcontext()

    @property
    def backend(self) -> str:
        return self.write_engine.dialect.name

    def close(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions -------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction, committed on success (on SQLite it holds the write lock)."""
        with self._write_lock, Session(self.write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    # ---- settings -----------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        with self.read() as s:
            row = s.get(Setting, key)
            return default if row is None else row.value

    def set_setting(self, key: str, value: Any) -> None:
        reject_lone_surrogates(value, f"setting {key}")
        with self.write() as s:
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value))
            else:
                row.value = value

    @property
    def overlap(self) -> int:
        """How many annotators each item gets unless the item says otherwise."""
        return int(self.get_setting("overlap", DEFAULT_OVERLAP))

    def set_overlap(self, overlap: int) -> None:
        self.set_setting("overlap", check_overlap(overlap))

    @property
    def guidelines(self) -> str:
        return str(self.get_setting("guidelines", DEFAULT_GUIDELINES))

    def set_guidelines(self, text: str) -> None:
        self.set_setting("guidelines", text)

    # ---- users ----------------------------------------------------------------
    def add_user(self, name: str, password_hash: Optional[str], role: str = "annotator",
                 origin: str = "person") -> int:
        """Create an account; `password_hash` comes from `alignloop.web.security.hash_password`.

        The name must be valid and free for its origin (see `feedback/names.py`): the
        prefixes `import:` and `sim-` belong to imported labels and simulated annotators.
        """
        name = check_name(name, origin)
        if role not in ROLES:
            raise DataError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        try:
            with self.write() as s:
                user = User(name=name, password_hash=password_hash, role=role, origin=origin, active=True)
                s.add(user)
                s.flush()
                return user.id
        except IntegrityError:
            raise _name_taken(name) from None

    def check_new_name(self, name: str, origin: str = "person") -> str:
        """The stripped name if an account of `origin` could be created with it now, else the error."""
        name = check_name(name, origin)
        with self.read() as s:
            if s.scalar(select(User.id).where(User.name_key == name_key(name))) is not None:
                raise _name_taken(name)
        return name

    def get_user(self, user_id: int) -> UserInfo:
        with self.read() as s:
            user = s.get(User, user_id)
            if user is None:
                raise NotFound(f"no user with id {user_id}")
            return _user_info(user)

    def user_by_name(self, name: str) -> Optional[UserInfo]:
        """The account called `name`, or whose name compares equal to it (case, look-alikes)."""
        # Nothing that could never be a name reaches the database (a lone surrogate cannot even be encoded).
        if not isinstance(name, str) or not name or len(name) > 4 * MAX_NAME or lone_surrogate_at(name):
            return None
        with self.read() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                user = s.scalar(select(User).where(User.name_key == name_key(name)))
            return None if user is None else _user_info(user)

    def list_users(self) -> list[UserInfo]:
        with self.read() as s:
            return [_user_info(u) for u in s.scalars(select(User).order_by(User.id))]

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Store a new hash of the same password (argon2 parameters upgraded); sessions stay."""
        with self.write() as s:
            s.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))

    def change_password(self, user_id: int, password_hash: str, keep_session: Optional[str] = None) -> int:
        """Set a new password and sign the account out everywhere except the session `keep_session`
        (the one that made the change, if any). Returns the number of sessions ended."""
        with self.write() as s:
            user = s.get(User, user_id)
            if user is None:
                raise NotFound(f"no user with id {user_id}")
            if user.origin == "import":
                raise Conflict(f"{user.name} holds imported labels and cannot sign in")
            user.password_hash = password_hash
            ended = delete(WebSession).where(WebSession.user_id == user_id)
            if keep_session is not None:
                ended = ended.where(WebSession.token_hash != token_digest(keep_session))
            return s.execute(ended).rowcount or 0

    def set_active(self, user_id: int, active: bool) -> None:
        """Enable or disable an account. Disabling signs it out and gives its open items back."""
        with self.write() as s:
            user = s.get(User, user_id)
            if user is None:
                raise NotFound(f"no user with id {user_id}")
            if active and user.origin == "import":
                raise Conflict(f"{user.name} holds imported labels and cannot sign in")
            user.active = active
            if not active:
                s.execute(delete(WebSession).where(WebSession.user_id == user_id))
                queue.release_open(s, user_id)

    # ---- web sessions and invites --------------------------------------------------
    def create_session(self, user_id: int, token: str, csrf_token: str, ttl: timedelta) -> None:
        with self.write() as s:
            now = utcnow()
            # Expired sessions of anyone are dropped here rather than by a background job.
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            s.add(WebSession(token_hash=token_digest(token), user_id=user_id, csrf_token=csrf_token,
                             created_at=now, expires_at=now + ttl))

    def session_user(self, token: str) -> Optional[tuple[UserInfo, str]]:
        """The active user signed in with `token` and the session's CSRF token, or None."""
        with self.read() as s:
            row = s.execute(select(WebSession, User).join(User, User.id == WebSession.user_id)
                            .where(WebSession.token_hash == token_digest(token))).first()
            if row is None:
                return None
            session, user = row
            if session.expires_at < utcnow() or not user.active:
                return None
            return _user_info(user), session.csrf_token

    def delete_session(self, token: str) -> None:
        with self.write() as s:
            s.execute(delete(WebSession).where(WebSession.token_hash == token_digest(token)))

    def create_invite(self, token: str, created_by: Optional[int], role: str = "annotator",
                      ttl: timedelta = timedelta(days=7)) -> None:
        if role not in ROLES:
            raise DataError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        with self.write() as s:
            now = utcnow()
            s.add(Invite(token_hash=token_digest(token), role=role, created_by=created_by, created_at=now,
                         expires_at=now + ttl))

    def invite_valid(self, token: str) -> bool:
        with self.read() as s:
            invite = s.get(Invite, token_digest(token))
            return invite is not None and invite.used_at is None and invite.expires_at > utcnow()

    def accept_invite(self, token: str, name: str, password_hash: str) -> int:
        """Create the invited account; the invite works once."""
        name = check_name(name)
        try:
            with self.write() as s:
                invite = s.get(Invite, token_digest(token), with_for_update=True)
                if invite is None or invite.used_at is not None or invite.expires_at <= utcnow():
                    raise NotFound("this invite link is unknown, used or expired")
                user = User(name=name, password_hash=password_hash, role=invite.role, origin="person", active=True)
                s.add(user)
                s.flush()
                invite.used_at = utcnow()
                invite.used_by = user.id
                return user.id
        except IntegrityError:
            raise _name_taken(name) from None

    # ---- rounds, prompts, items -----------------------------------------------------
    def create_round(self, name: Optional[str] = None, *, model_name: Optional[str] = None,
                     sampling: Optional[dict] = None, note: Optional[str] = None,
                     number: Optional[int] = None) -> int:
        """A new round (numbered 1, 2, ... unless `number` is given); returns its id."""
        try:
            with self.write() as s:
                if number is None:
                    number = (s.scalar(select(func.max(Round.number))) or 0) + 1
                row = Round(number=number, name=name, model_name=model_name, sampling=sampling, note=note)
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:
            raise Conflict(f"round {number} already exists") from None

    def round_id(self, number: int) -> int:
        """The id of round `number` (as in `rounds/NNN/`)."""
        with self.read() as s:
            found = s.scalar(select(Round.id).where(Round.number == number))
            if found is None:
                raise NotFound(f"no round number {number} in the feedback store")
            return found

    def rounds(self) -> list[dict[str, Any]]:
        with self.read() as s:
            return [{"id": r.id, "number": r.number, "name": r.name, "model_name": r.model_name,
                     "sampling": r.sampling, "created_at": r.created_at.isoformat()}
                    for r in s.scalars(select(Round).order_by(Round.number))]

    def add_samples(self, round_id: Optional[int], records: Iterable[dict[str, Any]], item_kind: str = "pair", *,
                    model_name: Optional[str] = None, sampling: Optional[dict] = None,
                    overlap: Optional[int] = None, pairs_per_prompt: Optional[int] = None,
                    source: str = "sample", seed: int = 0) -> list[int]:
        """Load `{"prompt": str, "responses": [str, ...]}` records as annotation items.

        `item_kind="pair"` makes pairs of the K responses (all K(K-1)/2, or
        `pairs_per_prompt` chosen at random, or the record's own `pairs` of
        positions, `[[i, j], ...]`) in random A/B order; "ranking" makes
        one K-way item per prompt; "rating" one item per response. The model
        name and sampling settings are kept on every response. A response may
        also be a dict `{"text", "model", "sampling"}` that overrides them.
        Returns the new item ids, in order. One transaction: all or nothing.
        """
        if item_kind not in ITEM_KINDS:
            raise DataError(f"item kind must be one of {', '.join(ITEM_KINDS)}, not {item_kind!r}")
        if overlap is not None:
            check_overlap(overlap)
        reject_lone_surrogates([model_name, sampling, source], "sample settings")
        rng = random.Random(seed)
        items: list[Item] = []
        with self.write() as s:
            for index, record in enumerate(records):
                prompt, responses = _sample_record(record, index)
                if item_kind in ("pair", "ranking") and len(responses) < 2:
                    raise DataError(f"record {index + 1}: a {item_kind} item needs at least 2 responses")
                prompt_row = Prompt(round_id=round_id, text=prompt, source=source, meta=record.get("meta"),
                                    import_key=record.get("import_key"))
                s.add(prompt_row)
                rows = []
                for response in responses:
                    row = Response(prompt=prompt_row, text=response["text"],
                                   model_name=response.get("model", model_name),
                                   sampling=response.get("sampling", sampling), meta=response.get("meta"))
                    s.add(row)
                    rows.append(row)
                if item_kind == "pair":
                    chosen = _chosen_pairs(record, len(rows), f"record {index + 1}")
                    pairs = _pairs(len(rows), pairs_per_prompt, rng) if chosen is None else _random_order(chosen, rng)
                    groups = [[rows[i], rows[j]] for i, j in pairs]
                elif item_kind == "ranking":
                    groups = [rows]
                else:
                    groups = [[row] for row in rows]
                items.extend(_new_item(s, round_id, prompt_row, item_kind, group, overlap, source)
                             for group in groups)
            s.flush()
            return [item.id for item in items]

    def add_items(self, records: Sequence[dict[str, Any]], round_id: Optional[int] = None,
                  source: str = "upload") -> list[int]:
        """Load uploaded items: `{"prompt", "responses", "kind"?, "model"?, "overlap"?, "gold"?}`.

        Without `kind`: one response makes a rating item, two a pair, more a
        ranking. `gold` is `{"choice": "a"}` for a pair or `{"ranking": [positions,
        best first]}` for a ranking. A record with no responses stores the prompt
        alone (for `alignloop sample` to answer later). All or nothing.
        """
        items: list[Item] = []
        with self.write() as s:
            for index, record in enumerate(records):
                prompt, responses = _sample_record(record, index, allow_empty=True)
                overlap = record.get("overlap")
                if overlap is not None:
                    check_overlap(overlap, f"record {index + 1}: overlap")
                prompt_row = Prompt(round_id=round_id, text=prompt, source=source, meta=record.get("meta"),
                                    import_key=record.get("import_key"))
                s.add(prompt_row)
                if not responses:
                    continue
                kind = record.get("kind") or {1: "rating", 2: "pair"}.get(len(responses), "ranking")
                if kind not in ITEM_KINDS:
                    raise DataError(f"record {index + 1}: kind must be one of {', '.join(ITEM_KINDS)}")
                if kind == "pair" and len(responses) != 2 or kind == "ranking" and len(responses) < 2 \
                        or kind == "rating" and len(responses) != 1:
                    raise DataError(f"record {index + 1}: {len(responses)} responses do not make a {kind} item")
                rows = [Response(prompt=prompt_row, text=r["text"], model_name=r.get("model", record.get("model")),
                                 sampling=r.get("sampling"), meta=r.get("meta")) for r in responses]
                s.add_all(rows)
                item = _new_item(s, round_id, prompt_row, kind, rows, overlap, source)
                if record.get("gold") is not None:
                    _set_gold(s, item, record["gold"], f"record {index + 1}")
                items.append(item)
            s.flush()
            return [item.id for item in items]

    def set_gold(self, item_id: int, gold: dict[str, Any]) -> None:
        """Mark an item as gold: `{"choice": ...}` or `{"ranking": [positions best first]}`."""
        reject_lone_surrogates(gold, "gold")
        with self.write() as s:
            item = s.get(Item, item_id)
            if item is None:
                raise NotFound(f"no item with id {item_id}")
            _set_gold(s, item, gold, f"item {item_id}")

    def get_item(self, item_id: int) -> ItemView:
        with self.read() as s:
            item = s.scalar(queue.item_query().where(Item.id == item_id))
            if item is None:
                raise NotFound(f"no item with id {item_id}")
            return _item_view(item)

    def counts(self) -> dict[str, int]:
        """How many rows of each kind the store holds (for the admin page and `status`)."""
        with self.read() as s:
            return {
                "rounds": s.scalar(select(func.count()).select_from(Round)) or 0,
                "prompts": s.scalar(select(func.count()).select_from(Prompt)) or 0,
                "responses": s.scalar(select(func.count()).select_from(Response)) or 0,
                "items": s.scalar(select(func.count()).select_from(Item)) or 0,
                "queued_items": s.scalar(select(func.count()).select_from(Item).where(Item.queued.is_(True))) or 0,
                "judgments": s.scalar(select(func.count()).select_from(Judgment)) or 0,
                "users": s.scalar(select(func.count()).select_from(User)) or 0,
            }

    # ---- the annotation queue ---------------------------------------------------
    def next_assignment(self, user_id: int) -> Optional[AssignmentView]:
        """The user's open assignment, or a newly claimed item, or None when nothing is left for them.

        An item is offered to a user at most once and to at most `overlap`
        users at a time (skips give their place back). Safe under concurrency
        on both backends: see `queue.claim`.
        """
        overlap = self.overlap
        for _attempt in range(20):
            try:
                with self.write() as s:
                    assignment = queue.claim(s, user_id, overlap, postgres=self.backend == "postgresql")
                    if assignment is not None:
                        item = s.scalar(queue.item_query().where(Item.id == assignment.item_id))
                        return AssignmentView(assignment.id, assignment.status, _item_view(item))
            except IntegrityError:
                # Another transaction took the same slot between our read and our insert.
                continue
            # The candidates filled up while we looked; "nothing left" only if a fresh look agrees.
            with self.read() as s:
                if queue.available_count(s, user_id, overlap) == 0:
                    return None
        raise Conflict("too many annotators are claiming items at once; try again")

    def current_assignment(self, user_id: int) -> Optional[AssignmentView]:
        """The user's open assignment, or None; claims nothing (for pages shown on GET)."""
        with self.read() as s:
            assignment = queue.current(s, user_id)
            if assignment is None:
                return None
            item = s.scalar(queue.item_query().where(Item.id == assignment.item_id))
            return AssignmentView(assignment.id, assignment.status, _item_view(item))

    def get_assignment(self, assignment_id: int, user_id: int) -> AssignmentView:
        """One of the user's own assignments; anyone else's is reported as not found."""
        with self.read() as s:
            assignment = s.get(Assignment, assignment_id)
            if assignment is None or assignment.user_id != user_id:
                raise NotFound(f"no assignment {assignment_id} for you")
            item = s.scalar(queue.item_query().where(Item.id == assignment.item_id))
            return AssignmentView(assignment.id, assignment.status, _item_view(item))

    def submit(self, assignment_id: int, user_id: int, answer: Answer) -> int:
        """Store the judgment for one of the user's open assignments; returns the judgment id."""
        try:
            with self.write() as s:
                assignment = s.get(Assignment, assignment_id, with_for_update=True)
                if assignment is None or assignment.user_id != user_id:
                    raise NotFound(f"no assignment {assignment_id} for you")
                if assignment.status == "done":
                    raise Conflict(f"assignment {assignment_id} is already judged")
                if assignment.status != "open":
                    raise Conflict(f"assignment {assignment_id} was {assignment.status}; take the next item")
                item = s.scalar(queue.item_query().where(Item.id == assignment.item_id))
                response_ids = [slot.response_id for slot in item.slots]
                clean = validate_answer(item.kind, response_ids, answer)
                judgment = queue.record_judgment(s, assignment, clean)
                return judgment.id
        except IntegrityError:
            raise Conflict(f"assignment {assignment_id} is already judged") from None

    def skip(self, assignment_id: int, user_id: int) -> None:
        """Give an open assignment back: the item goes to someone else, never again to this user."""
        with self.write() as s:
            assignment = s.get(Assignment, assignment_id, with_for_update=True)
            if assignment is None or assignment.user_id != user_id:
                raise NotFound(f"no assignment {assignment_id} for you")
            if assignment.status != "open":
                raise Conflict(f"assignment {assignment_id} is {assignment.status}, not open")
            assignment.status, assignment.slot, assignment.finished_at = "skipped", None, utcnow()

    def progress(self, user_id: int) -> Progress:
        """Items the user judged, skipped, and could still be given (their open one included)."""
        with self.read() as s:
            counts = dict(s.execute(select(Assignment.status, func.count()).where(Assignment.user_id == user_id)
                                    .group_by(Assignment.status)).all())
            remaining = queue.available_count(s, user_id, self.overlap) + counts.get("open", 0)
            return Progress(done=counts.get("done", 0), skipped=counts.get("skipped", 0), remaining=remaining)

    # ---- imported labels -----------------------------------------------------------
    def known_import_keys(self, keys: Sequence[str]) -> set[str]:
        """The content keys among `keys` of records imported before (`Prompt.import_key`)."""
        found: set[str] = set()
        with self.read() as s:
            for start in range(0, len(keys), 500):  # stay under the database's bound-parameter limit
                chunk = list(keys[start:start + 500])
                found.update(s.scalars(select(Prompt.import_key).where(Prompt.import_key.in_(chunk))))
        return found

    def import_preferences(self, records: Sequence[dict[str, Any]], source: str,
                           round_id: Optional[int] = None) -> list[int]:
        """Store labelled pairs `{"prompt", "chosen", "rejected", "prompt_meta"?, "chosen_meta"?,
        "rejected_meta"?, "annotator"?, "strength"?}` as pair items (A = chosen) with a judgment 'a'.

        The items are not queued for annotators. Labels are attributed to a
        sign-in-less user `import:<source>` unless the record names an annotator.
        One transaction: all or nothing.
        """
        items: list[Item] = []
        with self.write() as s:
            authors: dict[str, int] = {}
            now = utcnow()
            for index, record in enumerate(records):
                reject_lone_surrogates(record, f"record {index + 1}")
                author = record.get("annotator") or f"import:{source}"
                if author not in authors:
                    authors[author] = queue.import_author(s, author)
                prompt = Prompt(round_id=round_id, text=record["prompt"], source=source,
                                meta=record.get("prompt_meta"), created_at=now, import_key=record.get("import_key"))
                chosen = Response(prompt=prompt, text=record["chosen"], meta=record.get("chosen_meta"),
                                  model_name=record.get("chosen_model"), created_at=now)
                rejected = Response(prompt=prompt, text=record["rejected"], meta=record.get("rejected_meta"),
                                    model_name=record.get("rejected_model"), created_at=now)
                item = Item(round_id=round_id, prompt=prompt, kind="pair", queued=False, source=source,
                            created_at=now, slots=[ItemResponse(position=0, response=chosen),
                                                   ItemResponse(position=1, response=rejected)])
                assignment = Assignment(item=item, user_id=authors[author], slot=None, status="done",
                                        assigned_at=now, finished_at=now)
                s.add(Judgment(item=item, assignment=assignment, user_id=authors[author], choice="a",
                               strength=record.get("strength"), created_at=now))
                items.append(item)
            s.flush()
            return [item.id for item in items]

    # ---- reading judgments back -----------------------------------------------------
    def judgment_rows(self, round_id: Optional[int] = None, include_imported: bool = True,
                      include_gold: bool = True) -> list[dict[str, Any]]:
        """Every judgment as a plain dict with its item, prompt, responses, annotator and ratings."""
        return reading.judgment_rows(self, round_id, include_imported, include_gold)

    def preference_records(self, round_id: Optional[int] = None, aggregate: str = "majority",
                           ties: str = "drop", include_imported: bool = True) -> list[dict[str, Any]]:
        """Preference pairs for reward modelling and export: `prompt`, `chosen`, `rejected`,
        `strength`, `annotator`, `round`, `tie`, ... (see `preferences.preference_records`)."""
        return preferences.preference_records(reading.judgment_rows(self, round_id, include_imported),
                                              aggregate, ties)

    def ranking_records(self, round_id: Optional[int] = None) -> list[dict[str, Any]]:
        """Each ranking judgment: `prompt`, `responses` best first, `annotator`, `round`."""
        return preferences.ranking_records(reading.judgment_rows(self, round_id))

    def rating_records(self, round_id: Optional[int] = None) -> list[dict[str, Any]]:
        """Each rated response: `prompt`, `response`, `ratings` {aspect: 1-5}, `annotator`, `round`."""
        return preferences.rating_records(reading.judgment_rows(self, round_id))

    def annotator_table(self) -> list[dict[str, Any]]:
        """Per account: done, open, skipped, remaining, mean seconds per judgment, gold accuracy."""
        table = reading.annotator_table(self)
        gold = stats.gold_accuracy(reading.judgment_rows(self, include_imported=False))
        for entry in table:
            entry["gold"] = gold.get(entry["name"])
        return table

    def agreement(self, round_id: Optional[int] = None) -> dict[str, Any]:
        """Agreement per item kind over the annotators' judgments (imported labels left out)."""
        return stats.agreement_report(reading.judgment_rows(self, round_id, include_imported=False))


def _sample_record(record: Any, index: int, allow_empty: bool = False) -> tuple[str, list[dict[str, Any]]]:
    where = f"record {index + 1}"
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with 'prompt' and 'responses'")
    reject_lone_surrogates(record, where)
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string")
    raw = record.get("responses", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise DataError(f"{where}: 'responses' must be a non-empty list")
    responses = []
    for r in raw:
        if isinstance(r, str):
            responses.append({"text": r})
        elif isinstance(r, dict) and isinstance(r.get("text"), str):
            responses.append(r)
        else:
            raise DataError(f"{where}: each response must be a string or an object with a 'text' string")
    return prompt, responses


def _new_item(s: Session, round_id: Optional[int], prompt: Prompt, kind: str, responses: list[Response],
              overlap: Optional[int], source: str, queued: bool = True) -> Item:
    item = Item(round_id=round_id, prompt=prompt, kind=kind, overlap=overlap, queued=queued, source=source,
                slots=[ItemResponse(position=p, response=r) for p, r in enumerate(responses)])
    s.add(item)
    return item


def _set_gold(s: Session, item: Item, gold: Any, where: str) -> None:
    if not isinstance(gold, dict):
        raise DataError(f"{where}: gold must be an object like {{\"choice\": \"a\"}}")
    s.flush()
    response_ids = [slot.response_id for slot in item.slots]
    choice, ranking = gold.get("choice"), None
    if item.kind == "pair":
        try:
            choice = normal_choice(choice)
        except DataError as exc:
            raise DataError(f"{where}: gold {exc}") from None
    elif item.kind == "ranking":
        positions = gold.get("ranking")
        if not isinstance(positions, list) or sorted(positions) != list(range(len(response_ids))):
            raise DataError(f"{where}: gold ranking must list the positions 0..{len(response_ids) - 1}, best first")
        ranking, choice = [response_ids[p] for p in positions], None
    else:
        raise DataError(f"{where}: rating items cannot be gold")
    existing = s.get(GoldItem, item.id)
    if existing is not None:
        s.delete(existing)
        s.flush()
    s.add(GoldItem(item_id=item.id, choice=choice, ranking=ranking, note=gold.get("note")))


def open_store(target: str | Path, *, migrate: bool = True) -> Store:
    """Open the feedback store at a SQLite path or a `postgresql+psycopg://` URL.

    A new database is created at the newest schema; an older one is upgraded
    first (Alembic migrations shipped in the package).
    """
    url = db.database_url(target)
    write_engine, read_engine = db.make_engines(url)
    try:
        if migrate:
            db.upgrade(write_engine)
        elif not db.has_schema(write_engine):
            raise AlignloopError(f"{target} is not an alignloop feedback store")
    except Exception as exc:
        write_engine.dispose()
        read_engine.dispose()
        if isinstance(exc, AlignloopError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AlignloopError(f"cannot open feedback store {target}: {first}") from None
    return Store(url, write_engine, read_engine)

