"""Neighbour queries of a gold query, in the style of the test-suite evaluation (Zhong et al., 2020).

A *neighbour* is the gold query with one small, mechanical change that a text-to-SQL model could
plausibly make: a comparison operator replaced, a literal shifted by one unit, DISTINCT dropped or
added, a predicate dropped, ASC/DESC swapped, an aggregate changed, a JOIN turned into a LEFT JOIN
(or back), LIMIT shifted by one. Most neighbours mean something else; some are equivalent (``COUNT(*)
> 3`` and ``COUNT(*) >= 4`` on integers, a LEFT JOIN along a NOT NULL foreign key). The distinguishing
search (:mod:`distil_platform.evaluation.scoring.sql.suite`) keeps databases on which each non-equivalent
neighbour returns something other than the gold.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice

import sqlglot
from sqlglot import exp

_CMP_CLASSES: tuple[type[exp.Expression], ...] = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_AGG_CLASSES: tuple[type[exp.Expression], ...] = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})$")
_YEAR_RE = re.compile(r"^\d{4}$")
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
NEIGHBOUR_KINDS = (
    "comparison",
    "literal",
    "limit",
    "distinct",
    "drop_predicate",
    "order",
    "aggregate",
    "join",
)


@dataclass(frozen=True)
class Neighbour:
    kind: str  # one of NEIGHBOUR_KINDS
    sql: str
    change: str  # what was changed, e.g. "> -> >="


def _parse(sql: str) -> exp.Expression:
    tree = sqlglot.parse_one(sql.strip().rstrip(";"), read="sqlite")
    if tree is None:
        raise ValueError(f"not a query: {sql!r}")
    return tree


def _mutants(
    tree: exp.Expression,
    node_type: type | tuple[type, ...],
    mutate: Callable[[exp.Expression], Iterator[str]],
) -> Iterator[tuple[exp.Expression, str]]:
    """For each node of ``node_type`` (in a fixed order) and each change ``mutate`` makes to it,
    the changed copy of ``tree`` and a description. ``mutate`` edits the node of a fresh copy."""
    count = sum(1 for _ in tree.find_all(node_type))
    for i in range(count):
        probe = tree.copy()
        node = list(probe.find_all(node_type))[i]
        n_changes = sum(1 for _ in mutate(node.copy()))
        for j in range(n_changes):
            copy = tree.copy()
            target = list(copy.find_all(node_type))[i]
            change = list(islice(mutate(target), j + 1))[-1]
            yield copy, change


def _op(node: exp.Expression) -> str:
    return {exp.EQ: "=", exp.NEQ: "<>", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}[type(node)]


def _flip_comparison(node: exp.Expression) -> Iterator[str]:
    before = _op(node)
    for cls in _CMP_CLASSES:
        if cls is type(node):
            continue
        new = cls(this=node.this.copy(), expression=node.expression.copy())
        node.replace(new)
        yield f"{before} -> {_op(new)}"
        node = new


def _shift_text(value: str, step: int) -> str | None:
    if _DATE_RE.match(value):
        try:
            return (dt.date.fromisoformat(value) + dt.timedelta(days=step)).isoformat()
        except (ValueError, OverflowError):
            return None
    if m := _DATETIME_RE.match(value):
        try:
            moved = dt.datetime.fromisoformat(f"{m.group(1)} {m.group(2)}") + dt.timedelta(seconds=step)
        except (ValueError, OverflowError):
            return None
        return moved.strftime("%Y-%m-%d %H:%M:%S")
    if _YEAR_RE.match(value):
        return f"{int(value) + step:04d}" if 0 < int(value) + step < 10000 else None
    if m := _MONTH_RE.match(value):
        month = int(m.group(1)) * 12 + int(m.group(2)) - 1 + step
        return f"{month // 12:04d}-{month % 12 + 1:02d}"
    return None


def unit_of(text: str) -> Decimal:
    """One unit of a numeric literal: 1 for integers, one in the last decimal place otherwise."""
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    return Decimal(1) if not isinstance(exponent, int) or exponent >= 0 else Decimal(1).scaleb(exponent)


def _shift_literal(node: exp.Expression) -> Iterator[str]:
    assert isinstance(node, exp.Literal)
    text, is_string = node.this, node.is_string
    before = node.sql("sqlite")
    for step in (-1, 1):
        if is_string:
            moved = _shift_text(text, step)
            if moved is None:
                return
            new = exp.Literal.string(moved)
        else:
            try:
                value = Decimal(text)
            except ArithmeticError:
                return
            moved_num = value + step * unit_of(text)
            if moved_num < 0:
                continue  # a negative LIMIT/literal would be a different kind of change
            new = exp.Literal.number(str(moved_num))
        node.replace(new)
        yield f"{before} -> {new.sql('sqlite')}"
        node = new


def _is_limit_literal(node: exp.Expression) -> bool:
    return isinstance(node.parent, (exp.Limit, exp.Offset))


def _toggle_distinct(node: exp.Expression) -> Iterator[str]:
    if isinstance(node, exp.Select):
        if not node.args.get("group") and any(e.find(exp.AggFunc) is not None for e in node.expressions):
            return  # one aggregate row: DISTINCT cannot change it
        if node.args.get("distinct"):
            node.set("distinct", None)
            yield "drop DISTINCT"
        else:
            node.set("distinct", exp.Distinct())
            yield "add DISTINCT"
    elif isinstance(node, exp.Count):
        arg = node.this
        if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
            node.set("this", arg.expressions[0].copy())
            yield "COUNT(DISTINCT x) -> COUNT(x)"
        elif arg is not None and not isinstance(arg, (exp.Star, exp.Distinct)):
            node.set("this", exp.Distinct(expressions=[arg.copy()]))
            yield "COUNT(x) -> COUNT(DISTINCT x)"


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _drop_predicate(node: exp.Expression) -> Iterator[str]:
    """``node`` is a Where or Having: drop each top-level conjunct in turn (all of it when alone)."""
    parts = _conjuncts(node.this)
    if len(parts) == 1:
        label = "WHERE" if isinstance(node, exp.Where) else "HAVING"
        text = node.this.sql("sqlite")
        node.pop()
        yield f"drop {label} {text}"
        return
    yield from _drop_predicate_all(node)


def _drop_predicate_all(node: exp.Expression) -> Iterator[str]:
    parts = _conjuncts(node.this)
    if len(parts) == 1:
        yield from _drop_predicate(node)
        return
    original = [p.copy() for p in parts]
    for k in range(len(original)):
        kept = [p.copy() for i, p in enumerate(original) if i != k]
        node.set("this", exp.and_(*kept))
        yield f"drop {original[k].sql('sqlite')}"


def _swap_order(node: exp.Expression) -> Iterator[str]:
    assert isinstance(node, exp.Ordered)
    desc = bool(node.args.get("desc"))
    node.set("desc", not desc)
    node.set("nulls_first", desc)  # SQLite's default NULL placement for the new direction
    yield f"{node.this.sql('sqlite')} {'DESC -> ASC' if desc else 'ASC -> DESC'}"


def _change_aggregate(node: exp.Expression) -> Iterator[str]:
    arg = node.this
    if arg is None or isinstance(arg, (exp.Star, exp.Distinct)):
        return  # COUNT(*) / COUNT(DISTINCT x) have no SUM/AVG twin; DISTINCT is its own kind
    before = type(node).__name__.upper()
    for cls in _AGG_CLASSES:
        if cls is type(node):
            continue
        new = cls(this=arg.copy())
        node.replace(new)
        yield f"{before} -> {type(new).__name__.upper()}"
        node = new


def _toggle_join(node: exp.Expression) -> Iterator[str]:
    assert isinstance(node, exp.Join)
    side = (node.args.get("side") or "").upper()
    kind = (node.args.get("kind") or "").upper()
    if node.args.get("on") is None and not node.args.get("using"):
        return
    if side == "LEFT":
        node.set("side", None)
        yield "LEFT JOIN -> JOIN"
    elif not side and kind in ("", "INNER"):
        node.set("kind", None)
        node.set("side", "LEFT")
        yield "JOIN -> LEFT JOIN"


def neighbour_queries(gold_sql: str) -> list[Neighbour]:
    """The neighbours of ``gold_sql`` (see module docstring), each different from the gold as
    text, deduplicated, in a fixed order. Raises ``ValueError`` when sqlglot cannot parse it."""
    try:
        tree = _parse(gold_sql)
    except sqlglot.errors.SqlglotError as exc:
        raise ValueError(f"cannot parse {gold_sql!r}: {exc}") from None
    base = tree.sql("sqlite")
    found: list[Neighbour] = []
    seen = {base}

    def add(kind: str, mutants: Iterator[tuple[exp.Expression, str]]) -> None:
        for copy, change in mutants:
            sql = copy.sql("sqlite")
            if sql not in seen:
                seen.add(sql)
                found.append(Neighbour(kind, sql, change))

    add("comparison", _mutants(tree, _CMP_CLASSES, _flip_comparison))
    literal_nodes = list(tree.find_all(exp.Literal))
    for i, node in enumerate(literal_nodes):
        kind = "limit" if _is_limit_literal(node) else "literal"
        for step_index in range(2):
            copy = tree.copy()
            target = list(copy.find_all(exp.Literal))[i]
            changes = list(islice(_shift_literal(target), step_index + 1))
            if len(changes) > step_index:
                add(kind, iter([(copy, changes[-1])]))
    add("distinct", _mutants(tree, (exp.Select, exp.Count), _toggle_distinct))
    add("drop_predicate", _mutants(tree, (exp.Where, exp.Having), _drop_predicate_all))
    add("order", _mutants(tree, exp.Ordered, _swap_order))
    add("aggregate", _mutants(tree, _AGG_CLASSES, _change_aggregate))
    add("join", _mutants(tree, exp.Join, _toggle_join))
    return found
