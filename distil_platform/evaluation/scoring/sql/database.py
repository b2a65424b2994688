"""Synthetic databases for a schema: deterministic random rows that respect its types and
constraints and reuse the literal values a query compares columns with (so ``WHERE status =
'pending'`` selects rows).

:func:`extract_literals` finds those literals, :func:`build_database` fills an in-memory database
with rows, and :func:`execute_untrusted_sql` runs untrusted SQL on such a database in the sandbox
(:mod:`distil_platform.evaluation.scoring.sql.sandbox`).
"""

from __future__ import annotations

import datetime as dt
import random
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from distil_platform.evaluation.scoring.sql.sandbox import (
    MAX_RESULT_BYTES,
    MAX_SQL_CHARS,
    ROW_CAP,
    SQLSchemaError,
    execute_schema,
    new_connection,
    run_sandboxed,
)
from distil_platform.evaluation.scoring.sql.schema import Column, Table, introspect, quote_identifier

# Rows per table on database i (cycled): a mid-size one, a larger one, a small one.
_TABLE_SIZES = ((12, 24), (30, 60), (3, 8))
_NULL_RATE = 0.1
_LITERAL_RATE = 0.4


# -- literals ------------------------------------------------------------------------------------
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.Between, exp.In)
_PASS_THROUGH = (exp.Neg, exp.Paren, exp.Cast, exp.Tuple)
_STRING_LITERAL_RE = re.compile(r"'((?:[^']|'')*)'")


@dataclass(frozen=True)
class _Literal:
    column: str | None  # lower-cased column name it is compared with, if any
    value: Any
    op: str  # eq | cmp | like


def _literal_value(node: exp.Literal) -> Any:
    if node.is_string:
        return node.this
    try:
        value: Any = int(node.this)
    except ValueError:
        try:
            value = float(node.this)
        except ValueError:
            return node.this
    return -value if isinstance(node.parent, exp.Neg) else value


def extract_literals(sql: str) -> list[_Literal]:
    """Literals of ``sql`` with the column each is compared against (``col = 'x'``, ``col > 3``,
    ``col BETWEEN 1 AND 2``, ``col IN (...)``, ``col LIKE 'J%'``, also through aggregates such as
    ``SUM(col) > 1000``). Literals that are not compared with a column are skipped."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        # Unparseable for sqlglot: keep quoted strings as unattached text values.
        return [_Literal(None, s.replace("''", "'"), "eq") for s in _STRING_LITERAL_RE.findall(sql)]
    found: list[_Literal] = []
    for node in tree.find_all(exp.Literal):
        child: exp.Expression = node
        parent = node.parent
        while isinstance(parent, _PASS_THROUGH):
            child, parent = parent, parent.parent
        if not isinstance(parent, _COMPARISONS):
            continue
        if isinstance(parent, (exp.Between, exp.In)):
            side = parent.this if child is not parent.this else None
        else:
            side = parent.expression if child is parent.this else parent.this
        if side is None:
            continue
        op = (
            "like"
            if isinstance(parent, (exp.Like, exp.ILike))
            else ("eq" if isinstance(parent, (exp.EQ, exp.NEQ, exp.In)) else "cmp")
        )
        columns = (
            {c.name.lower() for c in side.find_all(exp.Column)}
            if not isinstance(side, exp.Column)
            else {side.name.lower()}
        )
        for column in sorted(columns):
            found.append(_Literal(column, _literal_value(node), op))
    return found


# -- data generation -----------------------------------------------------------------------------
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_BASE_DATE = dt.date(2018, 1, 1)
_DAYS_BACK = (0, 0, 1, 6, 7, 8, 29, 30, 31)  # edges of "today", "last 7 days", "last 30 days"


def _parse_date(value: Any) -> dt.date | None:
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def shift_days(day: dt.date, days: int) -> dt.date | None:
    """``day`` moved by ``days``, or None past year 1 / 9999 (a literal like '0001-01-01')."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return None


def _literal_variants(lit: _Literal, kind: str, rng: random.Random) -> list[Any]:
    """Values for a column of ``kind`` that hit, and sit just beside, a query literal."""
    value = lit.value
    if kind in ("date", "datetime"):
        day = _parse_date(value)
        if day is None:
            return []
        days = [day] if lit.op == "eq" else [x for d in (-1, 0, 1, -30, 30) if (x := shift_days(day, d))]
        if kind == "date":
            return [d.isoformat() for d in days]
        return [f"{d.isoformat()} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00" for d in days]
    if kind in ("int", "real", "bool"):
        if isinstance(value, str):
            try:
                value = float(value) if "." in value else int(value)
            except ValueError:
                return []
        if kind == "bool":
            return [int(value)] if value in (0, 1) else []
        if lit.op == "eq":
            return [value]
        step = 1 if kind == "int" else 0.5
        around = [value - step, value, value + step, value * 0.5, value * 1.5]
        return [round(v) if kind == "int" else round(float(v), 2) for v in around]
    # text
    text = str(value)
    if lit.op == "like":

        def fill(pattern: str) -> str:
            out = []
            for ch in pattern:
                if ch == "%":
                    out.append(rng.choice(["", "x", "Alpha ", " beta", "Gamma Co"]))
                elif ch == "_":
                    out.append(rng.choice("abcxyz"))
                else:
                    out.append(ch)
            return "".join(out)

        return [fill(text), fill(text), fill(text).upper()]
    return [text]


def _random_value(column: Column, rng: random.Random, vocabulary: int, pool: list[Any] | None = None) -> Any:
    kind, name = column.kind, column.name.lower()
    if kind == "bool":
        return rng.randint(0, 1)
    numbers = [v for v in pool or () if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    if kind in ("int", "real") and numbers:
        # On the scale of the query's thresholds, so `salary > 85000` splits the rows.
        value = rng.uniform(0, 2 * rng.choice(numbers))
        return int(value) if kind == "int" else round(value, 2)
    if kind == "int":
        if "year" in name:
            return rng.randint(2015, 2026)
        if name.endswith("_id"):
            return rng.randint(1, 20)
        return rng.randint(0, 1000) if rng.random() < 0.9 else rng.randint(0, 5)
    if kind == "real":
        return round(rng.uniform(0, 1000), 2)
    if kind in ("date", "datetime"):
        if rng.random() < 0.3:  # near today, for DATE('now') / DATE('now', '-30 days') style filters
            back = rng.choice(_DAYS_BACK) if rng.random() < 0.5 else rng.randint(0, 90)
            day = dt.date.today() - dt.timedelta(days=back)
        else:
            day = _BASE_DATE + dt.timedelta(days=rng.randint(0, 365 * 8))
        if kind == "date":
            return day.isoformat()
        return f"{day.isoformat()} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    # Few distinct texts per column, so GROUP BY / DISTINCT / HAVING see repeated values.
    return f"{column.name}_{rng.randint(1, vocabulary)}"


def _literal_pools(literals: Iterable[_Literal], tables: tuple[Table, ...], rng: random.Random) -> dict:
    """``{(table, column): [values]}`` from the literals, matched to columns by name."""
    by_column: dict[str, list[_Literal]] = {}
    unattached: list[_Literal] = []
    for lit in literals:
        (by_column.setdefault(lit.column, []) if lit.column else unattached).append(lit)
    pools: dict[tuple[str, str], list[Any]] = {}
    for table in tables:
        for column in table.columns:
            values: list[Any] = []
            for lit in by_column.get(column.name.lower(), []):
                values.extend(_literal_variants(lit, column.kind, rng))
            if column.kind == "text":
                for lit in unattached:
                    if isinstance(lit.value, str):
                        values.append(lit.value)
            if values:
                pools[(table.name, column.name)] = values
    return pools


_NO_PARENT = object()


def _foreign_key_values(
    table: Table, rng: random.Random, parent_values: dict, self_rows: list[dict]
) -> dict[str, Any] | object:
    """Foreign-key columns of one row, each group taken from one existing parent row."""
    row: dict[str, Any] = {}
    for cols, parent, pcols in table.foreign_keys:
        nullable = not any(c.notnull for c in table.columns if c.name in cols)
        if parent == table.name:  # self reference: an earlier row of this table, or NULL
            candidates = [tuple(r.get(p) for p in pcols) for r in self_rows]
            hot: list[tuple] = []
        else:
            candidates, hot = parent_values.get((parent, pcols), ([], []))
        if candidates and not (nullable and rng.random() < _NULL_RATE):
            # Often a parent that matches a query literal, so joins + WHERE on the parent select rows.
            row.update(zip(cols, rng.choice(hot if hot and rng.random() < _LITERAL_RATE else candidates)))
        elif nullable:
            row.update(dict.fromkeys(cols))
        else:
            return _NO_PARENT
    return row


def _generate_rows(
    table: Table, n_rows: int, rng: random.Random, pools: dict, parent_values: dict
) -> list[tuple]:
    """Up to ``n_rows`` rows for ``table`` respecting NOT NULL, UNIQUE/PK and foreign keys."""
    seen: dict[tuple[str, ...], set] = {u: set() for u in table.uniques}
    fk_columns = {c for cols, _, _ in table.foreign_keys for c in cols}
    vocabulary = rng.choice((3, 5, 8))
    rows: list[tuple] = []
    self_rows: list[dict] = []
    for i in range(n_rows):
        for _attempt in range(6):
            row = _foreign_key_values(table, rng, parent_values, self_rows)
            if row is _NO_PARENT:
                return rows  # a NOT NULL foreign key with an empty parent table: no row possible
            assert isinstance(row, dict)
            for column in table.columns:
                if column.name in fk_columns:
                    continue
                if column.name == table.integer_pk:
                    row[column.name] = i + 1
                elif not column.notnull and rng.random() < _NULL_RATE:
                    row[column.name] = None
                elif (pool := pools.get((table.name, column.name))) and rng.random() < _LITERAL_RATE:
                    row[column.name] = rng.choice(pool)
                else:
                    row[column.name] = _random_value(column, rng, vocabulary, pool)
            for unique in table.uniques:
                col = unique[0]
                if len(unique) == 1 and col not in fk_columns and (row[col],) in seen[unique]:
                    # A single-column collision is fixed by construction; composite ones retry.
                    if isinstance(row[col], str):
                        row[col] = f"{row[col]}_{i}"
                    elif isinstance(row[col], (int, float)):
                        row[col] = (
                            max((k[0] for k in seen[unique] if isinstance(k[0], (int, float))), default=0) + 1
                        )
            keys = {u: tuple(row[c] for c in u) for u in table.uniques}
            if all(None in key or key not in seen[u] for u, key in keys.items()):
                for u, key in keys.items():
                    seen[u].add(key)
                rows.append(tuple(row[c.name] for c in table.columns))
                self_rows.append(row)
                break
    return rows


def build_database(
    schema_sql: str, literals: Iterable[_Literal] = (), *, seed: int = 0, index: int = 0
) -> sqlite3.Connection:
    """An in-memory SQLite database from ``schema_sql`` filled with deterministic rows.

    Same (schema, literals, seed, index) gives the same data. Rows respect column types, primary
    keys, UNIQUE, NOT NULL and foreign keys (children reference existing parent rows); text,
    number and date columns compared with a query literal often take that literal (or a value
    just beside it, for range comparisons). Raises :class:`SQLSchemaError` on a bad schema.
    """
    tables = introspect(schema_sql)
    literals = sorted(set(literals), key=repr)  # order-independent: data is a function of the set
    rng = random.Random(f"distil-sql:{seed}:{index}:{schema_sql}")
    pools = _literal_pools(literals, tables, rng)
    low, high = _TABLE_SIZES[index % len(_TABLE_SIZES)]
    conn = new_connection()
    try:
        try:
            execute_schema(conn, schema_sql)  # sandboxed as ever; its statements were checked by introspect
        except SQLSchemaError:
            conn.close()
            raise
        # (parent, parent columns) -> (all keys, keys of rows holding a query literal)
        parent_values: dict[tuple[str, tuple[str, ...]], tuple[list[tuple], list[tuple]]] = {}
        referenced = {(parent, pcols) for t in tables for _, parent, pcols in t.foreign_keys}
        for table in tables:
            n_rows = rng.randint(low, high) * (2 if table.foreign_keys else 1)
            rows = _generate_rows(table, n_rows, rng, pools, parent_values)
            if rows:
                cols = ", ".join(quote_identifier(c.name) for c in table.columns)
                marks = ", ".join("?" for _ in table.columns)
                conn.executemany(
                    f"INSERT OR IGNORE INTO {quote_identifier(table.name)} ({cols}) VALUES ({marks})", rows
                )
            literal_values = {
                v
                for (t, _), values in pools.items()
                if t == table.name
                for v in values
                if isinstance(v, str) or (isinstance(v, (int, float)) and abs(v) > 1)  # not 0/1 flags
            }
            for parent, pcols in referenced:
                if parent == table.name:
                    select = ", ".join(quote_identifier(c) for c in pcols)
                    keyed = conn.execute(f"SELECT {select}, * FROM {quote_identifier(parent)}").fetchall()
                    keys = sorted({r[: len(pcols)] for r in keyed}, key=repr)
                    hot = sorted(
                        {r[: len(pcols)] for r in keyed if literal_values & set(r[len(pcols) :])}, key=repr
                    )
                    parent_values[(parent, pcols)] = (keys, hot)
    except sqlite3.Error as exc:
        conn.close()
        raise SQLSchemaError(f"cannot fill a database for the schema: {exc}") from None
    return conn


def execute_untrusted_sql(
    schema_sql: str,
    sql: str,
    *,
    timeout_s: float = 2.0,
    seed: int = 0,
    row_cap: int = ROW_CAP,
    byte_cap: int = MAX_RESULT_BYTES,
) -> tuple[int, list[tuple]]:
    """Runs untrusted ``sql`` in the sandbox of :func:`run_sandboxed` on a fresh in-memory database
    built from ``schema_sql`` and filled with generated rows (:func:`build_database`).

    Raises :class:`SQLSchemaError` when the DDL does not execute, :class:`SQLSandboxError` when the
    query is refused or fails. For checking model/teacher SQL before trusting it.
    """
    conn = build_database(schema_sql, extract_literals(sql) if len(sql) <= MAX_SQL_CHARS else (), seed=seed)
    try:
        return run_sandboxed(conn, sql, timeout_s=timeout_s, row_cap=row_cap, byte_cap=byte_cap)
    finally:
        conn.close()
