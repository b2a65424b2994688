"""The results store on a real PostgreSQL server (and SQLite): Alembic migrations build exactly
``store.metadata``, upgrade old stores in place, survive concurrent first opens, and the
``ON CONFLICT`` upsert of the LLM response cache works on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa
from alembic import command
from distributed_services import postgres_server

from distil_platform.llm.cache import StoreWriter
from distil_platform.storage import migrate, revisions
from distil_platform.storage.store import (
    ResultsStore,
    cost_rows,
    llm_cache,
    llm_requests,
    metadata,
    predictions,
)


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server (DISTIL_TEST_PG_URL, else one started for this module)."""
    yield from postgres_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg").create_database("store")


def test_fresh_store_is_migrated_to_head_and_equals_metadata(db_url):
    store = ResultsStore(db_url)
    with store.engine.connect() as conn:
        assert revisions.current_revision(conn) == revisions.head_revision()
    # A column or table added to store.metadata without a migration shows up here.
    assert migrate.schema_diff(store.engine) == []
    assert set(metadata.tables) <= set(sa.inspect(store.engine).get_table_names())


def test_migrations_downgrade_to_nothing_and_back(db_url):
    engine = sa.create_engine(db_url)
    revisions.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(revisions.alembic_config(conn), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    revisions.upgrade(engine)
    assert migrate.schema_diff(engine) == []


def _baseline_store_with_rows(url: str, *, keep_version_table: bool) -> sa.Engine:
    """A store as the first release left it: the 0001 schema holding rows."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(revisions.alembic_config(conn), revisions.BASELINE)
        conn.execute(
            sa.text(
                "INSERT INTO predictions (task, stage, model, item_id, score, created_at) "
                "VALUES ('text2sql', 'student_eval', 'm', 'q1', 1.0, CURRENT_TIMESTAMP)"
            )
        )
        if not keep_version_table:  # made by create_all before migrations existed
            conn.execute(sa.text("DROP TABLE alembic_version"))
    return engine


@pytest.mark.parametrize("keep_version_table", [True, False], ids=["versioned", "pre-migrations"])
def test_old_store_is_upgraded_in_place_keeping_rows(db_url, keep_version_table):
    engine = _baseline_store_with_rows(db_url, keep_version_table=keep_version_table)
    assert "metric" not in {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    store = ResultsStore(db_url)
    assert migrate.schema_diff(store.engine) == []
    rows = store.select(predictions, task="text2sql")
    assert [(r["item_id"], r["score"], r["metric"]) for r in rows] == [("q1", 1.0, None)]
    store.insert(
        predictions,
        [
            {
                "task": "text2sql",
                "stage": "student_eval",
                "model": "m",
                "item_id": "q2",
                "score": 0.0,
                "metric": "execution_accuracy",
            }
        ],
    )
    assert {r["item_id"]: r["metric"] for r in store.select(predictions)} == {
        "q1": None,
        "q2": "execution_accuracy",
    }


def test_concurrent_first_opens_on_postgres_migrate_once(pg):
    url = pg.create_database("race")
    results, errors = [], []
    barrier = threading.Barrier(4)

    def open_store():
        engine = sa.create_engine(url)  # one engine each: separate connections, like separate run workers
        try:
            barrier.wait()
            results.append(revisions.upgrade(engine))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert results == [revisions.head_revision()] * 4
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert migrate.schema_diff(engine) == []


def _write_cache(store: ResultsStore, key: str, answer: str, run_id: str) -> None:
    writer = StoreWriter(store)

    async def go():
        task = asyncio.create_task(writer.run())
        writer.add_cache(key, "tiny-qwen3", {"content": answer}, identity="ckpt-abc")
        writer.add_request({"run_id": run_id, "model": "tiny-qwen3", "cache_key": key, "cache_hit": False})
        writer.close()
        await task

    asyncio.run(go())


def test_response_cache_on_conflict_do_nothing_on_postgres(pg):
    store = ResultsStore(pg.create_database("cache"))
    assert store.engine.dialect.name == "postgresql"
    _write_cache(store, "k1", "SELECT 1", "run-a")
    # A second run caching the same key (same model, prompt, endpoint) must neither fail nor overwrite.
    _write_cache(store, "k1", "SELECT 2", "run-b")
    cached = store.select(llm_cache, key="k1")
    assert [(r["response"], r["identity"]) for r in cached] == [({"content": "SELECT 1"}, "ckpt-abc")]
    assert sorted(r["run_id"] for r in store.select(llm_requests, cache_key="k1")) == ["run-a", "run-b"]


def test_json_rows_and_latest_run_id_on_postgres(pg):
    store = ResultsStore(pg.create_database("rows"))
    row = {"model": "anthropic/claude-haiku-4-5", "usd_per_million_requests": 378.0, "ci": [0.61, 0.7]}
    store.insert(cost_rows, [{"task": "text2sql", "snapshot_hash": "h1", "model": row["model"], "row": row}])
    assert store.select(cost_rows, task="text2sql")[0]["row"] == row
    store.insert(
        predictions,
        [{"run_id": rid, "task": "t", "stage": "s", "model": "m", "item_id": "1"} for rid in ("r1", "r2")],
    )
    assert store.latest_run_id(predictions, task="t") == "r2"


def test_store_made_by_create_all_with_newer_columns_is_adopted(db_url):
    """A store that ``create_all`` made from a newer metadata before migrations existed: stamped at
    the baseline, then the later revisions add only what it lacks."""
    engine = sa.create_engine(db_url)
    metadata.create_all(engine)
    store = ResultsStore(db_url)
    with store.engine.connect() as conn:
        assert revisions.current_revision(conn) == revisions.head_revision()
    assert migrate.schema_diff(store.engine) == []
