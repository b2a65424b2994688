"""Student lineage, routing results; endpoint identity on the LLM cache/requests; per-item cached
prompt tokens, metric and confidence on predictions.

Idempotent: a store that ``metadata.create_all`` made while these columns were being added (before
migrations existed) already has some of them; it is stamped at 0001 and only what it lacks is added.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS = [
    ("llm_cache", lambda: sa.Column("identity", sa.Text(), nullable=True)),
    ("llm_requests", lambda: sa.Column("identity", sa.Text(), nullable=True)),
    ("predictions", lambda: sa.Column("cached_prompt_tokens", sa.Integer(), nullable=True)),
    ("predictions", lambda: sa.Column("metric", sa.String(length=128), nullable=True)),
    ("predictions", lambda: sa.Column("confidence", sa.Float(), nullable=True)),
]


def _tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    tables = _tables()
    if "routing_results" not in tables:
        op.create_table(
            "routing_results",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("task", sa.String(length=128), nullable=False),
            sa.Column("run_id", sa.String(length=64), nullable=True),
            sa.Column("cost_table_id", sa.String(length=64), nullable=True),
            sa.Column("snapshot_hash", sa.String(length=64), nullable=True),
            sa.Column("summary", sa.JSON(), nullable=False),
            sa.Column("policies", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(op.f("ix_routing_results_run_id"), "routing_results", ["run_id"], unique=False)
        op.create_index(op.f("ix_routing_results_task"), "routing_results", ["task"], unique=False)
    if "student_lineage" not in tables:
        op.create_table(
            "student_lineage",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("run_id", sa.String(length=64), nullable=True),
            sa.Column("task", sa.String(length=128), nullable=False),
            sa.Column("stage", sa.String(length=64), nullable=False),
            sa.Column("variant", sa.String(length=32), nullable=True),
            sa.Column("model", sa.String(length=256), nullable=False),
            sa.Column("student_run_id", sa.String(length=64), nullable=True),
            sa.Column("checkpoint_path", sa.Text(), nullable=True),
            sa.Column("checkpoint_fingerprint", sa.String(length=64), nullable=True),
            sa.Column("use_synthetic", sa.Boolean(), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(op.f("ix_student_lineage_run_id"), "student_lineage", ["run_id"], unique=False)
        op.create_index(op.f("ix_student_lineage_task"), "student_lineage", ["task"], unique=False)
    for table, column in NEW_COLUMNS:
        col = column()
        if col.name not in _columns(table):
            op.add_column(table, col)


def downgrade() -> None:
    for table, column in reversed(NEW_COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column().name)
    op.drop_index(op.f("ix_student_lineage_task"), table_name="student_lineage")
    op.drop_index(op.f("ix_student_lineage_run_id"), table_name="student_lineage")
    op.drop_table("student_lineage")
    op.drop_index(op.f("ix_routing_results_task"), table_name="routing_results")
    op.drop_index(op.f("ix_routing_results_run_id"), table_name="routing_results")
    op.drop_table("routing_results")
