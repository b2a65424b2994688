"""Boundary edits that solve for one row's value: groups whose HAVING aggregate lands on the
literal and one unit beside it, and rows equal to the scalar subquery they are compared with
(or a column made constant). Part of
:func:`distil_platform.evaluation.scoring.sql.boundary.boundary_database`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from distil_platform.evaluation.scoring.sql.editor import (
    Editor,
    alias_map,
    column_of,
    literal_number,
    resolve_column,
)
from distil_platform.evaluation.scoring.sql.neighbours import unit_of
from distil_platform.evaluation.scoring.sql.schema import Table, quote_identifier


def _enclosing_select(node: exp.Expression) -> exp.Select | None:
    parent = node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        parent = parent.parent
    return parent


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


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
    editor: Editor,
    table: Table,
    column: str,
    rowid: int,
    evaluate: Callable[[], float | None],
    goal: Callable[[float], float],
) -> bool:
    """Sets ``column`` of one row so that ``evaluate() == goal(x)``, where the value is linear in x:
    two evaluations (secant), then a check. Keeps integers integral."""
    kind = column_of(table, column).kind
    current = editor.query(f"SELECT {quote_identifier(column)} FROM {quote_identifier(table.name)} WHERE rowid = ?", (rowid,))
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


def aggregate_edits(editor: Editor, tree: exp.Expression, aliases: dict[str, Table], variant: int) -> None:
    """Groups whose HAVING aggregate lands on literal - 1, literal and literal + 1."""
    for select in tree.find_all(exp.Select):
        having = select.args.get("having")
        if having is None:
            continue
        group_exprs = list(select.args["group"].expressions) if select.args.get("group") else []
        for cmp in having.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE):
            literal = next((s for s in (cmp.this, cmp.expression) if literal_number(s) is not None), None)
            side = cmp.expression if literal is cmp.this else cmp.this
            if literal is None or side.find(exp.AggFunc) is None or side.find(exp.Subquery):
                continue
            value = literal_number(literal)
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
    editor: Editor, select: exp.Select, group_exprs: list, alias: str, key: tuple
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
                editor.conn.execute(f"DELETE FROM {quote_identifier(table.name)} WHERE rowid = ?", (rowid,))
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
        resolved = resolve_column(column_node, aliases)
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


def subquery_edits(editor: Editor, tree: exp.Expression, aliases: dict[str, Table], variant: int) -> None:
    """A row equal to the scalar subquery it is compared with (or, on odd variants, a constant column)."""
    for cmp in list(tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
        sub = next((s for s in (cmp.this, cmp.expression) if isinstance(s, exp.Subquery)), None)
        other = cmp.expression if sub is cmp.this else cmp.this
        if sub is None or not isinstance(other, exp.Column):
            continue
        resolved = resolve_column(other, aliases)
        outer = _enclosing_select(cmp)
        if resolved is None or outer is None:
            continue
        alias, table = resolved
        column = other.name
        if variant % 2:
            inner_col = next(iter(sub.find_all(exp.Column)), None)
            inner = (
                resolve_column(inner_col, alias_map(sub, tuple(aliases.values())))
                if inner_col is not None
                else None
            )
            target = inner[1] if inner else table
            name = inner_col.name if inner_col is not None else column

            def constant(t: Table = target, c: str = name) -> bool:
                rows = editor.query(
                    f"SELECT {quote_identifier(c)} FROM {quote_identifier(t.name)} WHERE {quote_identifier(c)} IS NOT NULL LIMIT 1"
                )
                if not rows:
                    return False
                editor.conn.execute(f"UPDATE {quote_identifier(t.name)} SET {quote_identifier(c)} = ?", (rows[0][0],))
                return True

            editor.attempt(constant)
            continue
        probe_sql = f"SELECT ({sub.this.sql('sqlite')}) FROM {quote_identifier(table.name)} AS {quote_identifier(alias)} WHERE {quote_identifier(alias)}.rowid = ?"
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
