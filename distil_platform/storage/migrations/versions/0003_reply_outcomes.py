"""Reply outcomes: finish_reason and reasoning tokens on LLM requests and predictions; timed-out
attempts per LLM request.

Idempotent like 0002: only the columns a store lacks are added.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NEW_COLUMNS = [
    ("llm_requests", lambda: sa.Column("finish_reason", sa.String(length=32), nullable=True)),
    ("llm_requests", lambda: sa.Column("reasoning_tokens", sa.Integer(), nullable=True)),
    ("llm_requests", lambda: sa.Column("timeouts", sa.Integer(), nullable=True)),
    ("predictions", lambda: sa.Column("finish_reason", sa.String(length=32), nullable=True)),
    ("predictions", lambda: sa.Column("reasoning_tokens", sa.Integer(), nullable=True)),
]


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    for table, column in NEW_COLUMNS:
        col = column()
        if col.name not in _columns(table):
            op.add_column(table, col)


def downgrade() -> None:
    for table, column in reversed(NEW_COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column().name)
