"""SQL extraction, database generation, execution match and the safety of running model SQL."""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distil_platform.evaluation.scoring import (
    SQLReferenceError,
    SQLSchemaError,
    build_database,
    extract_sql,
    score_prediction,
    sql_execution_match,
    sql_match_details,
    sql_reference_error,
)
from distil_platform.evaluation.scoring.sql.database import extract_literals
from distil_platform.evaluation.scoring.sql.results import has_top_level_order_by, results_match
from distil_platform.evaluation.scoring.sql.sandbox import _QueryFailed, run_readonly_query
from distil_platform.tasks.spec import TaskSpec

SCHEMA = """
CREATE TABLE departments (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  budget REAL
);
CREATE TABLE employees (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  department_id INTEGER NOT NULL REFERENCES departments(id),
  manager_id INTEGER REFERENCES employees(id),
  salary INTEGER,
  hire_date DATE,
  is_active BOOLEAN,
  email TEXT UNIQUE
);
CREATE TABLE assignments (
  employee_id INTEGER NOT NULL REFERENCES employees(id),
  project TEXT NOT NULL,
  hours INTEGER,
  PRIMARY KEY (employee_id, project)
);
CREATE TABLE archive (
  id INTEGER PRIMARY KEY,
  note TEXT,
  amount REAL NOT NULL CHECK (amount < -1000000000)
);
"""


def match(pred: str, ref: str, **kw) -> float:
    return sql_execution_match(pred, ref, SCHEMA, **kw)


# -- extraction -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT a FROM t;", "SELECT a FROM t"),
        ("```sql\nSELECT a\nFROM t;\n```", "SELECT a\nFROM t"),
        ("Here is the query:\n```\nSELECT a FROM t\n```\nIt lists a.", "SELECT a FROM t"),
        ("Sure! SELECT a FROM t WHERE b = 'x;y'; -- done", "SELECT a FROM t WHERE b = 'x;y'"),
        ("Select the rows like this:\nSELECT a FROM t", "SELECT a FROM t"),
        ("select a from t where b = 'it''s;'", "select a from t where b = 'it''s;'"),
        ("SELECT a FROM t\n\nThis query returns every a.", "SELECT a FROM t"),
        ("WITH x AS (SELECT 1 AS a) SELECT a FROM x;", "WITH x AS (SELECT 1 AS a) SELECT a FROM x"),
        ("DROP TABLE t; SELECT 1", "DROP TABLE t"),
        ("SELECT a /* ; */ FROM t -- ;\n; SELECT 2", "SELECT a /* ; */ FROM t -- ;"),
    ],
)
def test_extract_sql(text, expected):
    assert extract_sql(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "I do not know the answer.", "```\n```"])
def test_extract_sql_none(text):
    assert extract_sql(text) is None


def test_extract_literals_attach_to_columns():
    lits = extract_literals(
        "SELECT * FROM e WHERE e.salary > 50000 AND dept = 'Sales' AND name LIKE 'J%' "
        "AND x BETWEEN -2 AND 3 AND y IN ('a', 'b') GROUP BY dept HAVING SUM(bonus) > 100 LIMIT 10"
    )
    got = {(lit.column, lit.value, lit.op) for lit in lits}
    assert got == {
        ("salary", 50000, "cmp"),
        ("dept", "Sales", "eq"),
        ("name", "J%", "like"),
        ("x", -2, "cmp"),
        ("x", 3, "cmp"),
        ("y", "a", "eq"),
        ("y", "b", "eq"),
        ("bonus", 100, "cmp"),
    }


def test_top_level_order_by():
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a")
    assert not has_top_level_order_by("SELECT a, RANK() OVER (ORDER BY b) FROM t")
    assert not has_top_level_order_by("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")


# -- generated databases --------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1, 2])
def test_generated_database_respects_constraints(index):
    conn = build_database(SCHEMA, seed=3, index=index)
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        n_dept = conn.execute("SELECT COUNT(*) FROM departments").fetchone()[0]
        n_emp = conn.execute("SELECT COUNT(*) FROM employees").fetchone()[0]
        assert n_dept > 0 and n_emp > n_dept
        assert conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] > 0
        assert conn.execute("SELECT COUNT(*) FROM archive").fetchone()[0] == 0  # CHECK never holds
        assert conn.execute("SELECT COUNT(*) FROM employees WHERE name IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(email) = COUNT(DISTINCT email) FROM employees").fetchone()[0] == 1
        # types: integers, ISO dates, 0/1 booleans; some NULLs in nullable columns across the data
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM employees WHERE typeof(salary) NOT IN ('integer', 'null')"
            ).fetchone()[0]
            == 0
        )
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM employees WHERE hire_date IS NOT NULL AND date(hire_date) IS NULL"
            ).fetchone()[0]
            == 0
        )
        assert conn.execute("SELECT COUNT(*) FROM employees WHERE is_active NOT IN (0, 1)").fetchone()[0] == 0
        # self reference points at earlier rows only
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM employees WHERE manager_id IS NOT NULL AND manager_id >= id"
            ).fetchone()[0]
            == 0
        )
    finally:
        conn.close()


def test_generated_databases_use_query_literals():
    ref = "SELECT COUNT(*) FROM employees e JOIN departments d ON e.department_id = d.id WHERE d.name = 'Engineering' AND e.salary > 85000"
    counts = []
    for index in range(3):
        conn = build_database(SCHEMA, extract_literals(ref), seed=0, index=index)
        counts.append(conn.execute(ref).fetchone()[0])
        assert conn.execute("SELECT COUNT(*) FROM departments WHERE name = 'Engineering'").fetchone()[0] == 1
        conn.close()
    assert max(counts) > 0  # the WHERE clause selects rows
    # and so a wrong literal or a flipped comparison is caught
    assert match(ref.replace("'Engineering'", "'engineering'"), ref) == 0.0
    assert match(ref.replace(">", "<"), ref) == 0.0
    assert match(ref, ref) == 1.0


def test_generation_is_deterministic_and_seed_dependent():
    def rows(seed):
        conn = build_database(SCHEMA, seed=seed, index=0)
        try:
            return conn.execute("SELECT * FROM employees ORDER BY id").fetchall()
        finally:
            conn.close()

    assert rows(0) == rows(0)
    assert rows(0) != rows(1)


def test_bad_schema_and_reference_raise():
    with pytest.raises(SQLSchemaError, match="does not execute"):
        sql_execution_match("SELECT 1", "SELECT 1", "CREATE TABLE (")
    with pytest.raises(SQLSchemaError, match="empty"):
        sql_execution_match("SELECT 1", "SELECT 1", "")
    with pytest.raises(SQLReferenceError, match="not a SELECT"):
        match("SELECT 1", "DELETE FROM employees")
    with pytest.raises(SQLReferenceError, match="no such column"):
        match("SELECT 1", "SELECT wage FROM employees")
    assert "no such table" in sql_reference_error("SELECT * FROM staff", SCHEMA)
    assert sql_reference_error("SELECT * FROM employees", SCHEMA) is None


# -- execution match: hand-worked edge cases -------------------------------------------------------
def test_order_by_matters_only_when_reference_orders():
    ref_ordered = "SELECT name FROM employees ORDER BY id DESC"
    assert match("SELECT name FROM employees ORDER BY id DESC", ref_ordered) == 1.0
    assert match("SELECT name FROM employees ORDER BY id ASC", ref_ordered) == 0.0
    assert match("SELECT name FROM employees", ref_ordered) == 0.0
    assert match("SELECT name FROM employees ORDER BY id DESC", "SELECT name FROM employees") == 1.0
    assert (
        match(
            "SELECT name FROM employees ORDER BY id LIMIT 4", "SELECT name FROM employees ORDER BY id LIMIT 3"
        )
        == 0.0
    )


def test_distinct_vs_duplicates():
    ref = "SELECT DISTINCT department_id FROM employees"
    assert match("SELECT department_id FROM employees GROUP BY department_id", ref) == 1.0
    assert match("SELECT department_id FROM employees", ref) == 0.0


def test_nulls():
    ref = "SELECT COUNT(*) FROM employees WHERE manager_id IS NULL"
    assert match("SELECT COUNT(*) FROM employees WHERE manager_id = NULL", ref) == 0.0
    assert match("SELECT SUM(manager_id IS NULL) FROM employees", ref) == 1.0
    assert match("SELECT COUNT(salary) FROM employees", "SELECT COUNT(*) FROM employees") == 0.0
    assert (
        match(
            "SELECT name, salary FROM employees WHERE salary IS NULL",
            "SELECT name, salary FROM employees WHERE salary IS NULL",
        )
        == 1.0
    )


def test_aliases_and_column_order():
    ref = "SELECT e.name AS employee, d.name AS dept FROM employees e JOIN departments d ON e.department_id = d.id"
    assert (
        match(
            "SELECT employees.name, departments.name FROM employees, departments WHERE employees.department_id = departments.id",
            ref,
        )
        == 1.0
    )
    assert (
        match("SELECT d.name, e.name FROM departments d JOIN employees e ON e.department_id = d.id", ref)
        == 1.0
    )
    assert match("SELECT e.name FROM employees e JOIN departments d ON e.department_id = d.id", ref) == 0.0
    assert (
        match(
            "SELECT e.name, d.name, d.id FROM employees e JOIN departments d ON e.department_id = d.id", ref
        )
        == 0.0
    )


def test_aggregates_on_empty_table():
    ref = "SELECT COUNT(*), SUM(amount), AVG(amount) FROM archive"
    assert match("SELECT COUNT(id), SUM(amount), AVG(amount) FROM archive", ref) == 1.0
    assert match("SELECT COUNT(*), TOTAL(amount), AVG(amount) FROM archive", ref) == 0.0  # 0.0 is not NULL
    assert match("SELECT note FROM archive", "SELECT note FROM archive WHERE id > 3") == 1.0  # both empty


def test_joins_with_foreign_keys():
    ref = "SELECT d.name, COUNT(*) FROM departments d JOIN employees e ON e.department_id = d.id GROUP BY d.id, d.name"
    assert (
        match(
            "SELECT d.name, COUNT(e.id) FROM employees e INNER JOIN departments d ON d.id = e.department_id GROUP BY d.id",
            ref,
        )
        == 1.0
    )
    # a LEFT JOIN also lists departments without employees, which the data contains
    assert (
        match(
            "SELECT d.name, COUNT(e.id) FROM departments d LEFT JOIN employees e ON e.department_id = d.id GROUP BY d.id",
            ref,
        )
        == 0.0
    )
    assert (
        match(
            "SELECT d.name, COUNT(*) FROM departments d JOIN employees e ON e.manager_id = d.id GROUP BY d.id",
            ref,
        )
        == 0.0
    )


def test_float_results_compare_with_tolerance():
    assert (
        match("SELECT SUM(salary) * 1.0 / COUNT(salary) FROM employees", "SELECT AVG(salary) FROM employees")
        == 1.0
    )
    assert match("SELECT ROUND(AVG(salary), 0) FROM employees", "SELECT AVG(salary) FROM employees") == 0.0


def test_results_match_unit():
    assert results_match((2, [(1, "a"), (2, "b")]), (2, [("b", 2), ("a", 1)]), ordered=False)
    assert not results_match((2, [(1, "a"), (2, "b")]), (2, [("b", 2), ("a", 1)]), ordered=True)
    assert results_match((2, [(1, "a"), (2, "b")]), (2, [("a", 1), ("b", 2)]), ordered=True)
    assert not results_match((1, [(1,), (1,)]), (1, [(1,)]), ordered=False)  # multiset, not set
    assert results_match((1, [(1,)]), (1, [(1.0,)]), ordered=False)
    assert not results_match((1, [("1",)]), (1, [(1,)]), ordered=False)
    assert results_match((2, []), (2, []), ordered=False)
    assert not results_match((2, []), (1, []), ordered=False)
    # the same column values in both columns: only the right pairing matches
    assert not results_match((2, [(1, 2), (2, 1), (1, 1)]), (2, [(1, 2), (2, 1), (2, 2)]), ordered=False)


# -- safety ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction",
    [
        "DROP TABLE employees; SELECT 1",
        "DELETE FROM employees",
        "UPDATE employees SET salary = 0",
        "INSERT INTO departments (name) VALUES ('x')",
        "WITH x AS (SELECT 1) DELETE FROM employees",
        "PRAGMA writable_schema = 1",
        "ATTACH DATABASE 'evil.db' AS evil",
        "SELECT load_extension('/nonexistent/ext')",
        "SELECT zeroblob(1000000000)",
        "CREATE TEMP TABLE t AS SELECT 1",
    ],
)
def test_hostile_predictions_score_zero(prediction):
    assert match(prediction, "SELECT COUNT(*) FROM employees") == 0.0


def test_authorizer_blocks_writes_attach_and_pragmas_directly(tmp_path, monkeypatch):
    tmp_path = tmp_path / "cwd"
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    conn = build_database(SCHEMA, seed=0)
    try:
        before = conn.execute("SELECT COUNT(*) FROM employees").fetchone()[0]
        for sql in [
            "DELETE FROM employees",
            "DROP TABLE employees",
            f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x",
            "PRAGMA journal_mode = WAL",
            "PRAGMA table_info(employees)",
            "SELECT 1; SELECT 2",
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) INSERT INTO archive SELECT x, '', -1e10 FROM r",
        ]:
            with pytest.raises(_QueryFailed):
                run_readonly_query(conn, sql)
        assert conn.execute("SELECT COUNT(*) FROM employees").fetchone()[0] == before
        assert list(tmp_path.iterdir()) == []  # nothing written to disk
    finally:
        conn.close()


def test_never_ending_queries_stop_quickly():
    endless_count = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r"
    start = time.perf_counter()
    result = sql_match_details(endless_count, "SELECT COUNT(*) FROM employees", SCHEMA, timeout_s=0.3)
    assert result.score == 0.0 and "timed out" in result.reason
    assert time.perf_counter() - start < 1.5
    endless_rows = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r"
    start = time.perf_counter()
    result = sql_match_details(endless_rows, "SELECT id FROM employees", SCHEMA)
    assert result.score == 0.0 and "more than" in result.reason
    assert time.perf_counter() - start < 1.5


def test_prediction_errors_score_zero_with_reason():
    result = sql_match_details("SELECT wage FROM employees", "SELECT salary FROM employees", SCHEMA)
    assert (result.score, result.parse_ok) == (0.0, True) and "no such column" in result.reason
    result = sql_match_details("I cannot answer that.", "SELECT salary FROM employees", SCHEMA)
    assert (result.score, result.parse_ok) == (0.0, False)


# -- dispatch and speed ---------------------------------------------------------------------------
def test_score_prediction_text2sql_reads_schema_from_context_or_question():
    spec = TaskSpec(name="t2s", type="text2sql", description="Write SQL.")
    ref = "SELECT COUNT(*) FROM employees WHERE salary > 50000;"
    row = {"question": "How many?", "answer": ref, "context": SCHEMA}
    assert (
        score_prediction(spec, "```sql\nSELECT COUNT(id) FROM employees WHERE salary > 50000\n```", row).score
        == 1.0
    )
    row_public = {"question": f"Schema:\n{SCHEMA}\n\nQuestion: How many?", "answer": ref, "context": ""}
    item = score_prediction(spec, "SELECT COUNT(*) FROM employees WHERE salary >= 50000", row_public)
    assert (item.score, item.parse_ok) == (0.0, True) and item.detail.startswith("results differ")
    assert score_prediction(spec, "no idea", row).parse_ok is False


def test_equivalent_rewrites_score_one_and_suites_are_cached(monkeypatch):
    from distil_platform.evaluation.scoring.sql import suite as sql_suite

    pairs = [
        (
            "SELECT COUNT(*) FROM employees WHERE salary > {n}",
            "SELECT COUNT(id) FROM employees WHERE salary > {n}",
        ),
        (
            (
                "SELECT d.name, AVG(e.salary) FROM departments d JOIN employees e ON e.department_id = d.id "
                "WHERE e.hire_date >= '2021-0{m}-01' GROUP BY d.id"
            ),
            (
                "SELECT d.name, AVG(e.salary) FROM employees e JOIN departments d ON d.id = e.department_id "
                "WHERE e.hire_date >= '2021-0{m}-01' GROUP BY d.name"
            ),
        ),
        (
            "SELECT name FROM employees ORDER BY salary DESC, id LIMIT {m}",
            "SELECT name FROM employees ORDER BY salary DESC, id LIMIT {m}",
        ),
        (
            "SELECT project, SUM(hours) FROM assignments GROUP BY project HAVING SUM(hours) > {n}",
            "SELECT project, SUM(hours) FROM assignments GROUP BY 1 HAVING SUM(hours) > {n}",
        ),
        (
            "SELECT DISTINCT e.name FROM employees e JOIN assignments a ON a.employee_id = e.id WHERE a.project LIKE '%{m}%'",
            "SELECT e.name FROM employees e WHERE e.id IN (SELECT employee_id FROM assignments WHERE project LIKE '%{m}%') GROUP BY e.name",
        ),
    ]
    items = []
    for i in range(10):
        ref, pred = pairs[i % len(pairs)]
        fill = {"n": 100 * i, "m": 1 + i % 9}
        items.append((pred.format(**fill), ref.format(**fill)))
    scores = [match(pred, ref) for pred, ref in items]
    # Equivalent rewrites, except that DISTINCT e.name and GROUP BY e.name differ from the gold's
    # duplicates only where two employees share a name and a project: at most the last pair.
    assert sum(scores[i] for i in range(10) if i % 5 != 4) == 8, scores
    # Scored again: the distinguishing databases come from the cache, no new search.
    searches = []
    real_search = sql_suite._search
    monkeypatch.setattr(sql_suite, "_search", lambda *a: searches.append(a) or real_search(*a))
    assert [match(pred, ref) for pred, ref in items] == scores
    assert searches == []
    # A fresh process (empty memory cache) reads the chosen databases from $DAGSTER_HOME.
    sql_suite._memory.clear()
    assert [match(pred, ref) for pred, ref in items] == scores
    assert searches == []


# -- properties -----------------------------------------------------------------------------------
_columns = st.lists(
    st.sampled_from(["id", "name", "salary", "hire_date", "department_id"]),
    min_size=1,
    max_size=3,
    unique=True,
)
_filters = st.one_of(
    st.just(""),
    st.integers(0, 1000).map(lambda n: f" WHERE salary > {n}"),
    st.sampled_from(["Sales", "R&D", "O'Hara"]).map(lambda s: " WHERE name = '" + s.replace("'", "''") + "'"),
    st.dates().map(lambda d: f" WHERE hire_date < '{d.isoformat()}'"),
)
_queries = st.builds(
    lambda cols, where, order: f"SELECT {', '.join(cols)} FROM employees{where}{order}",
    _columns,
    _filters,
    st.sampled_from(["", " ORDER BY id", " ORDER BY id DESC LIMIT 5"]),
)


@settings(max_examples=25, deadline=None)
@given(_queries, st.integers(0, 3))
def test_reflexive(query, seed):
    assert sql_execution_match(query, query, SCHEMA, seed=seed) == 1.0


@settings(max_examples=20, deadline=None)
@given(_queries, _queries, st.integers(0, 3))
# Found by hypothesis: a date literal at the calendar's edge overflowed when shifted by days.
@example(
    pred="SELECT id FROM employees", ref="SELECT id FROM employees WHERE hire_date < '0001-01-01'", seed=0
)
def test_deterministic_for_a_seed(pred, ref, seed):
    first = sql_match_details(pred, ref, SCHEMA, seed=seed)
    assert sql_match_details(pred, ref, SCHEMA, seed=seed) == first


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.text(max_size=120),
        st.builds(lambda tail: "SELECT " + tail, st.text(max_size=60)),
        st.sampled_from(
            ["SELECT ?", "SELECT 1\x00", "SELECT CAST(x'ff' AS TEXT)", "VALUES (1)", "(SELECT 1"]
        ),
    )
)
def test_garbage_predictions_never_raise(prediction):
    result = sql_match_details(prediction, "SELECT COUNT(*) FROM employees", SCHEMA, timeout_s=0.5)
    assert result.score in (0.0, 1.0)
