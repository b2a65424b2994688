"""Editing a generated database for a gold query: :class:`Editor` makes constraint-checked edits
inside savepoints, and :func:`alias_map`, :func:`resolve_column` and :func:`column_of` tie the
query's columns to the schema's tables (:mod:`distil_platform.evaluation.scoring.sql.schema`);
:func:`literal_number` reads a numeric literal of the query.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlglot import exp

from distil_platform.evaluation.scoring.sql.sandbox import SQLSandboxError
from distil_platform.evaluation.scoring.sql.schema import Table, quote_identifier


def alias_map(tree: exp.Expression, tables: tuple[Table, ...]) -> dict[str, Table]:
    by_name = {t.name.lower(): t for t in tables}
    aliases: dict[str, Table] = {}
    for node in tree.find_all(exp.Table):
        table = by_name.get(node.name.lower())
        if table is not None:
            aliases[node.alias_or_name.lower()] = table
            aliases.setdefault(node.name.lower(), table)
    return aliases


def resolve_column(column: exp.Column, aliases: dict[str, Table]) -> tuple[str, Table] | None:
    """``(alias, table)`` that ``column`` belongs to, or None."""
    name = column.name.lower()
    if column.table:
        table = aliases.get(column.table.lower())
        return (column.table, table) if table is not None else None
    for alias, table in aliases.items():
        if any(c.name.lower() == name for c in table.columns):
            return alias, table
    return None


def column_of(table: Table, name: str):
    return next((c for c in table.columns if c.name.lower() == name.lower()), None)


class Editor:
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

    def rowids(self, table: Table) -> list[int]:
        return [r[0] for r in self.query(f"SELECT rowid FROM {quote_identifier(table.name)} ORDER BY rowid")]

    def set_value(self, table: Table, column: str, rowid: int, value: Any) -> bool:
        self.conn.execute(
            f"UPDATE {quote_identifier(table.name)} SET {quote_identifier(column)} = ? WHERE rowid = ?", (value, rowid)
        )
        return True

    def duplicate(
        self, table: Table, rowid: int, tag: int, overrides: dict[str, Any] | None = None
    ) -> int | None:
        """Inserts a copy of row ``rowid`` with its single-column keys made unique (and ``overrides``
        applied); returns the new rowid."""
        row = self.query(f"SELECT * FROM {quote_identifier(table.name)} WHERE rowid = ?", (rowid,))
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
                    top = self.query(f"SELECT MAX({quote_identifier(column.name)}) FROM {quote_identifier(table.name)}")[0][0]
                    values[column.name] = (top or 0) + 1
        values.update(overrides or {})
        cols = ", ".join(quote_identifier(c) for c in values)
        marks = ", ".join("?" for _ in values)
        cursor = self.conn.execute(
            f"INSERT INTO {quote_identifier(table.name)} ({cols}) VALUES ({marks})", tuple(values.values())
        )
        return cursor.lastrowid

    def clone_with_children(
        self, parent: Table, rowid: int, children: list[tuple[Table, tuple, tuple]]
    ) -> bool:
        """A copy of parent row ``rowid`` (same non-key values) and of every child row that
        references it, re-pointed at the copy: two groups that look the same."""
        new = self.duplicate(parent, rowid, 7)
        if new is None:
            return False
        for child, cols, pcols in children:
            select = ", ".join(quote_identifier(c) for c in pcols)
            old_key = self.query(f"SELECT {select} FROM {quote_identifier(parent.name)} WHERE rowid = ?", (rowid,))[0]
            new_key = self.query(f"SELECT {select} FROM {quote_identifier(parent.name)} WHERE rowid = ?", (new,))[0]
            where = " AND ".join(f"{quote_identifier(c)} IS ?" for c in cols)
            for (child_rowid,) in self.query(
                f"SELECT rowid FROM {quote_identifier(child.name)} WHERE {where}", old_key
            ):
                if self.duplicate(child, child_rowid, 7, dict(zip(cols, new_key))) is None:
                    return False
        return True


def _deadline_handler(seconds: float) -> Callable[[], int]:
    deadline = time.perf_counter() + seconds
    return lambda: int(time.perf_counter() > deadline)


def literal_number(node: exp.Expression) -> Decimal | None:
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
