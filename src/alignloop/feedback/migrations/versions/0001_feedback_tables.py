"""Feedback tables: rounds, prompts, responses, items, users, assignments, judgments, ratings, gold, settings.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _pk(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*columns, name=op.f(f"pk_{table}"))


def _fk(table: str, column: str, target: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"),
                                   ondelete=ondelete)


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(), nullable=False)


def _index(table: str, column: str) -> None:
    op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("model_name", sa.String(length=500), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        _created(),
        _pk("rounds", "id"),
        sa.UniqueConstraint("number", name=op.f("uq_rounds_number")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        _pk("settings", "key"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        _created(),
        sa.CheckConstraint("role IN ('admin', 'annotator')", name=op.f("ck_users_role")),
        _pk("users", "id"),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        _created(),
        _fk("prompts", "round_id", "rounds"),
        _pk("prompts", "id"),
    )
    _index("prompts", "round_id")
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(length=500), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        _created(),
        _fk("responses", "prompt_id", "prompts"),
        _pk("responses", "id"),
    )
    _index("responses", "prompt_id")
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=True),
        sa.Column("queued", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=True),
        _created(),
        sa.CheckConstraint("kind IN ('pair', 'ranking', 'rating')", name=op.f("ck_items_kind")),
        _fk("items", "prompt_id", "prompts"),
        _fk("items", "round_id", "rounds"),
        _pk("items", "id"),
    )
    _index("items", "prompt_id")
    _index("items", "round_id")
    op.create_table(
        "item_responses",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.Integer(), nullable=False),
        _fk("item_responses", "item_id", "items"),
        _fk("item_responses", "response_id", "responses"),
        _pk("item_responses", "item_id", "position"),
        sa.UniqueConstraint("item_id", "response_id", name=op.f("uq_item_responses_item_id_response_id")),
    )
    _index("item_responses", "response_id")
    op.create_table(
        "gold_items",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=True),
        sa.Column("ranking", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        _created(),
        _fk("gold_items", "item_id", "items"),
        _pk("gold_items", "item_id"),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("assigned_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        _fk("assignments", "item_id", "items"),
        _fk("assignments", "user_id", "users"),
        _pk("assignments", "id"),
        # What keeps concurrent claims within the overlap, and one person off an item they saw.
        sa.UniqueConstraint("item_id", "slot", name=op.f("uq_assignments_item_id_slot")),
        sa.UniqueConstraint("item_id", "user_id", name=op.f("uq_assignments_item_id_user_id")),
    )
    op.create_index("ix_assignments_user_status", "assignments", ["user_id", "status"], unique=False)
    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=True),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=True),
        sa.Column("strength", sa.Integer(), nullable=True),
        sa.Column("ranking", sa.JSON(), nullable=True),
        sa.Column("critique", sa.Text(), nullable=True),
        sa.Column("rewrite", sa.Text(), nullable=True),
        sa.Column("time_spent_ms", sa.Integer(), nullable=True),
        _created(),
        sa.CheckConstraint("choice IS NULL OR choice IN ('a', 'b', 'tie', 'both_bad')", name=op.f("ck_judgments_choice")),
        sa.CheckConstraint("strength IS NULL OR (strength >= 1 AND strength <= 3)", name=op.f("ck_judgments_strength")),
        _fk("judgments", "assignment_id", "assignments", ondelete="SET NULL"),
        _fk("judgments", "item_id", "items"),
        _fk("judgments", "user_id", "users"),
        _pk("judgments", "id"),
        sa.UniqueConstraint("assignment_id", name=op.f("uq_judgments_assignment_id")),
        sa.UniqueConstraint("item_id", "user_id", name=op.f("uq_judgments_item_id_user_id")),
    )
    _index("judgments", "item_id")
    _index("judgments", "user_id")
    op.create_table(
        "aspect_ratings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("judgment_id", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.Integer(), nullable=False),
        sa.Column("aspect", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.CheckConstraint("score >= 1 AND score <= 5", name=op.f("ck_aspect_ratings_score")),
        _fk("aspect_ratings", "judgment_id", "judgments"),
        _fk("aspect_ratings", "response_id", "responses"),
        _pk("aspect_ratings", "id"),
        sa.UniqueConstraint("judgment_id", "response_id", "aspect",
                            name=op.f("uq_aspect_ratings_judgment_id_response_id_aspect")),
    )
    _index("aspect_ratings", "judgment_id")


def downgrade() -> None:
    for table in ("aspect_ratings", "judgments", "assignments", "gold_items", "item_responses", "items",
                  "responses", "prompts", "users", "settings", "rounds"):
        op.drop_table(table)
