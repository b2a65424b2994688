"""A schema DDL as SQLite itself understood it: its tables (:class:`Table`, :class:`Column`) with
their keys, UNIQUE groups and foreign keys, parents before children.

:func:`introspect` runs the DDL in the schema sandbox
(:func:`~distil_platform.evaluation.scoring.sql.sandbox.load_schema`) and remembers the answer per schema, a
rejection too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from distil_platform.evaluation.scoring.sql.sandbox import SQLSchemaError, load_schema, new_connection


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # int | real | text | bool | date | datetime
    notnull: bool
    pk: bool


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    integer_pk: str | None  # the INTEGER PRIMARY KEY (rowid alias), filled 1..n
    uniques: tuple[tuple[str, ...], ...]  # PRIMARY KEY and UNIQUE column groups
    foreign_keys: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...]  # (cols, parent, parent cols)


def _column_kind(decl_type: str, name: str) -> str:
    t, n = (decl_type or "").upper(), name.lower()
    if "BOOL" in t:
        return "bool"
    if "DATETIME" in t or "TIMESTAMP" in t:
        return "datetime"
    if "DATE" in t:
        return "date"
    if "INT" in t:
        return "bool" if n.startswith(("is_", "has_")) else "int"
    if any(x in t for x in ("CHAR", "CLOB", "TEXT")) or t == "":
        if n.endswith("_date") or n in ("date", "dob", "birthday"):
            return "date"
        if n.endswith(("_at", "_time", "timestamp")):
            return "datetime"
        return "int" if t == "" and (n == "id" or n.endswith("_id")) else "text"
    if "BLOB" in t:
        return "text"
    return "real"  # REAL, FLOAT, DOUBLE, NUMERIC, DECIMAL


def quote_identifier(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def introspect(schema_sql: str) -> tuple[Table, ...]:
    """Tables of ``schema_sql`` as SQLite itself understood the DDL, parents before children.

    Run in the schema sandbox (:func:`load_schema`). The answer is remembered per schema, a
    rejection too (the same error again, at once: a recorded file's rows often share one schema).
    """
    result = _introspect_or_error(schema_sql)
    if isinstance(result, SQLSchemaError):
        raise type(result)(str(result))
    return result


@lru_cache(maxsize=256)
def _introspect_or_error(schema_sql: str) -> tuple[Table, ...] | SQLSchemaError:
    try:
        return _introspect_uncached(schema_sql)
    except SQLSchemaError as exc:
        return type(exc)(str(exc))  # without its traceback (the cache would keep the frames alive)


def _introspect_uncached(schema_sql: str) -> tuple[Table, ...]:
    conn = new_connection()
    try:
        load_schema(conn, schema_sql)
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
            )
        ]
        if not names:
            raise SQLSchemaError("schema DDL defines no table")
        tables: dict[str, Table] = {}
        for name in names:
            info = conn.execute(f"PRAGMA table_info({quote_identifier(name)})").fetchall()
            pk_cols = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
            columns = tuple(
                Column(
                    name=r[1],
                    kind=_column_kind(r[2], r[1]),
                    notnull=bool(r[3]) or r[1] in pk_cols,
                    pk=bool(r[5]),
                )
                for r in info
            )
            integer_pk = None
            if len(pk_cols) == 1:
                decl = next(r[2] for r in info if r[1] == pk_cols[0])
                if (decl or "").upper() == "INTEGER":
                    integer_pk = pk_cols[0]
            uniques = [tuple(pk_cols)] if pk_cols else []
            for idx in conn.execute(f"PRAGMA index_list({quote_identifier(name)})").fetchall():
                if idx[2]:  # unique
                    cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({quote_identifier(idx[1])})"))
                    if cols and None not in cols and cols not in uniques:
                        uniques.append(cols)
            fk_groups: dict[int, list[tuple]] = {}
            for fk in conn.execute(f"PRAGMA foreign_key_list({quote_identifier(name)})").fetchall():
                fk_groups.setdefault(fk[0], []).append(fk)
            fks = []
            for group in fk_groups.values():
                group.sort(key=lambda r: r[1])
                parent = group[0][2]
                parent_cols = [r[4] for r in group]
                if any(c is None for c in parent_cols):  # REFERENCES parent: its primary key
                    parent_info = conn.execute(f"PRAGMA table_info({quote_identifier(parent)})").fetchall()
                    parent_pk = [r[1] for r in sorted((r for r in parent_info if r[5]), key=lambda r: r[5])]
                    parent_cols = parent_pk or ["rowid"]
                fks.append((tuple(r[3] for r in group), parent, tuple(parent_cols)))
            tables[name] = Table(name, columns, integer_pk, tuple(uniques), tuple(fks))
    finally:
        conn.close()
    # Parents before children; a cycle (or self reference) is broken by taking tables in DDL order.
    ordered: list[Table] = []
    remaining = dict(tables)
    while remaining:
        ready = [
            t
            for t in remaining.values()
            if all(parent == t.name or parent not in remaining for _, parent, _ in t.foreign_keys)
        ]
        chosen = ready[0] if ready else next(iter(remaining.values()))
        ordered.append(chosen)
        del remaining[chosen.name]
    return tuple(ordered)
