"""Web hardening: account names compared by a normalised key; per-item overlap within 1-50.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Existing names are keyed as new ones are (feedback/names.py). Two existing
accounts whose names now compare equal both keep working: the older one keeps
the plain key, the newer ones get the key with a newline and their id appended,
which no valid name can produce (a key never holds whitespace).
Items whose overlap is above 50 get 50; below 1, the store's default.
"""

import sqlalchemy as sa
from alembic import op

from alignloop.feedback.names import MAX_KEY, name_key

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MAX_OVERLAP = 50  # the value of queue.MAX_OVERLAP when this migration was written


def upgrade() -> None:
    op.add_column("users", sa.Column("name_key", sa.String(length=255), nullable=True))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("name", sa.String),
                     sa.column("name_key", sa.String))
    connection = op.get_bind()
    taken: set[str] = set()
    for user_id, name in connection.execute(sa.select(users.c.id, users.c.name).order_by(users.c.id)).all():
        key = name_key(name)[:MAX_KEY - 24]
        if key in taken:
            key = f"{key}\n#{user_id}"
        taken.add(key)
        connection.execute(users.update().where(users.c.id == user_id).values(name_key=key))
    op.create_index("ix_users_name_key", "users", ["name_key"], unique=True)

    items = sa.table("items", sa.column("overlap", sa.Integer))
    connection.execute(items.update().where(items.c.overlap > MAX_OVERLAP).values(overlap=MAX_OVERLAP))
    connection.execute(items.update().where(items.c.overlap < 1).values(overlap=None))


def downgrade() -> None:
    op.drop_index("ix_users_name_key", table_name="users")
    # A plain ALTER TABLE (SQLite >= 3.35 has DROP COLUMN): a batch copy of `users` would drop the
    # table, and with foreign keys on that deletes every assignment and judgment by cascade.
    op.drop_column("users", "name_key")
