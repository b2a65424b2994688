"""An untrusted schema DDL (a recorded teacher row's text2sql ``context``) runs only in the schema
sandbox: CREATE TABLE / CREATE INDEX / INSERT, an authorizer, a size cap and a deadline. A runaway
schema is a rejected row with a reason, within the time limit; it never hangs or crashes the stage."""

from __future__ import annotations

import json
import re
import time

import pytest

from distil_platform.evaluation.scoring.sql.database import build_database, execute_untrusted_sql
from distil_platform.evaluation.scoring.sql.sandbox import (
    SCHEMA_TIMEOUT_S,
    SQLSchemaNotAllowed,
    SQLSchemaTimeout,
    SQLSchemaTooLarge,
    check_schema_statements,
)
from distil_platform.tasks.sources import load_sample
from distil_platform.tasks.spec import get_task
from distil_platform.tasks.validation import validate_row
from distil_platform.teacher.recorded import load_recorded
from distil_platform.teacher.synthesis import synthesize

VALID = """CREATE TABLE departments (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE employees (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, salary REAL CHECK (salary >= 0) DEFAULT 0,
  department_id INTEGER REFERENCES departments(id)
);
CREATE UNIQUE INDEX employees_name ON employees (name);
INSERT INTO departments (id, name) VALUES (1, 'Engineering'), (2, 'Sales');
INSERT INTO employees (name, salary, department_id) SELECT 'Ada', 120.0, id FROM departments WHERE id = 1;"""

# Never ends and writes nothing: a recursive CTE without a bound feeding an aggregate. Unsandboxed,
# executescript hangs.
RUNAWAY_INSERT = """CREATE TABLE u (x INTEGER);
INSERT INTO u WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c;"""
# The example: the table is a query's result (refused before anything runs).
RUNAWAY_CTAS = """CREATE TABLE u AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;"""
# Writes without end: stopped by the database size cap (64 MiB) before it fills the memory.
RUNAWAY_WRITER = """CREATE TABLE b (x INTEGER, y BLOB);
INSERT INTO b WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i, zeroblob(1000) FROM c;"""


def test_a_valid_schema_with_indexes_and_inserts_still_builds_and_answers():
    conn = build_database(VALID)
    try:
        assert conn.execute("SELECT name FROM departments WHERE id = 1").fetchone() == ("Engineering",)
        assert conn.execute("SELECT COUNT(*) FROM employees WHERE name = 'Ada'").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM employees").fetchone()[0] > 1  # generated rows too
    finally:
        conn.close()
    width, rows = execute_untrusted_sql(VALID, "SELECT name FROM departments ORDER BY id")
    assert width == 1 and rows


@pytest.mark.timeout(30)
def test_a_runaway_insert_is_rejected_within_the_deadline():
    started = time.perf_counter()
    with pytest.raises(SQLSchemaTimeout, match=rf"did not finish within {SCHEMA_TIMEOUT_S:g}s"):
        build_database(RUNAWAY_INSERT)
    elapsed = time.perf_counter() - started
    assert elapsed < SCHEMA_TIMEOUT_S + 3.0, elapsed  # the deadline, plus scheduling slack on a busy CI box
    # The rejection is remembered: the next row with the same schema is refused at once.
    started = time.perf_counter()
    with pytest.raises(SQLSchemaTimeout):
        execute_untrusted_sql(RUNAWAY_INSERT, "SELECT x FROM u")
    assert time.perf_counter() - started < 0.5


@pytest.mark.timeout(30)
def test_a_schema_that_writes_without_end_is_stopped_by_the_size_cap():
    started = time.perf_counter()
    with pytest.raises(SQLSchemaTooLarge, match="writes more than 64 MiB"):
        build_database(RUNAWAY_WRITER)
    assert time.perf_counter() - started < SCHEMA_TIMEOUT_S + 3.0


@pytest.mark.parametrize(("ddl", "reason"), [
    (RUNAWAY_CTAS, "statement 1 is CREATE TABLE ... AS <query>"),
    ("CREATE TABLE t (x INT); CREATE VIEW v AS SELECT * FROM t;", "statement 2 is CREATE VIEW"),
    ("CREATE TABLE t (x INT); CREATE TRIGGER g AFTER INSERT ON t BEGIN INSERT INTO t VALUES (1); END;",
     "statement 2 is CREATE TRIGGER"),
    ("CREATE TEMP TABLE t (x INT);", "statement 1 is CREATE TEMP"),
    ("CREATE TABLE t (x INT); PRAGMA writable_schema = 1;", "statement 2 is PRAGMA"),
    ("CREATE TABLE t (x INT); DELETE FROM t;", "statement 2 is DELETE"),
    ("CREATE TABLE t (x INT); ATTACH DATABASE '/tmp/x.db' AS x;", "statement 2 is"),
    ("CREATE TABLE t (x INT); UPDATE t SET x = 1;", "statement 2 is UPDATE"),
    ("CREATE TABLE t (x INT); DROP TABLE t;", "statement 2 is DROP"),
])
def test_only_create_table_create_index_and_insert_are_accepted(ddl, reason):
    with pytest.raises(SQLSchemaNotAllowed, match=re.escape(reason)):
        check_schema_statements(ddl)
    with pytest.raises(SQLSchemaNotAllowed, match="only CREATE TABLE"):
        build_database(ddl)


def test_the_authorizer_refuses_what_the_statement_check_lets_through():
    # An INSERT is allowed; what it calls is not (the authorizer denies load_extension).
    ddl = "CREATE TABLE t (x TEXT); INSERT INTO t SELECT load_extension('/tmp/evil.so');"
    check_schema_statements(ddl)
    with pytest.raises(SQLSchemaNotAllowed, match="not authorized"):
        build_database(ddl)


@pytest.mark.timeout(60)
def test_recorded_text2sql_rows_with_a_runaway_schema_are_rejected_rows_not_a_hung_stage(tmp_path):
    """The teacher stage's path for a recorded file: load_recorded -> synthesize (validation in the
    sandbox). 20 rows share a runaway schema: one deadline in all, then remembered."""
    spec = get_task("text2sql")
    data = load_sample(spec)
    seeds, test = data.seed.to_dicts(), data.test.to_dicts()
    good = seeds[0]
    path = tmp_path / "recorded_text2sql.jsonl"
    # Schemas of their own (not the ones the tests above rejected: a rejection is remembered per process).
    runaway = RUNAWAY_INSERT.replace("TABLE u ", "TABLE u_recorded ").replace("INTO u ", "INTO u_recorded ")
    writer = RUNAWAY_WRITER.replace("TABLE b ", "TABLE b_recorded ").replace("INTO b ", "INTO b_recorded ")
    assert runaway != RUNAWAY_INSERT and writer != RUNAWAY_WRITER
    rows = [{"question": f"How many rows are in u, variant {i}?", "answer": "SELECT COUNT(*) FROM u_recorded",
             "context": runaway} for i in range(20)]
    rows.append({"question": "What tables does the schema hold?", "answer": "SELECT 1 FROM u",
                 "context": RUNAWAY_CTAS})
    rows.append({"question": "How many rows are in b?", "answer": "SELECT COUNT(*) FROM b_recorded", "context": writer})
    rows.append({"question": "Which departments have a budget over 1000 in total?",
                 "answer": "SELECT name FROM departments WHERE budget > 1000", "context": good["context"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recorded = load_recorded(spec, path, teacher_model="fixture-teacher")
    started = time.perf_counter()
    report = synthesize(spec, seeds, test, lambda batch, formats: pytest.fail("no model is asked"), target=0,
                        teacher_model="fixture-teacher", recorded=recorded)
    elapsed = time.perf_counter() - started
    assert report.rejections["schema_ddl_timeout"] == 20
    assert report.rejections["schema_ddl_not_allowed"] == 1
    assert report.rejections["schema_ddl_too_large"] == 1
    assert report.schema_valid == 1  # the valid row went on to the filters
    assert elapsed < 10 * SCHEMA_TIMEOUT_S, elapsed
    print(f"22 recorded rows with runaway schemas rejected in {elapsed:.2f}s")
    assert [validate_row(spec, recorded[i]) for i in (0, 19, 20, 21)] == [
        "schema_ddl_timeout", "schema_ddl_timeout", "schema_ddl_not_allowed", "schema_ddl_too_large"]
