"""Opening the feedback database: SQLite by default, PostgreSQL by URL, always migrated to head.

SQLite is set up for many concurrent web requests: WAL (readers never wait
for the writer), a busy timeout (writers queue instead of failing), foreign
keys on, and write transactions that start with `BEGIN IMMEDIATE` so a
transaction never fails half-way when it upgrades from reading to writing.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from alignloop.errors import AlignloopError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL for a file path (SQLite) or a URL (`postgresql+psycopg://...`)."""
    text = str(target)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        if path.is_dir():
            raise AlignloopError(f"feedback store {path} is a directory, not a database file")
        if path.is_file() and path.stat().st_size == 0:
            # SQLite would quietly make a new, empty store in its place: every judgment would seem gone.
            raise AlignloopError(f"feedback store {path} is an empty file (0 bytes): it was truncated; restore it "
                                 f"from a backup (or delete it to start a new, empty store)")
        return f"sqlite:///{path}"
    if text.startswith("postgresql://") or text.startswith("postgres://"):
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        text = "postgresql+psycopg://" + text.split("://", 1)[1]
    try:
        make_url(text)
    except ArgumentError:
        raise AlignloopError(f"not a database URL or path: {text!r}") from None
    return text


def private_file(path: Path) -> None:
    """Create `path` (if missing) and keep it and SQLite's -wal/-shm beside it readable by the owner only.

    The store holds password hashes and CSRF tokens. SQLite gives the -wal and
    -shm files the database file's mode, so making the database 0600 before
    SQLite first opens it covers them; files an older version left 0644 are
    tightened here too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.stat().st_mode & 0o077 and file.stat().st_uid == os.geteuid():
                file.chmod(0o600)
        except FileNotFoundError:
            pass


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        private_file(Path(path))
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
                           pool_size=20, max_overflow=40)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):  # noqa: ANN001
        # Let SQLAlchemy's begin event, not the driver, decide when a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(write engine, read engine). They are one engine except on SQLite."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False)
    if backend == "postgresql":
        engine = create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)
        return engine, engine
    raise AlignloopError(f"unsupported feedback database {backend!r}: use a SQLite path or postgresql+psycopg://")


def alembic_config(connection=None):  # noqa: ANN001, ANN201
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to `revision`, in one transaction."""
    from alembic import command

    if revision == "head" and current_revision(engine) == head_revision():
        return
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def has_schema(engine: Engine) -> bool:
    return "alembic_version" in inspect(engine).get_table_names()
