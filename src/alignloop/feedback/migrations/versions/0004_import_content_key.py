"""Imported records keep their content key, so that importing the same file twice stores nothing twice.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("import_key", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_prompts_import_key"), ["import_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.drop_index(batch.f("ix_prompts_import_key"))
        batch.drop_column("import_key")
