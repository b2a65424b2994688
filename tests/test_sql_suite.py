"""Distinguishing databases (boundary generation + the test-suite search), neighbours and the sandbox."""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distil_platform.evaluation.scoring import sql_execution_match, sql_match_details
from distil_platform.evaluation.scoring.sql import suite as sql_suite
from distil_platform.evaluation.scoring.sql.boundary import boundary_database
from distil_platform.evaluation.scoring.sql.database import build_database, execute_untrusted_sql
from distil_platform.evaluation.scoring.sql.neighbours import NEIGHBOUR_KINDS, neighbour_queries
from distil_platform.evaluation.scoring.sql.sandbox import (
    MAX_RESULT_BYTES,
    SQLSandboxError,
    SQLSchemaError,
    run_sandboxed,
)
from distil_platform.evaluation.scoring.sql.schema import introspect
from distil_platform.evaluation.scoring.sql.suite import distinguishing_suite

SCHEMA = """
CREATE TABLE artists (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  country TEXT
);
CREATE TABLE albums (
  id INTEGER PRIMARY KEY,
  artist_id INTEGER NOT NULL REFERENCES artists(id),
  title TEXT NOT NULL UNIQUE,
  sales INTEGER CHECK (sales >= 0),
  released_on DATE
);
CREATE TABLE employees (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  department TEXT,
  salary REAL,
  is_remote BOOLEAN,
  end_date DATE
);
"""

# Each planted near-miss is semantically different from its gold; the first eight are the
# boundary cases the three generated databases alone passed (issue 17).
PLANTED = [
    (
        "SELECT a.name, SUM(al.sales) FROM artists a JOIN albums al ON a.id = al.artist_id GROUP BY a.id, a.name HAVING SUM(al.sales) > 1000000",
        "SELECT a.name, SUM(al.sales) FROM artists a JOIN albums al ON a.id = al.artist_id GROUP BY a.id, a.name HAVING SUM(al.sales) >= 1000000",
    ),
    (
        "SELECT a.name, SUM(al.sales) FROM artists a JOIN albums al ON a.id = al.artist_id GROUP BY a.id, a.name HAVING SUM(al.sales) > 1000000",
        "SELECT a.name, SUM(al.sales) FROM artists a JOIN albums al ON a.id = al.artist_id GROUP BY a.id, a.name HAVING SUM(al.sales) > 1000001",
    ),
    (
        "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) > 3",
        "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) >= 3",
    ),
    (
        "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) >= 10",
        "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) > 10",
    ),
    (
        "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) >= 10",
        "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) >= 11",
    ),
    (
        "SELECT * FROM employees WHERE end_date >= '2024-01-01' AND end_date < '2025-01-01'",
        "SELECT * FROM employees WHERE end_date > '2024-01-01' AND end_date < '2025-01-01'",
    ),
    (
        "SELECT * FROM employees WHERE end_date >= '2024-01-01' AND end_date < '2025-01-01'",
        "SELECT * FROM employees WHERE end_date >= '2024-01-01' AND end_date <= '2025-01-01'",
    ),
    (
        "SELECT * FROM employees WHERE salary > (SELECT AVG(salary) FROM employees)",
        "SELECT * FROM employees WHERE salary >= (SELECT AVG(salary) FROM employees)",
    ),
    (  # AVG per group on the literal
        "SELECT department FROM employees GROUP BY department HAVING AVG(salary) > 50000",
        "SELECT department FROM employees GROUP BY department HAVING AVG(salary) >= 50000",
    ),
    (  # text equality vs ordering
        "SELECT COUNT(*) FROM employees WHERE department = 'Sales'",
        "SELECT COUNT(*) FROM employees WHERE department <= 'Sales'",
    ),
    (  # drop DISTINCT
        "SELECT DISTINCT department FROM employees",
        "SELECT department FROM employees",
    ),
    (  # add DISTINCT (names repeat)
        "SELECT name FROM artists",
        "SELECT DISTINCT name FROM artists",
    ),
    (  # drop a predicate
        "SELECT COUNT(*) FROM employees WHERE is_remote = 1 AND salary > 70000",
        "SELECT COUNT(*) FROM employees WHERE salary > 70000",
    ),
    (  # swap ASC/DESC
        "SELECT name FROM employees ORDER BY salary DESC, id LIMIT 3",
        "SELECT name FROM employees ORDER BY salary ASC, id LIMIT 3",
    ),
    (  # change an aggregate
        "SELECT artist_id, MAX(sales) FROM albums GROUP BY artist_id",
        "SELECT artist_id, MIN(sales) FROM albums GROUP BY artist_id",
    ),
    (  # COUNT(*) vs COUNT(col): NULLs
        "SELECT COUNT(*) FROM employees",
        "SELECT COUNT(end_date) FROM employees",
    ),
    (  # join -> left join: an artist without albums
        "SELECT a.name, COUNT(al.id) FROM artists a JOIN albums al ON al.artist_id = a.id GROUP BY a.id, a.name",
        "SELECT a.name, COUNT(al.id) FROM artists a LEFT JOIN albums al ON al.artist_id = a.id GROUP BY a.id, a.name",
    ),
    (  # shifted literal on a real column
        "SELECT COUNT(*) FROM employees WHERE salary < 4.5",
        "SELECT COUNT(*) FROM employees WHERE salary < 4.6",
    ),
]


@pytest.mark.parametrize(("gold", "near_miss"), PLANTED)
def test_planted_near_miss_scores_zero(gold, near_miss):
    assert sql_execution_match(gold, gold, SCHEMA) == 1.0
    assert sql_execution_match(near_miss, gold, SCHEMA) == 0.0


def test_distinguishing_databases_catch_what_the_three_databases_missed():
    passed_before = [n for g, n in PLANTED if sql_execution_match(n, g, SCHEMA, suite=False) == 1.0]
    assert len(passed_before) >= 4  # the weakness the suite fixes (measured: see benchmarks/README.md)
    assert all(sql_execution_match(n, g, SCHEMA) == 0.0 for g, n in PLANTED)


# -- boundary generation -------------------------------------------------------------------------
def _union(gold: str, sql: str, indexes=range(sql_suite.N_BOUNDARY_CANDIDATES)) -> set:
    values = set()
    for index in indexes:
        conn = boundary_database(SCHEMA, gold, index=index)
        values |= {r[0] for r in conn.execute(sql)}
        conn.close()
    return values


def test_group_counts_hit_the_literal_and_both_sides():
    gold = "SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) >= 10"
    counts = _union(gold, "SELECT COUNT(*) FROM albums GROUP BY artist_id")
    assert {9, 10, 11} <= counts


def test_group_sums_and_averages_land_on_the_literal():
    gold = "SELECT a.name FROM artists a JOIN albums al ON a.id = al.artist_id GROUP BY a.id HAVING SUM(al.sales) > 1000000"
    sums = _union(gold, "SELECT SUM(sales) FROM albums GROUP BY artist_id")
    assert {999999, 1000000, 1000001} <= sums
    gold = "SELECT department FROM employees GROUP BY department HAVING AVG(salary) > 50000"
    assert 50000.0 in _union(gold, "SELECT AVG(salary) FROM employees GROUP BY department")


def test_a_row_equals_the_subquery_aggregate():
    gold = "SELECT * FROM employees WHERE salary > (SELECT AVG(salary) FROM employees)"
    hits = _union(gold, "SELECT COUNT(*) FROM employees WHERE salary = (SELECT AVG(salary) FROM employees)")
    assert max(hits) >= 1


def test_both_range_endpoints_and_nulls_are_present():
    gold = "SELECT * FROM employees WHERE end_date >= '2024-01-01' AND end_date < '2025-01-01'"
    dates = _union(gold, "SELECT end_date FROM employees", indexes=[0])
    assert {"2023-12-31", "2024-01-01", "2024-01-02", "2024-12-31", "2025-01-01", None} <= dates


def _check_constraints(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for table in introspect(SCHEMA):
        for column in table.columns:
            quoted = f'"{column.name}"'
            types = {r[0] for r in conn.execute(f"SELECT DISTINCT typeof({quoted}) FROM {table.name}")}
            if column.notnull:
                assert "null" not in types, (table.name, column.name)
            if column.kind == "int":
                assert types <= {"integer", "null"}, (table.name, column.name, types)
            if column.kind == "bool":
                values = {r[0] for r in conn.execute(f"SELECT DISTINCT {quoted} FROM {table.name}")}
                assert values <= {0, 1, None}, (table.name, column.name, values)
        for unique in table.uniques:
            cols = ", ".join(f'"{c}"' for c in unique)
            dup = conn.execute(
                f"SELECT COUNT(*) FROM (SELECT {cols} FROM {table.name} WHERE {' AND '.join(f'{c} IS NOT NULL' for c in cols.split(', '))} GROUP BY {cols} HAVING COUNT(*) > 1)"
            ).fetchone()[0]
            assert dup == 0, (table.name, unique)
    assert conn.execute("SELECT COUNT(*) FROM albums WHERE sales < 0").fetchone()[0] == 0  # CHECK


_golds = st.one_of(
    st.integers(0, 12).map(
        lambda n: f"SELECT artist_id FROM albums GROUP BY artist_id HAVING COUNT(*) > {n}"
    ),
    st.integers(0, 10**7).map(
        lambda n: (
            f"SELECT a.name FROM artists a JOIN albums al ON a.id = al.artist_id GROUP BY a.id HAVING SUM(al.sales) >= {n}"
        )
    ),
    st.floats(0, 10**5, allow_nan=False).map(
        lambda x: (
            f"SELECT * FROM employees WHERE salary > (SELECT AVG(salary) FROM employees) AND salary < {x:.2f}"
        )
    ),
    st.dates().map(
        lambda d: f"SELECT * FROM employees WHERE end_date >= '{d.isoformat()}' AND is_remote = 1"
    ),
    st.sampled_from(["Sales", "O'Hara", ""]).map(
        lambda s: "SELECT COUNT(*) FROM employees WHERE department = '" + s.replace("'", "''") + "'"
    ),
)


@settings(max_examples=25, deadline=None)
@given(_golds, st.integers(0, 3), st.integers(0, sql_suite.N_BOUNDARY_CANDIDATES - 1))
def test_boundary_databases_respect_keys_and_constraints(gold, seed, index):
    conn = boundary_database(SCHEMA, gold, seed=seed, index=index)
    try:
        _check_constraints(conn)
    finally:
        conn.close()


@settings(max_examples=15, deadline=None)
@given(_golds, st.integers(0, 3))
def test_gold_scores_one_against_itself(gold, seed):
    assert sql_execution_match(gold, gold, SCHEMA, seed=seed) == 1.0


@settings(max_examples=10, deadline=None)
@given(_golds, st.integers(0, 3))
def test_verdict_is_deterministic_for_a_seed(gold, seed):
    neighbour = neighbour_queries(gold)[0].sql
    first = sql_match_details(neighbour, gold, SCHEMA, seed=seed)
    sql_suite._memory.clear()
    assert sql_match_details(neighbour, gold, SCHEMA, seed=seed) == first  # rebuilt from $DAGSTER_HOME
    sql_suite._memory.clear()
    for path in sql_suite._disk_path("x").parent.glob("*.json"):
        path.unlink()
    assert sql_match_details(neighbour, gold, SCHEMA, seed=seed) == first  # searched again


# -- the search and its cache --------------------------------------------------------------------
def test_suite_records_possibly_equivalent_neighbours_and_is_cached(tmp_path):
    gold = "SELECT id, name FROM artists WHERE country = 'France'"
    suite = distinguishing_suite(SCHEMA, gold)
    changes = {(n.kind, n.change) for n in suite.possibly_equivalent}
    assert ("distinct", "add DISTINCT") in changes  # id is the primary key: DISTINCT changes nothing
    assert suite.n_neighbours > len(suite.possibly_equivalent) and 1 <= len(suite.databases) <= 4
    assert distinguishing_suite(SCHEMA, gold) is suite
    (path,) = sql_suite._disk_path("x").parent.glob("*.json")
    data = json.loads(path.read_text())
    assert [tuple(s) for s in data["specs"]] == list(suite.specs)
    sql_suite._memory.clear()
    again = distinguishing_suite(SCHEMA, gold)
    assert again.specs == suite.specs and again.gold_results == suite.gold_results


def test_suite_databases_distinguish_every_other_neighbour():
    gold = "SELECT department, COUNT(*) FROM employees WHERE salary >= 30000 GROUP BY department HAVING COUNT(*) > 2"
    suite = distinguishing_suite(SCHEMA, gold)
    equivalent = {n.sql for n in suite.possibly_equivalent}
    for neighbour in neighbour_queries(gold):
        expected = 1.0 if neighbour.sql in equivalent else 0.0
        assert sql_execution_match(neighbour.sql, gold, SCHEMA) == expected, neighbour


# -- neighbours ----------------------------------------------------------------------------------
def test_neighbours_cover_every_kind_and_differ_from_the_gold():
    gold = (
        "SELECT a.name, SUM(al.sales) FROM artists a JOIN albums al ON a.id = al.artist_id "
        "WHERE al.released_on >= '2020-01-01' AND a.country = 'FR' GROUP BY a.id, a.name "
        "HAVING SUM(al.sales) > 100 ORDER BY a.name DESC LIMIT 5"
    )
    neighbours = neighbour_queries(gold)
    assert {n.kind for n in neighbours} == set(NEIGHBOUR_KINDS)
    sqls = [n.sql for n in neighbours]
    assert len(set(sqls)) == len(sqls)
    changes = {n.change for n in neighbours}
    assert {
        "> -> >=",
        "100 -> 101",
        "100 -> 99",
        "'2020-01-01' -> '2019-12-31'",
        "5 -> 4",
        "add DISTINCT",
        "JOIN -> LEFT JOIN",
        "SUM -> AVG",
        "a.name DESC -> ASC",
    } <= changes
    assert (
        "SELECT a.name, SUM(al.sales) FROM artists AS a JOIN albums AS al ON a.id = al.artist_id WHERE al.released_on >= '2020-01-01' GROUP BY a.id, a.name HAVING SUM(al.sales) > 100 ORDER BY a.name DESC LIMIT 5"
        in sqls
    )
    assert neighbour_queries(gold) == neighbours  # deterministic
    # All neighbours run on a generated database.
    conn = build_database(SCHEMA)
    try:
        for n in neighbours:
            run_sandboxed(conn, n.sql)
    finally:
        conn.close()


# -- sandbox -------------------------------------------------------------------------------------
def test_a_40_megabyte_row_is_refused():
    forty_mb = "SELECT " + ", ".join(["zeroblob(1000000)"] * 40)
    with pytest.raises(SQLSandboxError, match="too big"):
        execute_untrusted_sql(SCHEMA, forty_mb)
    wide = "SELECT " + ", ".join(["1"] * 200)
    with pytest.raises(SQLSandboxError, match="too many columns"):
        execute_untrusted_sql(SCHEMA, wide)
    gold = "SELECT COUNT(*) FROM employees"
    assert sql_execution_match(forty_mb, gold, SCHEMA) == 0.0


def test_total_result_bytes_are_capped_not_just_values():
    # 300 rows of 60 kB each: every value and the row count are allowed, the total (18 MB) is not.
    many = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 300) "
        "SELECT i, printf('%.60000c', 'x') FROM r"
    )
    with pytest.raises(SQLSandboxError, match="larger than"):
        execute_untrusted_sql(SCHEMA, many)
    result = sql_match_details(many, "SELECT id FROM employees", SCHEMA)
    assert result.score == 0.0 and str(MAX_RESULT_BYTES) in result.reason
    # Under the cap it runs.
    width, rows = execute_untrusted_sql(SCHEMA, many.replace("LIMIT 300", "LIMIT 10"))
    assert (width, len(rows)) == (2, 10)


def test_runaway_recursive_cte_stops_at_the_deadline_while_fetching():
    endless = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT i FROM r"
    conn = build_database(SCHEMA)
    try:
        with pytest.raises(SQLSandboxError, match="timed out"):
            run_sandboxed(conn, endless, timeout_s=0.3, row_cap=10**9, byte_cap=10**12)
        # The connection is usable afterwards, with its authorizer and limits restored.
        assert conn.execute("SELECT COUNT(*) FROM employees").fetchone()[0] >= 0
        assert conn.getlimit(sqlite3.SQLITE_LIMIT_COLUMN) > 64
    finally:
        conn.close()


def test_execute_untrusted_sql_refuses_writes_and_reports_bad_schemas():
    with pytest.raises(SQLSandboxError, match="not authorized"):
        execute_untrusted_sql(SCHEMA, "DELETE FROM employees")
    with pytest.raises(SQLSchemaError):
        execute_untrusted_sql("CREATE TABLE (", "SELECT 1")
    width, rows = execute_untrusted_sql(SCHEMA, "SELECT id, name FROM artists WHERE country = 'FR'")
    assert width == 2 and all(len(r) == 2 for r in rows)


def test_rescore_benchmark_reports_the_near_misses_old_databases_passed(tmp_path, monkeypatch):
    """benchmarks/sql_rescore.py re-scores stored predictions on the same items before/after and
    lists exactly the items whose verdict changed (here: planted near-misses and a right answer)."""
    import importlib.util

    import polars as pl
    from conftest import REPO_ROOT

    from distil_platform.evaluation.evaluate import ItemResult, prediction_rows
    from distil_platform.storage.store import ResultsStore, predictions

    monkeypatch.setenv("DISTIL_DB_URL", f"sqlite:///{tmp_path / 'r.db'}")
    pairs = [(g, n) for g, n in PLANTED if sql_execution_match(n, g, SCHEMA, suite=False) == 1.0][:3]
    gold_right = PLANTED[0][0]
    items = [(f"q{i}", g, n) for i, (g, n) in enumerate(pairs)] + [("right", gold_right, gold_right)]
    test = tmp_path / "test.parquet"
    pl.DataFrame({"id": [i for i, _, _ in items], "question": ["q"] * len(items),
                  "answer": [g for _, g, _ in items], "context": [SCHEMA] * len(items)}).write_parquet(test)
    results = [ItemResult(item_id=i, repeat=0, prediction=p, reference=g, score=1.0, score_strict=None,
                          parse_ok=True, metric="sql_execution_match") for i, g, p in items]
    ResultsStore().insert(predictions, prediction_rows(results, task="text2sql", stage="student_eval",
                                                       model="student", run_id="run-1", variant="student"))
    spec = importlib.util.spec_from_file_location("sql_rescore", REPO_ROOT / "benchmarks" / "sql_rescore.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.rescore("text2sql", test_path=str(test))
    m = out["models"]["student (student)"]
    assert (m["n"], m["before"], m["after"]) == (len(items), len(items), 1)
    assert sorted(c["item_id"] for c in m["changed"]) == sorted(i for i, _, _ in items[:-1])
    assert all(c["before"] == 1.0 and c["after"] == 0.0 for c in m["changed"])
