"""Stage 2 commands: `serve` the annotation app, `annotate --simulated`, `users`, `feedback import/export`.

Every command opens the run's feedback store (`RUN/feedback.db`) unless
`--db` names another SQLite file or a `postgresql+psycopg://` URL.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from alignloop.cli.common import App, ConfigOption, OverridesArgument, echo, out, reporting_errors, resolve
from alignloop.cli.stage_help import stage_epilog
from alignloop.errors import AlignloopError
from alignloop.runs import RunDir

users_app = App(help="Accounts of the annotation app (the first admin is made here).", no_args_is_help=True)
feedback_app = App(help="Move feedback in and out of the store (TRL, Anthropic HH, rich JSONL).",
                   no_args_is_help=True)

RunArg = Annotated[Optional[Path], typer.Option("--run", help="Run directory; its feedback.db is the store.")]
DbOption = Annotated[Optional[str], typer.Option(
    "--db", help="Feedback store instead of RUN/feedback.db: a SQLite path or postgresql+psycopg://USER@HOST/DB.")]
RoundOption = Annotated[Optional[int], typer.Option("--round", help="Only this round number.")]


def store_target(run: Optional[Path], db: Optional[str]) -> str:
    """Where the store is: `--db`, else RUN/feedback.db."""
    if db:
        return db
    if run is None:
        raise AlignloopError("say where the feedback store is: --run DIR or --db PATH_OR_URL")
    return str(RunDir(run).ensure().feedback_db)


def _open(run: Optional[Path], db: Optional[str]):  # noqa: ANN202
    from alignloop.feedback import open_store

    return open_store(store_target(run, db))


def serve(
    run: RunArg = None,
    db: DbOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    secure_cookies: Annotated[bool, typer.Option(
        "--secure-cookies", help="Mark cookies Secure (when served over HTTPS, e.g. behind a proxy).")] = False,
) -> None:
    """Serve the annotation web app (annotators at /queue, admins at /admin, JSON API at /api)."""
    with reporting_errors():
        from alignloop.web.app import WebSettings, create_app
        from alignloop.web.server import serve as run_server

        store = _open(run, db)
        admins = [u for u in store.list_users() if u.is_admin and u.active]
        if not admins:
            echo("no admin yet: create one with `alignloop users add NAME --admin`")
        echo(f"annotation app on http://{host}:{port}/ (store: {store.url.split('://', 1)[0]})")
        run_server(create_app(store, WebSettings(secure_cookies=secure_cookies)), host=host, port=port)


def annotate(
    run: RunArg = None,
    db: DbOption = None,
    simulated: Annotated[bool, typer.Option("--simulated", help="Let simulated annotators (personas) judge.")] = False,
    url: Annotated[Optional[str], typer.Option(
        "--url", help="A running app to annotate through (default: serve the store on loopback meanwhile).")] = None,
    config: ConfigOption = None,
    overrides: OverridesArgument = None,
) -> None:
    """Annotate the queue with simulated annotators, e.g. `--simulated personas=6 noise=1.0 careless=0.2`."""
    with reporting_errors():
        from alignloop.feedback.simulate import SimulateConfig, run_simulated

        if not simulated:
            raise AlignloopError("people annotate in the browser (`alignloop serve`); "
                                 "pass --simulated for simulated annotators")
        cfg = resolve(SimulateConfig, config, overrides)
        if run is not None:
            RunDir(run).ensure().record_config("annotate", cfg)
        with _open(run, db) as store:
            counts = run_simulated(store, cfg, base_url=url, log=echo)
            echo(f"{sum(counts.values())} judgments by {len(counts)} simulated annotators")
            agreement = store.agreement()
            alpha = agreement["pair"]["krippendorff_alpha"]
            if alpha is not None:
                echo(f"pairwise agreement (Krippendorff's alpha): {alpha:.3f}")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Account name (no spaces).")],
    run: RunArg = None,
    db: DbOption = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make an admin (else an annotator).")] = False,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input.")] = False,
) -> None:
    """Create an account; the password is asked for (there is no default password)."""
    with reporting_errors():
        from alignloop.web.security import check_password, hash_password

        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        check_password(password)
        with _open(run, db) as store:
            store.add_user(name, hash_password(password), role="admin" if admin else "annotator")
        echo(f"created {'admin' if admin else 'annotator'} {name}")


@users_app.command("list")
def users_list(run: RunArg = None, db: DbOption = None) -> None:
    """List accounts with their role, state and judgments done."""
    with reporting_errors():
        with _open(run, db) as store:
            for entry in store.annotator_table():
                state = "active" if entry["active"] else "disabled"
                out(f"{entry['name']}\t{entry['role']}\t{state}\t{entry['origin']}\tdone={entry['done']}")


@users_app.command("disable")
def users_disable(name: Annotated[str, typer.Argument(help="Account name.")], run: RunArg = None,
                  db: DbOption = None) -> None:
    """Disable an account: it is signed out and its open items go back to the queue."""
    with reporting_errors():
        with _open(run, db) as store:
            user = store.user_by_name(name)
            if user is None:
                raise AlignloopError(f"no user named {name!r}")
            store.set_active(user.id, False)
        echo(f"disabled {name}")


@feedback_app.command("import")
def feedback_import(
    path: Annotated[Path, typer.Argument(help="JSONL file to import.")],
    run: RunArg = None,
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, responses, trl or hh.")] = "auto",
    kind: Annotated[str, typer.Option(
        "--kind", help="responses only: auto (by count), pair (all pairs), ranking or rating.")] = "auto",
    round_number: RoundOption = None,
) -> None:
    """Import responses to annotate, or labelled preferences (TRL, Anthropic HH). All or nothing."""
    with reporting_errors():
        from alignloop.feedback.formats import import_file

        with _open(run, db) as store:
            round_id = None if round_number is None else store.round_id(round_number)
            summary = import_file(store, path, fmt, round_id=round_id, kind=kind)
        echo(f"imported {summary['records']} {summary['format']} records as {summary['items']} items from {path}")


@feedback_app.command("export")
def feedback_export(
    out_path: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    run: RunArg = None,
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="trl, hh or rich.")] = "trl",
    ties: Annotated[str, typer.Option("--ties", help="drop or keep (kept ties are marked \"tie\": true).")] = "drop",
    aggregate: Annotated[str, typer.Option(
        "--aggregate", help="majority (one label per pair of responses) or annotator (one per judgment).")] = "majority",
    round_number: RoundOption = None,
) -> None:
    """Export preferences (rankings expanded to all pairs) or every judgment with ratings (rich)."""
    with reporting_errors():
        from alignloop.feedback.formats import export_file
        from alignloop.feedback.preferences import AGGREGATES, TIE_POLICIES

        if ties not in TIE_POLICIES:
            raise AlignloopError(f"--ties must be one of {', '.join(TIE_POLICIES)}, not {ties!r}")
        if aggregate not in AGGREGATES:
            raise AlignloopError(f"--aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}")
        with _open(run, db) as store:
            round_id = None if round_number is None else store.round_id(round_number)
            count = export_file(store, fmt, out_path, round_id=round_id, aggregate=aggregate, ties=ties)
        echo(f"wrote {count} {fmt} records to {out_path}")


def register(app: typer.Typer) -> None:
    """Add the stage-2 commands to the main app."""
    app.command("serve")(serve)
    app.command("annotate", epilog=stage_epilog("annotate"))(annotate)
    app.add_typer(users_app, name="users")
    app.add_typer(feedback_app, name="feedback")
