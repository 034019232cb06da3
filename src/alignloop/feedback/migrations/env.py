"""Alembic environment: runs on the connection handed over by `alignloop.feedback.db.upgrade`.

Developers can also run `alembic -c src/alignloop/feedback/alembic.ini -x url=URL upgrade head`.
"""

from alembic import context
from sqlalchemy import create_engine, text

from alignloop.feedback.models import Base

config = context.config
target_metadata = Base.metadata


def _migrate(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      transaction_per_migration=False)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes opening a new database at once take turns.
            connection.execute(text("SELECT pg_advisory_xact_lock(704201)"))
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _migrate(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        _migrate(conn)
