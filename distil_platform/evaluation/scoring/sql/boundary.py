"""Boundary databases for a gold query, the first candidates of the distinguishing search.

``boundary_database`` starts from a generated database
(:func:`~distil_platform.evaluation.scoring.sql.database.build_database`) and edits it
(:class:`~distil_platform.evaluation.scoring.sql.editor.Editor`), inside savepoints that are rolled
back when an edit breaks a NOT NULL, UNIQUE, CHECK or foreign-key constraint, so that the gold
query's comparisons are decided *at* their boundaries:

- ``col op literal`` (also ``BETWEEN``, ``IN``, ``strftime('%Y', col) = '2024'``): rows holding the
  literal, one unit below and one unit above (±1, the last decimal place, ±1 day, the first and last
  day of the year/month and the days beside them), and a NULL where the column allows it;
- ``HAVING AGG(...) op literal``: groups whose aggregate is exactly the literal, literal − 1 and
  literal + 1 (COUNT by deleting or duplicating contributing rows; SUM/AVG/MIN/MAX and arithmetic
  inside them by solving for one row's value, which is linear in it, and checking the result);
- ``col op (SELECT AGG(...) ...)`` (correlated or not): a row equal to the subquery's value (solved
  the same way), or, on every other boundary database, the column made constant so every row equals
  its own AVG/MIN/MAX (these two: :mod:`distil_platform.evaluation.scoring.sql.boundary_aggregates`);
- joins: a parent row without children, and NULL foreign keys where allowed; NULLs in aggregated
  columns.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp

from distil_platform.evaluation.scoring.sql.boundary_aggregates import aggregate_edits, subquery_edits
from distil_platform.evaluation.scoring.sql.database import build_database, extract_literals, shift_days
from distil_platform.evaluation.scoring.sql.editor import (
    Editor,
    alias_map,
    column_of,
    literal_number,
    resolve_column,
)
from distil_platform.evaluation.scoring.sql.neighbours import unit_of
from distil_platform.evaluation.scoring.sql.schema import Table, introspect


def _boundary_values(literal: exp.Literal, kind: str) -> list[Any]:
    """Values on and beside ``literal`` for a column of ``kind``."""
    if not literal.is_string:
        value = literal_number(literal)
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
        days = [d for k in (-1, 0, 1) if (d := shift_days(day, k))]
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
    days = [d for d in (shift_days(first, -1), first, last, shift_days(last, 1)) if d is not None]
    if kind == "datetime":
        return [f"{d.isoformat()} 12:00:00" for d in days]
    return [d.isoformat() for d in days]


def _literal_edits(editor: Editor, tree: exp.Expression, aliases: dict[str, Table]) -> None:
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
        resolved = resolve_column(columns[0], aliases)
        if resolved is None:
            continue
        _, table = resolved
        column = column_of(table, columns[0].name)
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


def _null_edits(editor: Editor, tree: exp.Expression, aliases: dict[str, Table]) -> None:
    """A NULL in one row of each nullable column an aggregate reads."""
    for agg in tree.find_all(exp.AggFunc):
        for column_node in agg.find_all(exp.Column):
            resolved = resolve_column(column_node, aliases)
            if resolved is None:
                continue
            column = column_of(resolved[1], column_node.name)
            rowids = editor.rowids(resolved[1])
            if column is None or column.notnull or not rowids:
                continue
            rowid = editor.rng.choice(rowids)
            editor.attempt(lambda t=resolved[1], c=column.name, r=rowid: editor.set_value(t, c, r, None))


def _join_edits(editor: Editor, tree: exp.Expression, aliases: dict[str, Table]) -> None:
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


@lru_cache(maxsize=1024)
def gold_literals(gold_sql: str) -> tuple:
    return tuple(extract_literals(gold_sql))


@lru_cache(maxsize=1024)
def _parsed(gold_sql: str) -> exp.Expression | None:
    try:
        return sqlglot.parse_one(gold_sql.strip().rstrip(";"), read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        return None


def boundary_database(schema_sql: str, gold_sql: str, *, seed: int = 0, index: int = 0) -> sqlite3.Connection:
    """A generated database for ``schema_sql`` edited so the comparisons of ``gold_sql`` are decided
    at their boundaries (see module docstring). Deterministic for (schema, gold, seed, index), up
    to the dates that :func:`build_database` places relative to today."""
    tables = introspect(schema_sql)
    conn = build_database(schema_sql, gold_literals(gold_sql), seed=seed, index=100 + index)
    tree = _parsed(gold_sql)
    if tree is None:
        return conn
    aliases = alias_map(tree, tables)
    editor = Editor(conn, random.Random(f"distil-sql-boundary:{seed}:{index}:{gold_sql}:{schema_sql}"))
    for edit in (_join_edits, _null_edits, _literal_edits):
        edit(editor, tree, aliases)
    aggregate_edits(editor, tree, aliases, index)
    subquery_edits(editor, tree, aliases, index)
    return conn
