"""Baseline: the results-store schema of the first release (what ``metadata.create_all`` made before
migrations existed; ``distil_platform.storage.revisions`` stamps such a store at this revision).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cost_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("snapshot_hash", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("row", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_cost_rows_task"), "cost_rows", ["task"], unique=False)
    op.create_table(
        "llm_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_llm_cache_model"), "llm_cache", ["model"], unique=False)
    op.create_table(
        "llm_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=128), nullable=True),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("cache_key", sa.String(length=64), nullable=True),
        sa.Column("repeat", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cached_prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("tokens_counted", sa.Boolean(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_llm_requests_model"), "llm_requests", ["model"], unique=False)
    op.create_index(op.f("ix_llm_requests_run_id"), "llm_requests", ["run_id"], unique=False)
    op.create_index(op.f("ix_llm_requests_task"), "llm_requests", ["task"], unique=False)
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=True),
        sa.Column("prediction", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("score_strict", sa.Float(), nullable=True),
        sa.Column("parse_ok", sa.Boolean(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_predictions_run_id"), "predictions", ["run_id"], unique=False)
    op.create_index(op.f("ix_predictions_task"), "predictions", ["task"], unique=False)
    op.create_table(
        "price_snapshot_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_price_snapshot_activations_hash"), "price_snapshot_activations", ["hash"], unique=False
    )
    op.create_table(
        "price_snapshots",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("as_of", sa.String(length=32), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash"),
    )
    op.create_table(
        "seed_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("n_seed", sa.Integer(), nullable=False),
        sa.Column("n_test", sa.Integer(), nullable=False),
        sa.Column("seed_path", sa.Text(), nullable=False),
        sa.Column("test_path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_seed_sets_task"), "seed_sets", ["task"], unique=False)
    op.create_table(
        "throughput_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("hardware", sa.String(length=256), nullable=False),
        sa.Column("offered_rps", sa.Float(), nullable=True),
        sa.Column("achieved_rps", sa.Float(), nullable=True),
        sa.Column("p50_s", sa.Float(), nullable=True),
        sa.Column("p95_s", sa.Float(), nullable=True),
        sa.Column("p99_s", sa.Float(), nullable=True),
        sa.Column("ttft_p50_s", sa.Float(), nullable=True),
        sa.Column("ttft_p95_s", sa.Float(), nullable=True),
        sa.Column("ttft_p99_s", sa.Float(), nullable=True),
        sa.Column("output_tokens_per_s", sa.Float(), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=True),
        sa.Column("errors", sa.Integer(), nullable=True),
        sa.Column("peak_memory_gb", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_throughput_points_run_id"), "throughput_points", ["run_id"], unique=False)
    op.create_index(op.f("ix_throughput_points_task"), "throughput_points", ["task"], unique=False)
    op.create_table(
        "throughput_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("hardware", sa.String(length=256), nullable=False),
        sa.Column("hardware_key", sa.String(length=64), nullable=False),
        sa.Column("sustained_rps", sa.Float(), nullable=True),
        sa.Column("max_achieved_rps", sa.Float(), nullable=True),
        sa.Column("slo_s", sa.Float(), nullable=True),
        sa.Column("peak_memory_gb", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_throughput_profiles_run_id"), "throughput_profiles", ["run_id"], unique=False)
    op.create_index(op.f("ix_throughput_profiles_task"), "throughput_profiles", ["task"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_throughput_profiles_task"), table_name="throughput_profiles")
    op.drop_index(op.f("ix_throughput_profiles_run_id"), table_name="throughput_profiles")
    op.drop_table("throughput_profiles")
    op.drop_index(op.f("ix_throughput_points_task"), table_name="throughput_points")
    op.drop_index(op.f("ix_throughput_points_run_id"), table_name="throughput_points")
    op.drop_table("throughput_points")
    op.drop_index(op.f("ix_seed_sets_task"), table_name="seed_sets")
    op.drop_table("seed_sets")
    op.drop_table("price_snapshots")
    op.drop_index(op.f("ix_price_snapshot_activations_hash"), table_name="price_snapshot_activations")
    op.drop_table("price_snapshot_activations")
    op.drop_index(op.f("ix_predictions_task"), table_name="predictions")
    op.drop_index(op.f("ix_predictions_run_id"), table_name="predictions")
    op.drop_table("predictions")
    op.drop_index(op.f("ix_llm_requests_task"), table_name="llm_requests")
    op.drop_index(op.f("ix_llm_requests_run_id"), table_name="llm_requests")
    op.drop_index(op.f("ix_llm_requests_model"), table_name="llm_requests")
    op.drop_table("llm_requests")
    op.drop_index(op.f("ix_llm_cache_model"), table_name="llm_cache")
    op.drop_table("llm_cache")
    op.drop_index(op.f("ix_cost_rows_task"), table_name="cost_rows")
    op.drop_table("cost_rows")
