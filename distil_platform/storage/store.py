"""Results store (SQLAlchemy). SQLite at ``$DAGSTER_HOME/results.db`` by default; any SQLAlchemy URL
via env ``DISTIL_DB_URL``.

Every stage writes what it measured here: seed-set snapshots, the LLM response cache, per-request
usage, per-item predictions and scores, throughput profiles, price snapshots and cost rows.
Re-pricing reads usage and throughput from here and never calls a model.

To extend: add a ``Table`` or ``Column`` to ``metadata`` below and a migration for it
(``python -m distil_platform.storage.migrate revision -m ...``); ``ResultsStore`` upgrades the database on open.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine

metadata = MetaData()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _created() -> Column:
    return Column("created_at", DateTime(timezone=True), default=_now, nullable=False)


seed_sets = Table(
    "seed_sets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task", String(128), nullable=False, index=True),
    Column("run_id", String(64)),
    Column("source", String(256), nullable=False),
    Column("n_seed", Integer, nullable=False),
    Column("n_test", Integer, nullable=False),
    Column("seed_path", Text, nullable=False),
    Column("test_path", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    _created(),
)

# Response cache: key = hash(model, endpoint identity, messages, tools, decoding params, repeat index).
# ``identity``: what answered (checkpoint hash, backend, dtype/quantization of a served model, or the
# endpoint URL); None for provider models, whose model string names them.
llm_cache = Table(
    "llm_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("model", String(256), nullable=False, index=True),
    Column("response", JSON, nullable=False),
    Column("identity", Text),
    _created(),
)

# One row per request actually made or served from cache.
llm_requests = Table(
    "llm_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(64), index=True),
    Column("task", String(128), index=True),
    Column("stage", String(64)),
    Column("model", String(256), nullable=False, index=True),
    Column("cache_key", String(64)),
    Column("repeat", Integer, default=0),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cached_prompt_tokens", Integer),  # prompt tokens the provider served from its prompt cache
    Column("identity", Text),  # the endpoint identity of the cache key (see llm_cache)
    Column("tokens_counted", Boolean, default=False),  # True: counted locally, not reported by server
    Column("latency_s", Float),
    Column("cost_usd", Float),
    Column("cache_hit", Boolean, default=False),
    Column("error", Text),
    # Why generation stopped ("stop", "length" = cut at max_tokens, "content_filter", ...; None: not
    # sent), reasoning tokens the provider reported (inside completion_tokens), and how many attempts
    # of the request timed out (each may have been billed). See distil_platform.llm.client.
    Column("finish_reason", String(32)),
    Column("reasoning_tokens", Integer),
    Column("timeouts", Integer),
    _created(),
)

# Per-item, per-repeat predictions and scores of a model on a task's test set.
predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(64), index=True),
    Column("task", String(128), nullable=False, index=True),
    Column("stage", String(64), nullable=False),  # student_eval / baseline_evals / throughput_fp8 ...
    Column("model", String(256), nullable=False),
    Column("variant", String(64), default=""),
    Column("item_id", String(128), nullable=False),
    Column("repeat", Integer, default=0),
    Column("prediction", Text),
    Column("reference", Text),
    Column("score", Float),  # NaN/None = unscorable (e.g. unparseable judge verdict)
    Column("score_strict", Float),
    Column("parse_ok", Boolean),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("latency_s", Float),
    Column("error", Text),
    Column("cached_prompt_tokens", Integer),
    # The metric that produced ``score`` for this item: the task's metric name, "llm_judge", or
    # "fallback:<metric>" when the judge gave no verdict; scores of different metrics never pair.
    Column("metric", String(128)),
    # The student's confidence in its answer, from token logprobs (routing.answer_confidence); None when
    # the serving backend returned no logprobs, and for comparison models.
    Column("confidence", Float),
    # The reply's finish_reason ("length": cut at max_tokens) and reasoning tokens. An empty reply
    # (no text; prediction "" or NULL with no error) is unscorable: score NULL (evaluation module).
    Column("finish_reason", String(32)),
    Column("reasoning_tokens", Integer),
    _created(),
)

throughput_points = Table(
    "throughput_points",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(64), index=True),
    Column("task", String(128), nullable=False, index=True),
    Column("model", String(256), nullable=False),
    Column("variant", String(32), nullable=False),  # bf16 / fp8
    Column("backend", String(32), nullable=False),
    Column("hardware", String(256), nullable=False),
    Column("offered_rps", Float),
    Column("achieved_rps", Float),
    Column("p50_s", Float),
    Column("p95_s", Float),
    Column("p99_s", Float),
    Column("ttft_p50_s", Float),
    Column("ttft_p95_s", Float),
    Column("ttft_p99_s", Float),
    Column("output_tokens_per_s", Float),
    Column("requests", Integer),
    Column("errors", Integer),
    Column("peak_memory_gb", Float),
    _created(),
)

throughput_profiles = Table(
    "throughput_profiles",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(64), index=True),
    Column("task", String(128), nullable=False, index=True),
    Column("model", String(256), nullable=False),
    Column("variant", String(32), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("hardware", String(256), nullable=False),
    Column("hardware_key", String(64), nullable=False),  # key into pricing hardware $/hour
    Column("sustained_rps", Float),
    Column("max_achieved_rps", Float),
    Column("slo_s", Float),
    Column("peak_memory_gb", Float),
    Column("accuracy", Float),
    _created(),
)

# Which student checkpoint a stage measured: one row per ``<task>_student_eval`` run and per
# ``<task>_throughput`` variant (its fp8 eval shares the throughput run). The cost table ties each
# student row to one checkpoint through it and refuses throughput measured on another one.
student_lineage = Table(
    "student_lineage",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(64), index=True),  # the eval / throughput run
    Column("task", String(128), nullable=False, index=True),
    Column("stage", String(64), nullable=False),  # student_eval / throughput
    Column("variant", String(32)),  # bf16 / fp8
    Column("model", String(256), nullable=False),  # the served name
    Column("student_run_id", String(64)),  # the <task>_student run that trained the checkpoint
    Column("checkpoint_path", Text),
    Column("checkpoint_fingerprint", String(64)),  # costs.checkpoint_fingerprint
    Column("use_synthetic", Boolean),  # False: the seed-only ablation
    _created(),
)

price_snapshots = Table(
    "price_snapshots",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("as_of", String(32), nullable=False),
    Column("source", Text, nullable=False),
    Column("content", JSON, nullable=False),
    _created(),
)

# One row each time a snapshot becomes the current one (a snapshot's content can become current
# again after a revert, so "current" is the latest activation, not the latest snapshot row).
price_snapshot_activations = Table(
    "price_snapshot_activations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("hash", String(64), nullable=False, index=True),
    Column("run_id", String(64)),
    _created(),
)

cost_rows = Table(
    "cost_rows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task", String(128), nullable=False, index=True),
    Column("snapshot_hash", String(64), nullable=False),
    Column("model", String(256), nullable=False),
    Column("row", JSON, nullable=False),
    _created(),
)


# One row per ``<task>_routing`` materialisation: the recommendation (``summary``) and every policy's
# numbers, tied to the cost table (prices) it was computed from.
routing_results = Table(
    "routing_results",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task", String(128), nullable=False, index=True),
    Column("run_id", String(64), index=True),
    Column("cost_table_id", String(64)),
    Column("snapshot_hash", String(64)),
    Column("summary", JSON, nullable=False),
    Column("policies", JSON, nullable=False),
    _created(),
)


def default_url() -> str:
    url = os.environ.get("DISTIL_DB_URL")
    if url:
        return url
    from distil_platform.storage.paths import dagster_home

    return f"sqlite:///{dagster_home() / 'results.db'}"


_ENGINES: dict[str, Engine] = {}
_LOCK = threading.Lock()


def _engine(url: str) -> Engine:
    with _LOCK:
        if url not in _ENGINES:
            # pool_pre_ping: a pooled connection the server dropped while idle (a Postgres restart, an
            # idle timeout) is replaced before use instead of failing the next write.
            engine = create_engine(url, future=True, pool_pre_ping=not url.startswith("sqlite"))
            if url.startswith("sqlite"):
                # WAL + a busy timeout: concurrent writers (client threads, runs) wait rather than fail.
                @event.listens_for(engine, "connect")
                def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA busy_timeout=30000")
                    cur.close()

            # Alembic migrations (distil_platform/storage/migrations), not create_all: a column added in a
            # release upgrades an existing store in place.
            from distil_platform.storage.revisions import upgrade

            upgrade(engine)
            _ENGINES[url] = engine
        return _ENGINES[url]


class ResultsStore:
    """Thin access layer over the tables above."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.engine = _engine(self.url)

    def insert(self, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        with self.engine.begin() as conn:
            conn.execute(insert(table), rows)
        return len(rows)

    def select(self, table: Table, **where: Any) -> list[dict[str, Any]]:
        stmt = select(table)
        for key, value in where.items():
            stmt = stmt.where(table.c[key] == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def latest_run_id(self, table: Table, **where: Any) -> str | None:
        """run_id of the most recent row matching ``where`` (rows of one run share it)."""
        stmt = select(table.c.run_id).order_by(table.c.id.desc()).limit(1)
        for key, value in where.items():
            stmt = stmt.where(table.c[key] == value)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return row[0] if row else None


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
