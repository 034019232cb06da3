"""Simulated annotators working the queue through the HTTP API, exactly as people's browsers do.

Each persona of `alignloop.judges.personas` gets an account (`sim-<name>`,
origin "simulated"), signs in through `/api/login`, and loops: take the next
assignment, judge it (pairwise choice and strength, a Plackett-Luce ranking,
or Likert ratings), sometimes add a critique, submit. By default the personas
take turns, one judgment each, so a rerun on the same items makes the same
judgments; `concurrent=true` runs them side by side in threads, as people
working at once.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Callable
from typing import Any, Optional

import httpx
from pydantic import Field

from alignloop.config.base import Section
from alignloop.errors import AlignloopError
from alignloop.feedback.limits import MAX_OVERLAP
from alignloop.feedback.store import Store
from alignloop.train.crash import crash_point


class SimulateConfig(Section):
    """`alignloop annotate --simulated` settings (override as key=value)."""

    personas: int = Field(4, ge=1, le=64, description="Number of simulated annotators (personas).")
    noise: float = Field(1.0, ge=0.0, description="Bradley-Terry temperature: 0 is noiseless, larger is noisier.")
    careless: float = Field(0.0, ge=0.0, le=1.0, description="Share of personas that answer at random.")
    seed: int = Field(0, description="Seed of the personas' weights and of their noise.")
    overlap: Optional[int] = Field(None, ge=1, le=MAX_OVERLAP,
                                   description="If set, annotators per item for the whole store before starting.")
    max_judgments: Optional[int] = Field(None, ge=1, description="Stop each persona after this many judgments.")
    critique_share: float = Field(0.25, ge=0.0, le=1.0, description="Share of judgments that come with a critique.")
    rate_pairs: bool = Field(False, description="Also rate both responses of pairs on the four aspects.")
    concurrent: bool = Field(False, description="Personas work side by side in threads, as people at once; "
                             "the default takes turns in one thread, so a rerun judges the same items the same way.")
    both_bad_below: float = Field(0.45, ge=0.0, le=1.0, description="A pair is 'both bad' when a persona rates "
                                  "both responses below this quality (0 to 1; 0: always pick one).")


def ensure_accounts(store: Store, names: list[str]) -> dict[str, str]:
    """An account per simulated annotator, with a fresh random password for this run."""
    from alignloop.web.security import hash_password

    passwords = {}
    for name in names:
        password = secrets.token_urlsafe(18)
        existing = store.user_by_name(name)
        if existing is None:
            store.add_user(name, hash_password(password), role="annotator", origin="simulated")
        elif existing.origin != "simulated":
            raise AlignloopError(f"user {name!r} exists and is not a simulated annotator; rename it")
        else:
            store.set_password_hash(existing.id, hash_password(password))
            if not existing.active:
                store.set_active(existing.id, True)
        passwords[name] = password
    return passwords


def judgment_for(persona: Any, item: dict[str, Any], rng: random.Random, config: SimulateConfig) -> dict[str, Any]:
    """The API body a persona submits for one item (as `POST /api/queue/next` shows it)."""
    prompt, responses = item["prompt"], item["responses"]
    texts = [r["text"] for r in responses]
    body: dict[str, Any] = {}
    focus = texts[0]
    if item["kind"] == "pair":
        verdict = persona.judge_pair(prompt, texts[0], texts[1], rng)
        body["choice"] = verdict.choice
        if verdict.choice in ("a", "b"):
            body["strength"] = int(verdict.strength)
            focus = texts[1] if verdict.choice == "a" else texts[0]  # critique the loser
        if config.rate_pairs:
            body["ratings"] = {str(r["id"]): persona.rate(prompt, r["text"], rng) for r in responses}
    elif item["kind"] == "ranking":
        order = persona.rank(prompt, texts, rng)
        body["ranking"] = [responses[i]["id"] for i in order]
        focus = texts[order[-1]]
    else:
        body["ratings"] = {str(responses[0]["id"]): persona.rate(prompt, texts[0], rng)}
    if rng.random() < config.critique_share:
        body["critique"] = persona.critique(prompt, focus, rng)
    return body


def item_rng(seed: int, persona_index: int, item_id: Any) -> random.Random:
    """The noise of one persona's judgment of one item.

    Seeded by (seed, persona, item) rather than drawn in turn from one stream per persona: the personas work
    the queue in threads, so which items each one is served, and in what order, changes with thread timing;
    this way a persona's verdict on an item does not.
    """
    return random.Random(f"alignloop-simulate:{seed}:{persona_index}:{item_id}")


class SimulatedSession:
    """One simulated annotator signed in over HTTP, judging one assignment per `step()`."""

    def __init__(self, base_url: str, name: str, password: str, persona: Any, config: SimulateConfig,
                 persona_index: int) -> None:
        self.name, self.persona, self.config, self.index = name, persona, config, persona_index
        self.done = 0
        self._client = httpx.Client(base_url=base_url, timeout=60.0)
        login = self._client.post("/api/login", json={"name": name, "password": password})
        if login.status_code != 200:
            self._client.close()
            raise AlignloopError(f"simulated annotator {name} could not sign in: {login.status_code} {login.text}")
        self._client.headers["X-CSRF-Token"] = login.json()["csrf_token"]

    def step(self) -> bool:
        """Judge the next assignment; False when the queue has nothing left for us or the cap is reached."""
        if self.config.max_judgments is not None and self.done >= self.config.max_judgments:
            return False
        response = self._client.post("/api/queue/next")
        response.raise_for_status()
        assignment = response.json()["assignment"]
        if assignment is None:
            return False
        item = assignment["item"]
        body = judgment_for(self.persona, item, item_rng(self.config.seed, self.index, item["id"]), self.config)
        sent = self._client.post(f"/api/assignments/{assignment['id']}/judgment", json=body)
        if sent.status_code != 201:
            raise AlignloopError(f"{self.name}: judgment refused ({sent.status_code}): {sent.text}")
        self.done += 1
        crash_point(f"annotate:{self.name}:{self.done}")
        return True

    def close(self) -> None:
        """Sign out and close the connection."""
        try:
            self._client.post("/api/logout")
        except httpx.TransportError:
            pass  # the work is saved; a server that stopped after its quota has no session left to end
        finally:
            self._client.close()


def run_simulated(store: Store, config: SimulateConfig, base_url: Optional[str] = None,
                  log: Callable[[str], None] = lambda _m: None) -> dict[str, int]:
    """Let `config.personas` simulated annotators work the queue; returns judgments per account.

    Without `base_url` the app is served on a free loopback port for the
    duration, so the judgments still travel over HTTP.
    """
    from alignloop.judges.personas import default_personas

    if config.overlap is not None:
        store.set_overlap(config.overlap)
    personas = default_personas(config.personas, seed=config.seed, careless_share=config.careless,
                                temperature=config.noise, both_bad_below=config.both_bad_below)
    names = [f"sim-{p.name}" for p in personas]
    passwords = ensure_accounts(store, names)
    if base_url is None:
        from alignloop.web.app import create_app
        from alignloop.web.server import background

        with background(create_app(store)) as url:
            return _work_queue(url, personas, names, passwords, config, log)
    return _work_queue(base_url, personas, names, passwords, config, log)


def _work_queue(base_url: str, personas: list[Any], names: list[str], passwords: dict[str, str],
                config: SimulateConfig, log: Callable[[str], None]) -> dict[str, int]:
    """Sign every persona in, let them judge (in turns, or in threads with `concurrent`), sign them out."""
    sessions: list[SimulatedSession] = []
    try:
        for index, persona in enumerate(personas):
            sessions.append(SimulatedSession(base_url, names[index], passwords[names[index]], persona, config,
                                             index))
        (_run_threads if config.concurrent else _run_turns)(sessions)
    except AlignloopError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear error for whatever stopped an annotator
        raise AlignloopError(f"simulated annotation failed: {type(exc).__name__}: {exc}") from None
    finally:
        for session in sessions:
            session.close()
    for session in sessions:
        log(f"{session.name}: {session.done} judgments")
    return {session.name: session.done for session in sessions}


def _run_turns(sessions: list[SimulatedSession]) -> None:
    """One judgment per persona in turn until none has anything left: the queue sees the same claims in the
    same order every time, so which persona judges which item does not depend on thread timing."""
    active = list(sessions)
    while active:
        active = [session for session in active if session.step()]


def _run_threads(sessions: list[SimulatedSession]) -> None:
    """Each persona in a thread of its own until its queue is empty; the first error stops the others."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(session: SimulatedSession) -> None:
        try:
            while not stop.is_set() and session.step():
                pass
        except BaseException as exc:  # noqa: BLE001 - raised below, after the others stop
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(session,), name=session.name) for session in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
