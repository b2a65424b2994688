"""Distinguishing databases for a gold query: boundary-targeted generation and the test-suite search.

``boundary_database`` starts from a generated database (:func:`~distil_platform.evaluation.scoring.sql.build_database`)
and edits it, inside savepoints that are rolled back when an edit breaks a NOT NULL, UNIQUE, CHECK or
foreign-key constraint, so that the gold query's comparisons are decided *at* their boundaries:

- ``col op literal`` (also ``BETWEEN``, ``IN``, ``strftime('%Y', col) = '2024'``): rows holding the
  literal, one unit below and one unit above (±1, the last decimal place, ±1 day, the first and last
  day of the year/month and the days beside them), and a NULL where the column allows it;
- ``HAVING AGG(...) op literal``: groups whose aggregate is exactly the literal, literal − 1 and
  literal + 1 (COUNT by deleting or duplicating contributing rows; SUM/AVG/MIN/MAX and arithmetic
  inside them by solving for one row's value, which is linear in it, and checking the result);
- ``col op (SELECT AGG(...) ...)`` (correlated or not): a row equal to the subquery's value (solved
  the same way), or, on every other boundary database, the column made constant so every row equals
  its own AVG/MIN/MAX;
- joins: a parent row without children, and NULL foreign keys where allowed; NULLs in aggregated
  columns.

``distinguishing_suite`` is the search of Zhong et al. (2020): it runs the gold and every
:func:`~distil_platform.evaluation.scoring.sql_neighbours.neighbour_queries` neighbour on candidate databases
(boundary ones first, then random ones) and keeps each candidate that distinguishes a neighbour not
yet distinguished. Neighbours no candidate distinguishes are recorded as possibly equivalent. The
result is cached per (schema, gold, seed) in-process and, when ``DAGSTER_HOME`` is set, as JSON
under ``$DAGSTER_HOME/sql_suites/`` (the chosen database specs; databases are rebuilt from them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from distil_platform.evaluation.scoring.sql import (
    MAX_VALUE_BYTES,
    SQLSandboxError,
    _introspect,
    _quote,
    _setup_authorizer,
    _Table,
    build_database,
    extract_literals,
    has_top_level_order_by,
    results_match,
    run_sandboxed,
)
from distil_platform.evaluation.scoring.sql_neighbours import Neighbour, neighbour_queries, unit_of

SUITE_VERSION = 1  # bump when generation or search changes: old cache entries are then ignored
N_BOUNDARY_CANDIDATES = 6
N_RANDOM_CANDIDATES = 10
_NEIGHBOUR_TIMEOUT_S = 1.0
_BUILD_BUDGET_S = 30.0
_MEMORY_CACHE_SIZE = 512


# -- query analysis ---------------------------------------------------------------------------------
def _alias_map(tree: exp.Expression, tables: tuple[_Table, ...]) -> dict[str, _Table]:
    by_name = {t.name.lower(): t for t in tables}
    aliases: dict[str, _Table] = {}
    for node in tree.find_all(exp.Table):
        table = by_name.get(node.name.lower())
        if table is not None:
            aliases[node.alias_or_name.lower()] = table
            aliases.setdefault(node.name.lower(), table)
    return aliases


def _resolve(column: exp.Column, aliases: dict[str, _Table]) -> tuple[str, _Table] | None:
    """``(alias, table)`` that ``column`` belongs to, or None."""
    name = column.name.lower()
    if column.table:
        table = aliases.get(column.table.lower())
        return (column.table, table) if table is not None else None
    for alias, table in aliases.items():
        if any(c.name.lower() == name for c in table.columns):
            return alias, table
    return None


def _column_of(table: _Table, name: str):
    return next((c for c in table.columns if c.name.lower() == name.lower()), None)


def _enclosing_select(node: exp.Expression) -> exp.Select | None:
    parent = node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        parent = parent.parent
    return parent


# -- edits ------------------------------------------------------------------------------------------
class _Editor:
    """Constraint-checked edits of a trusted, generated database."""

    def __init__(self, conn: sqlite3.Connection, rng: random.Random):
        self.conn, self.rng = conn, rng
        self.fk_baseline = self._fk_violations()

    def _fk_violations(self) -> int:
        try:
            return len(self.conn.execute("PRAGMA foreign_key_check").fetchall())
        except sqlite3.Error:
            return 0

    def attempt(self, edit: Callable[[], bool]) -> bool:
        """Runs ``edit`` in a savepoint; keeps it only when it returns True and breaks no constraint."""
        self.conn.execute("SAVEPOINT boundary_edit")
        try:
            ok = bool(edit()) and self._fk_violations() <= self.fk_baseline
        except (sqlite3.Error, SQLSandboxError, ArithmeticError, ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            self.conn.execute("ROLLBACK TO boundary_edit")
        self.conn.execute("RELEASE boundary_edit")
        return ok

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        self.conn.set_progress_handler(_deadline_handler(1.0), 1000)
        try:
            return self.conn.execute(sql, params).fetchall()
        finally:
            self.conn.set_progress_handler(None, 0)

    def rowids(self, table: _Table) -> list[int]:
        return [r[0] for r in self.query(f"SELECT rowid FROM {_quote(table.name)} ORDER BY rowid")]

    def set_value(self, table: _Table, column: str, rowid: int, value: Any) -> bool:
        self.conn.execute(
            f"UPDATE {_quote(table.name)} SET {_quote(column)} = ? WHERE rowid = ?", (value, rowid)
        )
        return True

    def duplicate(
        self, table: _Table, rowid: int, tag: int, overrides: dict[str, Any] | None = None
    ) -> int | None:
        """Inserts a copy of row ``rowid`` with its single-column keys made unique (and ``overrides``
        applied); returns the new rowid."""
        row = self.query(f"SELECT * FROM {_quote(table.name)} WHERE rowid = ?", (rowid,))
        if not row:
            return None
        values = dict(zip([c.name for c in table.columns], row[0]))
        unique_single = {u[0] for u in table.uniques if len(u) == 1}
        for column in table.columns:
            if column.name == table.integer_pk:
                values[column.name] = None
            elif column.name in unique_single and values[column.name] is not None:
                value = values[column.name]
                if isinstance(value, str):
                    values[column.name] = f"{value}~{tag}"
                else:
                    top = self.query(f"SELECT MAX({_quote(column.name)}) FROM {_quote(table.name)}")[0][0]
                    values[column.name] = (top or 0) + 1
        values.update(overrides or {})
        cols = ", ".join(_quote(c) for c in values)
        marks = ", ".join("?" for _ in values)
        cursor = self.conn.execute(
            f"INSERT INTO {_quote(table.name)} ({cols}) VALUES ({marks})", tuple(values.values())
        )
        return cursor.lastrowid

    def clone_with_children(
        self, parent: _Table, rowid: int, children: list[tuple[_Table, tuple, tuple]]
    ) -> bool:
        """A copy of parent row ``rowid`` (same non-key values) and of every child row that
        references it, re-pointed at the copy: two groups that look the same."""
        new = self.duplicate(parent, rowid, 7)
        if new is None:
            return False
        for child, cols, pcols in children:
            select = ", ".join(_quote(c) for c in pcols)
            old_key = self.query(f"SELECT {select} FROM {_quote(parent.name)} WHERE rowid = ?", (rowid,))[0]
            new_key = self.query(f"SELECT {select} FROM {_quote(parent.name)} WHERE rowid = ?", (new,))[0]
            where = " AND ".join(f"{_quote(c)} IS ?" for c in cols)
            for (child_rowid,) in self.query(
                f"SELECT rowid FROM {_quote(child.name)} WHERE {where}", old_key
            ):
                if self.duplicate(child, child_rowid, 7, dict(zip(cols, new_key))) is None:
                    return False
        return True


def _deadline_handler(seconds: float) -> Callable[[], int]:
    deadline = time.perf_counter() + seconds
    return lambda: int(time.perf_counter() > deadline)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _literal_number(node: exp.Expression) -> Decimal | None:
    negate = False
    while isinstance(node, (exp.Paren, exp.Neg)):
        negate ^= isinstance(node, exp.Neg)
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            value = Decimal(node.this)
        except ArithmeticError:
            return None
        return -value if negate else value
    return None


def _boundary_values(literal: exp.Literal, kind: str) -> list[Any]:
    """Values on and beside ``literal`` for a column of ``kind``."""
    if not literal.is_string:
        value = _literal_number(literal)
        if value is None:
            return []
        unit = unit_of(literal.this)
        out = [value - unit, value, value + unit]
        if kind == "bool":  # a BOOLEAN column holds 0 and 1 only
            return [int(v) for v in out if v in (0, 1)]
        return [int(v) if kind == "int" and v == v.to_integral_value() else float(v) for v in out]
    text = literal.this
    try:
        day = dt.date.fromisoformat(text[:10]) if len(text) >= 10 else None
    except ValueError:
        day = None
    if day is not None and kind in ("date", "datetime"):
        days = [d for k in (-1, 0, 1) if (d := _shift(day, k))]
        if kind == "date":
            return [d.isoformat() for d in days]
        return [
            f"{days[0].isoformat()} 23:59:59",
            text,
            f"{day.isoformat()} 00:00:00",
            f"{day.isoformat()} 00:00:01",
        ]
    if not text:
        return [text, "a"]
    # Text: the literal and strings just below and just above it in SQLite's (binary) order.
    below = text[:-1] + chr(max(ord(text[-1]) - 1, 32)) if ord(text[-1]) > 32 else text[:-1]
    return [text, below, text + "a"]


def _period_values(text: str, kind: str) -> list[str]:
    """First/last day of a 'YYYY' or 'YYYY-MM' period and the days beside them."""
    try:
        if len(text) == 4 and text.isdigit():
            first, last = dt.date(int(text), 1, 1), dt.date(int(text), 12, 31)
        elif len(text) == 7 and text[4] == "-":
            year, month = int(text[:4]), int(text[5:])
            first = dt.date(year, month, 1)
            last = dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)
        else:
            return []
    except (ValueError, OverflowError):
        return []
    days = [d for d in (_shift(first, -1), first, last, _shift(last, 1)) if d is not None]
    if kind == "datetime":
        return [f"{d.isoformat()} 12:00:00" for d in days]
    return [d.isoformat() for d in days]


def _shift(day: dt.date, days: int) -> dt.date | None:
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return None


def _literal_edits(editor: _Editor, tree: exp.Expression, aliases: dict[str, _Table]) -> None:
    """Rows on and beside every literal a column is compared with, and NULLs in compared columns."""
    for node in tree.find_all(
        exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between, exp.In, exp.Like
    ):
        if isinstance(node, (exp.Between, exp.In)):
            side = node.this
            literals = [n for n in node.find_all(exp.Literal) if n.parent is not side]
        else:
            sides = (node.this, node.expression)
            literals = [s for s in sides if isinstance(s, exp.Literal)]
            side = next((s for s in sides if not isinstance(s, exp.Literal)), None)
        if side is None:
            continue
        columns = [side] if isinstance(side, exp.Column) else list(side.find_all(exp.Column))
        if len(columns) != 1 or side.find(exp.Subquery) or side.find(exp.AggFunc):
            continue
        resolved = _resolve(columns[0], aliases)
        if resolved is None:
            continue
        _, table = resolved
        column = _column_of(table, columns[0].name)
        if column is None:
            continue
        values: list[Any] = []
        for literal in literals:
            if isinstance(side, exp.Column):
                values.extend(_boundary_values(literal, column.kind))
            elif literal.is_string and column.kind in ("date", "datetime"):
                values.extend(_period_values(literal.this, column.kind))
        rowids = editor.rowids(table)
        editor.rng.shuffle(rowids)
        targets = values + ([None] if not column.notnull else [])
        for rowid, value in zip(rowids, targets):
            editor.attempt(lambda t=table, c=column.name, r=rowid, v=value: editor.set_value(t, c, r, v))


def _null_edits(editor: _Editor, tree: exp.Expression, aliases: dict[str, _Table]) -> None:
    """A NULL in one row of each nullable column an aggregate reads."""
    for agg in tree.find_all(exp.AggFunc):
        for column_node in agg.find_all(exp.Column):
            resolved = _resolve(column_node, aliases)
            if resolved is None:
                continue
            column = _column_of(resolved[1], column_node.name)
            rowids = editor.rowids(resolved[1])
            if column is None or column.notnull or not rowids:
                continue
            rowid = editor.rng.choice(rowids)
            editor.attempt(lambda t=resolved[1], c=column.name, r=rowid: editor.set_value(t, c, r, None))


def _join_edits(editor: _Editor, tree: exp.Expression, aliases: dict[str, _Table]) -> None:
    """For each foreign key between joined tables: a parent without children, a child with a NULL key."""
    if not list(tree.find_all(exp.Join)):
        return
    in_query = {t.name for t in aliases.values()}
    for child in {t.name: t for t in aliases.values()}.values():
        for cols, parent_name, parent_cols in child.foreign_keys:
            if parent_name not in in_query:
                continue
            parent = next(t for t in aliases.values() if t.name == parent_name)
            rowids = editor.rowids(parent)
            if rowids:
                lonely, cloned = editor.rng.choice(rowids), editor.rng.choice(rowids)
                editor.attempt(lambda p=parent, r=lonely: editor.duplicate(p, r, 1) is not None)
                editor.attempt(
                    lambda p=parent, r=cloned, c=child, cs=cols, pcs=parent_cols: editor.clone_with_children(
                        p, r, [(c, cs, pcs)]
                    )
                )
            nullable = not any(c.notnull for c in child.columns if c.name in cols)
            child_rows = editor.rowids(child)
            if nullable and child_rows:
                rowid = editor.rng.choice(child_rows)
                editor.attempt(
                    lambda c=child, r=rowid, cs=cols: all(editor.set_value(c, col, r, None) for col in cs)
                )


def _strip_select(select: exp.Select) -> exp.Select:
    probe = select.copy()
    for key in ("having", "order", "limit", "offset", "distinct"):
        probe.set(key, None)
    return probe


def _group_filter(probe: exp.Select, group_exprs: list[exp.Expression]) -> exp.Select:
    conditions = [exp.Is(this=g.copy(), expression=exp.Placeholder()) for g in group_exprs]
    where = probe.args.get("where")
    parts = ([where.this.copy()] if where is not None else []) + conditions
    probe.set("where", exp.Where(this=exp.and_(*parts)) if parts else None)
    return probe


def _solve_row_value(
    editor: _Editor,
    table: _Table,
    column: str,
    rowid: int,
    evaluate: Callable[[], float | None],
    goal: Callable[[float], float],
) -> bool:
    """Sets ``column`` of one row so that ``evaluate() == goal(x)``, where the value is linear in x:
    two evaluations (secant), then a check. Keeps integers integral."""
    kind = _column_of(table, column).kind
    current = editor.query(f"SELECT {_quote(column)} FROM {_quote(table.name)} WHERE rowid = ?", (rowid,))
    x0 = _number(current[0][0]) if current else None
    x0 = 0.0 if x0 is None else x0
    x1 = x0 + 1.0
    editor.set_value(table, column, rowid, int(x0) if kind == "int" and x0.is_integer() else x0)
    f0 = evaluate()
    editor.set_value(table, column, rowid, int(x1) if kind == "int" and x1.is_integer() else x1)
    f1 = evaluate()
    if f0 is None or f1 is None:
        return False
    g0, g1 = f0 - goal(x0), f1 - goal(x1)
    if g1 == g0:
        return False
    x = x0 - g0 * (x1 - x0) / (g1 - g0)
    if kind == "int":
        if abs(x - round(x)) > 1e-9:
            return False
        tries: list[Any] = [round(x)]
    else:
        # Floating point: the boundary must be hit exactly, so also try the neighbouring doubles.
        short = float(f"{x:.10g}")
        tries = [short, x]
        for direction in (math.inf, -math.inf):
            y = x
            for _ in range(3):
                y = math.nextafter(y, direction)
                tries.append(y)
    for candidate in tries:
        editor.set_value(table, column, rowid, candidate)
        value = evaluate()
        if value is not None and value == goal(float(candidate)):
            return True
    return False


def _aggregate_edits(editor: _Editor, tree: exp.Expression, aliases: dict[str, _Table], variant: int) -> None:
    """Groups whose HAVING aggregate lands on literal - 1, literal and literal + 1."""
    for select in tree.find_all(exp.Select):
        having = select.args.get("having")
        if having is None:
            continue
        group_exprs = list(select.args["group"].expressions) if select.args.get("group") else []
        for cmp in having.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE):
            literal = next((s for s in (cmp.this, cmp.expression) if _literal_number(s) is not None), None)
            side = cmp.expression if literal is cmp.this else cmp.this
            if literal is None or side.find(exp.AggFunc) is None or side.find(exp.Subquery):
                continue
            value = _literal_number(literal)
            unit = unit_of(str(abs(value)))
            goals = [float(value - unit), float(value), float(value + unit), float(value + unit / 100)]
            if not group_exprs:
                goals = [goals[variant % 4]]
            probe = _strip_select(select)
            probe.set("group", select.args.get("group").copy() if group_exprs else None)
            probe.set("expressions", [g.copy() for g in group_exprs] + [side.copy()])
            groups = editor.query(probe.sql("sqlite"))
            editor.rng.shuffle(groups)
            value_probe = _group_filter(_strip_select(select), group_exprs)
            value_probe.set("group", None)
            value_probe.set("expressions", [side.copy()])
            agg = side if isinstance(side, exp.AggFunc) else side.find(exp.AggFunc)
            for goal, group in zip(goals, groups):
                key = tuple(group[: len(group_exprs)])

                def evaluate(key: tuple = key, sql: str = value_probe.sql("sqlite")) -> float | None:
                    rows = editor.query(sql, key)
                    return _number(rows[0][0]) if rows else None

                def edit(
                    goal=goal,
                    key=key,
                    evaluate=evaluate,
                    select=select,
                    group_exprs=group_exprs,
                    side=side,
                    agg=agg,
                ):
                    if isinstance(agg, exp.Count):
                        return _set_count(editor, select, group_exprs, aliases, key, goal, evaluate)
                    return _set_aggregate(editor, select, group_exprs, side, aliases, key, goal, evaluate)

                editor.attempt(edit)


def _contributing(
    editor: _Editor, select: exp.Select, group_exprs: list, alias: str, key: tuple
) -> list[int]:
    probe = _group_filter(_strip_select(select), group_exprs)
    probe.set("group", None)
    probe.set("expressions", [exp.column("rowid", table=alias)])
    return [r[0] for r in editor.query(probe.sql("sqlite"), key) if r[0] is not None]


def _set_count(editor, select, group_exprs, aliases, key, goal, evaluate) -> bool:
    if goal < 0 or goal != int(goal):
        return False
    current = evaluate()
    if current is None:
        return False
    # The table whose rows multiply: the last joined one first.
    query_aliases = [select.args["from_"].this] + [j.this for j in select.args.get("joins") or []]
    for table_node in reversed(query_aliases):
        if not isinstance(table_node, exp.Table):
            continue
        alias = table_node.alias_or_name
        table = aliases.get(alias.lower())
        if table is None:
            continue
        rows = _contributing(editor, select, group_exprs, alias, key)
        if not rows:
            continue
        delta = int(goal) - int(current)
        if delta < 0:
            for rowid in rows[:-delta]:
                editor.conn.execute(f"DELETE FROM {_quote(table.name)} WHERE rowid = ?", (rowid,))
        else:
            for k in range(delta):
                if editor.duplicate(table, rows[k % len(rows)], k + 1) is None:
                    return False
        return evaluate() == goal
    return False


def _set_aggregate(editor, select, group_exprs, side, aliases, key, goal, evaluate) -> bool:
    agg = side if isinstance(side, exp.AggFunc) else side.find(exp.AggFunc)
    if agg is None:
        return False
    # Each column the aggregate reads (the value is linear in some of them, e.g. `price` in
    # `(price - cost) / cost`), a few contributing rows each.
    seen: set[str] = set()
    for column_node in agg.find_all(exp.Column):
        resolved = _resolve(column_node, aliases)
        if resolved is None or column_node.sql() in seen:
            continue
        seen.add(column_node.sql())
        alias, table = resolved
        rows = _contributing(editor, select, group_exprs, alias, key)
        editor.rng.shuffle(rows)
        for rowid in rows[:3]:
            if _solve_row_value(editor, table, column_node.name, rowid, evaluate, lambda _x, g=goal: g):
                return True
    return False


def _subquery_edits(editor: _Editor, tree: exp.Expression, aliases: dict[str, _Table], variant: int) -> None:
    """A row equal to the scalar subquery it is compared with (or, on odd variants, a constant column)."""
    for cmp in list(tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
        sub = next((s for s in (cmp.this, cmp.expression) if isinstance(s, exp.Subquery)), None)
        other = cmp.expression if sub is cmp.this else cmp.this
        if sub is None or not isinstance(other, exp.Column):
            continue
        resolved = _resolve(other, aliases)
        outer = _enclosing_select(cmp)
        if resolved is None or outer is None:
            continue
        alias, table = resolved
        column = other.name
        if variant % 2:
            inner_col = next(iter(sub.find_all(exp.Column)), None)
            inner = (
                _resolve(inner_col, _alias_map(sub, tuple(aliases.values())))
                if inner_col is not None
                else None
            )
            target = inner[1] if inner else table
            name = inner_col.name if inner_col is not None else column

            def constant(t: _Table = target, c: str = name) -> bool:
                rows = editor.query(
                    f"SELECT {_quote(c)} FROM {_quote(t.name)} WHERE {_quote(c)} IS NOT NULL LIMIT 1"
                )
                if not rows:
                    return False
                editor.conn.execute(f"UPDATE {_quote(t.name)} SET {_quote(c)} = ?", (rows[0][0],))
                return True

            editor.attempt(constant)
            continue
        probe_sql = f"SELECT ({sub.this.sql('sqlite')}) FROM {_quote(table.name)} AS {_quote(alias)} WHERE {_quote(alias)}.rowid = ?"
        rowids = editor.rowids(table)
        editor.rng.shuffle(rowids)
        for rowid in rowids[:4]:

            def evaluate(r: int = rowid, sql: str = probe_sql) -> float | None:
                rows = editor.query(sql, (r,))
                return _number(rows[0][0]) if rows else None

            def edit(r=rowid, e=evaluate, t=table, c=column) -> bool:
                return _solve_row_value(editor, t, c, r, e, lambda x: x)

            if editor.attempt(edit):
                break


def boundary_database(schema_sql: str, gold_sql: str, *, seed: int = 0, index: int = 0) -> sqlite3.Connection:
    """A generated database for ``schema_sql`` edited so the comparisons of ``gold_sql`` are decided
    at their boundaries (see module docstring). Deterministic for (schema, gold, seed, index), up
    to the dates that :func:`build_database` places relative to today."""
    tables = _introspect(schema_sql)
    conn = build_database(schema_sql, _literals(gold_sql), seed=seed, index=100 + index)
    tree = _parsed(gold_sql)
    if tree is None:
        return conn
    aliases = _alias_map(tree, tables)
    editor = _Editor(conn, random.Random(f"distil-sql-boundary:{seed}:{index}:{gold_sql}:{schema_sql}"))
    for edit in (_join_edits, _null_edits, _literal_edits):
        edit(editor, tree, aliases)
    _aggregate_edits(editor, tree, aliases, index)
    _subquery_edits(editor, tree, aliases, index)
    return conn


# -- the search -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistinguishingSuite:
    """Databases chosen for one (schema, gold, seed), with the gold's result on each."""

    specs: tuple[tuple[str, int], ...]  # ("boundary" | "random", index) of each chosen database
    databases: tuple[bytes, ...] = field(repr=False)  # serialized SQLite databases
    gold_results: tuple[tuple[int, list[tuple]], ...] = field(repr=False)
    n_neighbours: int = 0
    possibly_equivalent: tuple[Neighbour, ...] = ()
    build_s: float = 0.0


@lru_cache(maxsize=1024)
def _literals(gold_sql: str) -> tuple:
    return tuple(extract_literals(gold_sql))


@lru_cache(maxsize=1024)
def _parsed(gold_sql: str) -> exp.Expression | None:
    try:
        return sqlglot.parse_one(gold_sql.strip().rstrip(";"), read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        return None


def _candidate(schema_sql: str, gold_sql: str, kind: str, index: int, seed: int) -> sqlite3.Connection:
    if kind == "boundary":
        return boundary_database(schema_sql, gold_sql, seed=seed, index=index)
    return build_database(schema_sql, _literals(gold_sql), seed=seed, index=200 + index)


def _run(conn: sqlite3.Connection, sql: str, timeout_s: float) -> tuple[int, list[tuple]] | None:
    try:
        return run_sandboxed(conn, sql, timeout_s=timeout_s)
    except SQLSandboxError:
        return None


def _search(schema_sql: str, gold_sql: str, seed: int) -> tuple[list[tuple[str, int]], int, list[Neighbour]]:
    try:
        neighbours = neighbour_queries(gold_sql)
    except ValueError:
        neighbours = []
    ordered = has_top_level_order_by(gold_sql)
    alive = list(neighbours)
    chosen: list[tuple[str, int]] = []
    candidates = [("boundary", k) for k in range(N_BOUNDARY_CANDIDATES)] + [
        ("random", k) for k in range(N_RANDOM_CANDIDATES)
    ]
    started = time.perf_counter()
    for kind, index in candidates:
        if not alive or time.perf_counter() - started > _BUILD_BUDGET_S:
            break
        conn = _candidate(schema_sql, gold_sql, kind, index, seed)
        try:
            gold = _run(conn, gold_sql, 10.0)
            if gold is None:
                continue
            killed = []
            for neighbour in alive:
                result = _run(conn, neighbour.sql, _NEIGHBOUR_TIMEOUT_S)
                if result is None or not results_match(gold, result, ordered=ordered):
                    killed.append(neighbour)
        finally:
            conn.close()
        if killed:
            chosen.append((kind, index))
            alive = [n for n in alive if n not in killed]
    return chosen, len(neighbours), alive


_memory: OrderedDict[str, DistinguishingSuite] = OrderedDict()
_lock = threading.Lock()


def _key(schema_sql: str, gold_sql: str, seed: int) -> str:
    text = json.dumps([SUITE_VERSION, sqlglot.__version__, schema_sql, gold_sql, seed])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _disk_path(key: str) -> Path | None:
    home = os.environ.get("DAGSTER_HOME")
    if not home or not os.path.isabs(home) or not os.path.isdir(home):
        return None
    return Path(home) / "sql_suites" / f"{key}.json"


def _materialise(schema_sql, gold_sql, seed, specs, n_neighbours, alive, build_s) -> DistinguishingSuite:
    databases, results = [], []
    for kind, index in specs:
        conn = _candidate(schema_sql, gold_sql, kind, index, seed)
        try:
            gold = _run(conn, gold_sql, 10.0)
            if gold is None:
                continue
            databases.append(conn.serialize())
            results.append(gold)
        finally:
            conn.close()
    return DistinguishingSuite(
        tuple(specs), tuple(databases), tuple(results), n_neighbours, tuple(alive), build_s
    )


def distinguishing_suite(schema_sql: str, gold_sql: str, *, seed: int = 0) -> DistinguishingSuite:
    """The cached distinguishing databases of ``gold_sql`` on ``schema_sql`` (see module docstring)."""
    key = _key(schema_sql, gold_sql, seed)
    with _lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    path = _disk_path(key)
    suite = None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            alive = [Neighbour(**n) for n in data["possibly_equivalent"]]
            specs = [(k, int(i)) for k, i in data["specs"]]
            suite = _materialise(
                schema_sql, gold_sql, seed, specs, data["n_neighbours"], alive, data["build_s"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            suite = None
    if suite is None:
        started = time.perf_counter()
        specs, n_neighbours, alive = _search(schema_sql, gold_sql, seed)
        build_s = round(time.perf_counter() - started, 3)
        suite = _materialise(schema_sql, gold_sql, seed, specs, n_neighbours, alive, build_s)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "version": SUITE_VERSION,
                            "specs": specs,
                            "n_neighbours": n_neighbours,
                            "possibly_equivalent": [n.__dict__ for n in alive],
                            "build_s": build_s,
                        }
                    ),
                    encoding="utf-8",
                )
                os.replace(tmp, path)
            except OSError:
                pass
    with _lock:
        _memory[key] = suite
        while len(_memory) > _MEMORY_CACHE_SIZE:
            _memory.popitem(last=False)
    return suite


def open_suite_database(data: bytes) -> sqlite3.Connection:
    """A fresh in-memory connection holding one serialized suite database (with the sandbox limits)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.deserialize(data)  # before the authorizer, which would deny it
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(_setup_authorizer)
    return conn
