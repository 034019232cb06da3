"""Load benchmark of the annotation app: concurrent annotators submitting judgments over HTTP.

    python bench/feedback_load.py --db sqlite
    python bench/feedback_load.py --db postgres     # starts a throwaway PostgreSQL on loopback

It fills a fresh store with `judgments / overlap` pair items and `annotators`
accounts, starts `alignloop serve` on a free loopback port in a subprocess,
and lets every annotator (an asyncio task with its own HTTP client and
session) loop: GET /api/queue/next, POST the judgment, until the queue is
empty. Then it checks the database against what the server acknowledged:

- lost: judgments acknowledged (HTTP 201) but not in the store;
- duplicated: a judgment stored twice for one annotator and item, or an
  acknowledged id seen twice;
- overlap_violations: items with more judgments or held slots than the
  overlap, plus annotators given the same item twice.

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


@contextlib.contextmanager
def server(url: str):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "alignloop", "serve", "--db", url, "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: " + (process.stderr.read() or b"").decode()[-2000:])
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Tally:
    def __init__(self) -> None:
        self.acknowledged: list[int] = []  # judgment ids the server answered 201 for
        self.submit_ms: list[float] = []
        self.next_ms: list[float] = []
        self.errors: Counter = Counter()
        self.retries = 0


async def request(client: httpx.AsyncClient, tally: Tally, method: str, path: str, **kwargs):  # noqa: ANN201
    """One API call, retried on connection errors and 5xx (the server may be busy, never wrong)."""
    for attempt in range(6):
        try:
            response = await client.request(method, path, **kwargs)
            if response.status_code < 500:
                return response
            tally.errors[f"http {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
        tally.retries += 1
        await asyncio.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"{method} {path} failed 6 times")


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
            got = await request(client, tally, "GET", "/api/queue/next")
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


async def run_clients(base: str, annotators: int, max_seconds: float, tally: Tally) -> float:
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
    try:
        await asyncio.gather(*tasks)
    finally:
        reporter.cancel()
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
    args = parser.parse_args()
    if args.judgments % args.overlap:
        parser.error("--judgments must be a multiple of --overlap")
    items = args.judgments // args.overlap

    with contextlib.ExitStack() as stack:
        if args.db == "sqlite":
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="alignloop-load-"))
            url = str(Path(folder) / "feedback.db")
        else:
            reason = pgtemp.unavailable_reason()
            if reason:
                sys.exit(f"cannot run against PostgreSQL: {reason}")
            url = stack.enter_context(pgtemp.temporary_postgres("alignloop_load"))
        log(f"{args.db}: {items} pair items, overlap {args.overlap}, {args.annotators} annotators")
        fill_store(url, args.annotators, items, args.overlap)
        base = stack.enter_context(server(url))
        tally = Tally()
        elapsed = asyncio.run(run_clients(base, args.annotators, args.max_seconds, tally))
        checks = verify(url, tally.acknowledged, args.overlap)

    result = {
        "db": args.db,
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
