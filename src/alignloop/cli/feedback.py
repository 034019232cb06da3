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
PasswordStdin = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from the first line of standard input (where there is no terminal).")]


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
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port, printed).")] = 8000,
    secure_cookies: Annotated[bool, typer.Option(
        "--secure-cookies", help="Mark cookies Secure (when served over HTTPS, e.g. behind a proxy).")] = False,
    public_url: Annotated[Optional[str], typer.Option(
        "--public-url", help="The URL people use, e.g. https://annotate.example.org: invite links use it and "
                             "its host is accepted in the Host header.")] = None,
    forwarded_allow_ips: Annotated[Optional[str], typer.Option(
        "--forwarded-allow-ips", help="Comma-separated addresses of reverse proxies whose X-Forwarded-For and "
                                      "X-Forwarded-Proto are believed (e.g. 127.0.0.1).")] = None,
) -> None:
    """Serve the annotation web app (annotators at /queue, admins at /admin, JSON API at /api).

    Deploying it on a network: docs/security.md."""
    with reporting_errors():
        from alignloop.web.app import WebSettings, create_app
        from alignloop.web.server import bind, bound_port, url_of
        from alignloop.web.server import serve as run_server

        settings = WebSettings(secure_cookies=secure_cookies, public_url=public_url,
                               forwarded_allow_ips=forwarded_allow_ips)
        store = _open(run, db)
        # Bound before anything is printed: a port in use is one line and exit 2, and port 0 is reported as bound.
        sock = bind(host, port)
        admins = [u for u in store.list_users() if u.is_admin and u.active]
        if not admins:
            echo("no admin yet: create one with `alignloop users add NAME --admin`")
        where = f" (public URL {settings.public_url})" if settings.public_url else ""
        echo(f"annotation app on {url_of(host, bound_port(sock))}/{where} (store: {store.url.split('://', 1)[0]})")
        run_server(create_app(store, settings), sock)


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
    password_stdin: PasswordStdin = False,
) -> None:
    """Create an account; the password is asked for (there is no default password)."""
    with reporting_errors():
        from alignloop.web.security import hash_password

        password = _read_password(password_stdin)
        with _open(run, db) as store:
            name = store.check_new_name(name)
            password_hash = hash_password(password, name)
            store.add_user(name, password_hash, role="admin" if admin else "annotator")
        echo(f"created {'admin' if admin else 'annotator'} {name}")


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin, or asked twice on the terminal (never echoed)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise AlignloopError("no terminal to ask for the password on: pipe it in with --password-stdin")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _user_named(store, name: str):  # noqa: ANN001, ANN202
    user = store.user_by_name(name)
    if user is None:
        raise AlignloopError(f"no user named {name!r}")
    return user


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(help="Account name.")],
    run: RunArg = None,
    db: DbOption = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Set an account's password (asked for); every session of that account is signed out."""
    with reporting_errors():
        from alignloop.web.security import hash_password

        password = _read_password(password_stdin)
        with _open(run, db) as store:
            user = _user_named(store, name)
            ended = store.change_password(user.id, hash_password(password, user.name))
        echo(f"new password set for {user.name}; {ended} session(s) signed out")


@users_app.command("enable")
def users_enable(name: Annotated[str, typer.Argument(help="Account name.")], run: RunArg = None,
                 db: DbOption = None) -> None:
    """Enable a disabled account again (it signs in with its old password)."""
    _set_active(name, run, db, True)


def _set_active(name: str, run: Optional[Path], db: Optional[str], active: bool) -> None:
    with reporting_errors():
        with _open(run, db) as store:
            store.set_active(_user_named(store, name).id, active)
        echo(f"{'enabled' if active else 'disabled'} {name}")


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
    _set_active(name, run, db, False)


@feedback_app.command("import")
def feedback_import(
    path: Annotated[Path, typer.Argument(help="JSONL file to import (.jsonl.gz too).")],
    run: RunArg = None,
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, responses, trl or hh.")] = "auto",
    kind: Annotated[str, typer.Option(
        "--kind", help="responses only: auto (by count), pair (all pairs), ranking or rating.")] = "auto",
    round_number: RoundOption = None,
) -> None:
    """Import responses to annotate, or labelled preferences (TRL, Anthropic HH). All or nothing;
    records imported before are not stored again."""
    with reporting_errors():
        from alignloop.feedback.formats import apply_import, describe_import, read_import_file

        plan = read_import_file(path, fmt, kind)  # every line checked before the store is opened
        with _open(run, db) as store:
            round_id = None if round_number is None else store.round_id(round_number)
            summary = apply_import(store, plan, round_id)
        echo(describe_import(summary, str(path)))


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
