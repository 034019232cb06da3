"""Load benchmark of the annotation app: concurrent annotators submitting judgments over HTTP.

    python bench/feedback_load.py --db sqlite
    python bench/feedback_load.py --db postgres     # starts a throwaway PostgreSQL on loopback
    python bench/feedback_load.py --db sqlite --kill server      # kill -9 the app server mid-load
    python bench/feedback_load.py --db postgres --kill database  # kill -9 PostgreSQL mid-load

It fills a fresh store with `judgments / overlap` pair items and `annotators`
accounts, starts `alignloop serve` on a free loopback port in a subprocess,
and lets every annotator (an asyncio task with its own HTTP client and
session) loop: POST /api/queue/next, POST the judgment, until the queue is
empty. Then it checks the database against what the server acknowledged:

- lost (acknowledged but missing): judgments acknowledged (HTTP 201) but not
  in the store;
- duplicated: a judgment stored twice for one annotator and item, or an
  acknowledged id seen twice;
- overlap_violations: items with more judgments or held slots than the
  overlap, plus annotators given the same item twice.

With `--kill server` or `--kill database`, each of `--kills` times (evenly
spread over the run) the app server or the whole PostgreSQL server is sent
SIGKILL mid-load and started again after `--down-seconds`; the clients retry
through the outage as a browser's user would. A kill is what the
acknowledged-but-missing count is about: an answer of 201 must mean the
judgment is on disk. PostgreSQL runs with its durable defaults (fsync and
synchronous_commit on) unless `--fast-postgres` asks for the test suite's
settings (fsync and synchronous_commit off), which can lose acknowledged
judgments when the database is killed.

Bounded: it stops after --max-seconds whatever happened (then `complete` is
false). Progress goes to stderr; the last line on stdout is one JSON object.
Nothing leaves the machine: server, database and clients are all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alignloop.feedback import open_store  # noqa: E402
from alignloop.feedback import pgtemp  # noqa: E402
from alignloop.web.security import hash_password  # noqa: E402

# A client gives up on a request after this long without an answer other than an outage
# (connection refused or reset, 5xx): enough for a killed server or database to come back.
OUTAGE_RETRY_S = 180.0

PASSWORD = "load-test-password"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_store(url: str, annotators: int, items: int, overlap: int) -> None:
    with open_store(url) as store:
        store.set_overlap(overlap)
        rng = random.Random(0)
        words = "the cat dog sun tree kind happy ran played shared smiled park ball friend".split()
        records = [{"prompt": f"Story {i}: Once upon a time",
                    "responses": [" ".join(rng.choices(words, k=30)), " ".join(rng.choices(words, k=30))]}
                   for i in range(items)]
        store.add_samples(store.create_round("load"), records, "pair", model_name="bench")
        # One argon2 hash shared by every account: hashing 50 passwords is not what we measure.
        shared_hash = hash_password(PASSWORD)
        for i in range(annotators):
            store.add_user(f"annotator{i:03d}", shared_hash)


class AppServer:
    """`alignloop serve` in a subprocess on a fixed loopback port, which can be killed and started again."""

    def __init__(self, url: str):
        self.url = url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen([sys.executable, "-m", "alignloop", "serve", "--db", self.url, "--host",
                                         "127.0.0.1", "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: " + (self.process.stderr.read() or b"").decode()[-2000:])
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no shutdown handler runs
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Tally:
    def __init__(self) -> None:
        self.acknowledged: list[int] = []  # judgment ids the server answered 201 for
        self.submit_ms: list[float] = []
        self.next_ms: list[float] = []
        self.errors: Counter = Counter()
        self.retries = 0
        self.kills: list[dict] = []


async def request(client: httpx.AsyncClient, tally: Tally, method: str, path: str, **kwargs):  # noqa: ANN201
    """One API call, retried on connection errors and 5xx (the server may be busy or down, never wrong)."""
    deadline = time.monotonic() + OUTAGE_RETRY_S
    attempt = 0
    while True:
        try:
            response = await client.request(method, path, **kwargs)
            if response.status_code < 500:
                return response
            tally.errors[f"http {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
        if time.monotonic() > deadline:
            raise RuntimeError(f"{method} {path} failed for {OUTAGE_RETRY_S:.0f} s")
        tally.retries += 1
        attempt += 1
        await asyncio.sleep(min(1.0, 0.05 * attempt))


async def sign_in(base: str, name: str, tally: Tally) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    client = httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits)
    login = await request(client, tally, "POST", "/api/login", json={"name": name, "password": PASSWORD})
    login.raise_for_status()
    client.headers["X-CSRF-Token"] = login.json()["csrf_token"]
    return client


async def annotator(client: httpx.AsyncClient, tally: Tally, deadline: float, rng: random.Random) -> int:
    done = 0
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            got = await request(client, tally, "POST", "/api/queue/next")
            tally.next_ms.append((time.perf_counter() - start) * 1000)
            got.raise_for_status()
            assignment = got.json()["assignment"]
            if assignment is None:
                break
            body = {"choice": rng.choice(["a", "b", "a", "b", "tie"]), "strength": rng.randint(1, 3)}
            start = time.perf_counter()
            sent = await request(client, tally, "POST", f"/api/assignments/{assignment['id']}/judgment", json=body)
            tally.submit_ms.append((time.perf_counter() - start) * 1000)
            if sent.status_code == 201:
                tally.acknowledged.append(sent.json()["judgment_id"])
                done += 1
            elif sent.status_code == 409:
                # A retried POST whose first attempt had gone through: the store has it.
                tally.errors["409 after retry"] += 1
            else:
                tally.errors[f"submit {sent.status_code}"] += 1
    finally:
        await client.aclose()
    return done


async def killer(victim, tally: Tally, thresholds: list[int], down_seconds: float) -> None:
    """Kill `victim` (app server or database) with SIGKILL when the acknowledged count passes each
    threshold, then start it again after `down_seconds`."""
    for threshold in thresholds:
        while len(tally.acknowledged) < threshold:
            await asyncio.sleep(0.05)
        acknowledged = len(tally.acknowledged)
        await asyncio.to_thread(victim.kill)
        log(f"  killed the {type(victim).__name__} with SIGKILL after {acknowledged} acknowledged judgments")
        await asyncio.sleep(down_seconds)
        started = time.perf_counter()
        await asyncio.to_thread(victim.start)
        tally.kills.append({"after_acknowledged": acknowledged,
                            "restart_s": round(time.perf_counter() - started, 1)})
        log(f"  started it again in {time.perf_counter() - started:.1f} s")


async def run_clients(base: str, annotators: int, max_seconds: float, tally: Tally, victim=None,  # noqa: ANN001
                      thresholds: tuple[int, ...] = (), down_seconds: float = 1.0) -> float:
    """Sign everyone in first (argon2 is slow on purpose and not what we measure), then annotate."""
    deadline = time.monotonic() + max_seconds
    clients = await asyncio.gather(*(sign_in(base, f"annotator{i:03d}", tally) for i in range(annotators)))
    log(f"  {annotators} annotators signed in")
    started = time.perf_counter()
    tasks = [annotator(client, tally, deadline, random.Random(i)) for i, client in enumerate(clients)]

    async def report() -> None:
        while True:
            await asyncio.sleep(10)
            log(f"  {len(tally.acknowledged)} judgments after {time.perf_counter() - started:.0f} s")

    reporter = asyncio.create_task(report())
    kills = asyncio.create_task(killer(victim, tally, list(thresholds), down_seconds)) if victim else None
    try:
        await asyncio.gather(*tasks)
        if kills is not None:
            await kills  # every kill happened (the last thresholds are below the target)
    finally:
        reporter.cancel()
        if kills is not None:
            kills.cancel()
    return time.perf_counter() - started


def verify(url: str, acknowledged: list[int], overlap: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from alignloop.feedback.models import Assignment, Judgment

    with open_store(url) as store, store.read() as s:
        stored = set(s.scalars(select(Judgment.id)))
        per_pair = s.execute(select(Judgment.item_id, Judgment.user_id, func.count())
                             .group_by(Judgment.item_id, Judgment.user_id)).all()
        per_item = s.execute(select(Judgment.item_id, func.count()).group_by(Judgment.item_id)).all()
        slots = s.execute(select(Assignment.item_id, func.count()).where(Assignment.slot.is_not(None))
                          .group_by(Assignment.item_id)).all()
        seen_twice = s.execute(select(Assignment.item_id, Assignment.user_id, func.count())
                               .group_by(Assignment.item_id, Assignment.user_id)).all()
    ack = Counter(acknowledged)
    return {
        "stored": len(stored),
        "lost": sum(1 for j in ack if j not in stored),
        "duplicated": sum(n - 1 for n in ack.values() if n > 1) + sum(n - 1 for *_k, n in per_pair if n > 1),
        "overlap_violations": sum(1 for _i, n in per_item if n > overlap) + sum(1 for _i, n in slots if n > overlap)
        + sum(1 for *_k, n in seen_twice if n > 1),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--judgments", type=int, default=5000)
    parser.add_argument("--overlap", type=int, default=5, help="annotators per item; items = judgments / overlap")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop the clients after this long")
    parser.add_argument("--kill", choices=["server", "database"], default=None,
                        help="SIGKILL the app server or the PostgreSQL server mid-load, then start it again")
    parser.add_argument("--kills", type=int, default=1, help="how many kills, evenly spread over the run")
    parser.add_argument("--down-seconds", type=float, default=1.0, help="how long the killed server stays down")
    parser.add_argument("--fast-postgres", action="store_true",
                        help="PostgreSQL with fsync and synchronous_commit off (the tests' settings), not its "
                             "durable defaults")
    args = parser.parse_args()
    if args.judgments % args.overlap:
        parser.error("--judgments must be a multiple of --overlap")
    if args.kill == "database" and args.db != "postgres":
        parser.error("--kill database needs --db postgres (SQLite lives inside the app server: --kill server)")
    items = args.judgments // args.overlap
    thresholds = tuple(args.judgments * (i + 1) // (args.kills + 1) for i in range(args.kills)) if args.kill else ()

    database = None
    with contextlib.ExitStack() as stack:
        if args.db == "sqlite":
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="alignloop-load-"))
            url = str(Path(folder) / "feedback.db")
        else:
            reason = pgtemp.unavailable_reason()
            if reason:
                sys.exit(f"cannot run against PostgreSQL: {reason}")
            database = stack.enter_context(pgtemp.postgres_server("alignloop_load", durable=not args.fast_postgres))
            url = database.url("alignloop_load")
            log(f"PostgreSQL: {database.settings}")
        log(f"{args.db}: {items} pair items, overlap {args.overlap}, {args.annotators} annotators")
        fill_store(url, args.annotators, items, args.overlap)
        app_server = AppServer(url)
        stack.callback(app_server.stop)
        app_server.start()
        tally = Tally()
        victim = {"server": app_server, "database": database}.get(args.kill) if args.kill else None
        elapsed = asyncio.run(run_clients(app_server.base, args.annotators, args.max_seconds, tally, victim,
                                          thresholds, args.down_seconds))
        checks = verify(url, tally.acknowledged, args.overlap)

    result = {
        "db": args.db,
        "postgres": database.settings if database else None,
        "kill": args.kill,
        "kills": tally.kills,
        "acknowledged_but_missing": checks["lost"],
        "annotators": args.annotators,
        "overlap": args.overlap,
        "target_judgments": args.judgments,
        "judgments": len(tally.acknowledged),
        "complete": checks["stored"] == args.judgments,
        "lost": checks["lost"],
        "duplicated": checks["duplicated"],
        "overlap_violations": checks["overlap_violations"],
        "p50_ms": round(percentile(tally.submit_ms, 0.50), 1),
        "p95_ms": round(percentile(tally.submit_ms, 0.95), 1),
        "next_p50_ms": round(percentile(tally.next_ms, 0.50), 1),
        "next_p95_ms": round(percentile(tally.next_ms, 0.95), 1),
        "judgments_per_s": round(len(tally.acknowledged) / elapsed, 1) if elapsed else None,
        "seconds": round(elapsed, 1),
        "retries": tally.retries,
        "errors": dict(tally.errors),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
