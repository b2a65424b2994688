"""Text-to-SQL execution accuracy in the style of the Spider test-suite evaluation.

``sql_execution_match`` builds several small SQLite databases from the schema DDL, filled with
deterministic random rows that respect the schema's types and constraints and that reuse the
literal values of both queries (so ``WHERE status = 'pending'`` selects rows), runs both queries
on each, then on the reference's distinguishing databases (:mod:`distil_platform.evaluation.scoring.sql_suite`:
boundary-targeted databases chosen because they tell the reference from its near-miss neighbours),
and scores 1.0 only when the results agree on every database.

A model's SQL is untrusted. It runs only in :func:`run_sandboxed`: in-memory databases, an
authorizer that allows reading and nothing else (no ATTACH, PRAGMA, extension loading or writes),
caps on value size, result columns, rows and total result bytes, and one deadline enforced while
executing and while fetching. :func:`execute_untrusted_sql` builds the database from a DDL first.

The schema DDL is untrusted too (a recorded teacher file brings its own ``context``): it runs only
in :func:`load_schema`, which accepts CREATE TABLE (with declared columns), CREATE INDEX and INSERT
statements (:func:`check_schema_statements`, parsed with sqlglot), under an authorizer that allows
those and nothing else, a database size cap and a deadline, so a runaway schema (``INSERT ... WITH
RECURSIVE`` without an end) is rejected with a reason within ``SCHEMA_TIMEOUT_S``. A rejected schema
is remembered per process: the rows that share it are rejected at once.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Any

import sqlglot
from sqlglot import exp

from distil_platform.evaluation.scoring.text import as_text, fenced_blocks

ROW_CAP = 10_000  # a prediction returning more rows than this scores 0
MAX_VALUE_BYTES = 100_000  # SQLITE_LIMIT_LENGTH: stops zeroblob/printf memory bombs
MAX_RESULT_COLUMNS = 64  # SQLITE_LIMIT_COLUMN while an untrusted query runs
MAX_RESULT_BYTES = 8_000_000  # all values of a result together (rows x columns)
_FETCH_BATCH = 256
MAX_SQL_CHARS = 100_000
_PROGRESS_EVERY = 1_000  # VM instructions between deadline checks
SCHEMA_TIMEOUT_S = 2.0  # running one schema DDL (its CREATE and INSERT statements) on a fresh database
MAX_SCHEMA_CHARS = MAX_SQL_CHARS * 4  # also SQLITE_LIMIT_SQL_LENGTH
MAX_DATABASE_PAGES = 16_384  # PRAGMA max_page_count: 64 MiB at SQLite's default 4 KiB page
_MAX_PERMUTATIONS = 5_000  # column-order permutations tried when comparing results

# Rows per table on database i (cycled): a mid-size one, a larger one, a small one.
_TABLE_SIZES = ((12, 24), (30, 60), (3, 8))
_NULL_RATE = 0.1
_LITERAL_RATE = 0.4


class SQLSchemaError(ValueError):
    """The schema DDL does not execute or cannot be filled."""


class SQLSchemaNotAllowed(SQLSchemaError):
    """The schema DDL holds a statement other than CREATE TABLE / CREATE INDEX / INSERT."""


class SQLSchemaTimeout(SQLSchemaError):
    """The schema DDL did not finish within its deadline (``SCHEMA_TIMEOUT_S``)."""


class SQLSchemaTooLarge(SQLSchemaError):
    """The schema DDL wrote more than the database size cap (``MAX_DATABASE_PAGES`` pages)."""


class SQLReferenceError(ValueError):
    """The reference query is not a query, or fails on a database built from its schema."""


@dataclass(frozen=True)
class SQLMatchResult:
    score: float
    parse_ok: bool
    reason: str = ""


# -- extraction -----------------------------------------------------------------------------------
_STATEMENT_KEYWORDS = (
    "SELECT|WITH|VALUES|INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|PRAGMA|ATTACH|DETACH|REPLACE|"
    "EXPLAIN|VACUUM|REINDEX|ANALYZE|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE"
)
_LINE_START_UPPER = re.compile(rf"^[ \t]*\(*[ \t]*(?:{_STATEMENT_KEYWORDS})\b", re.MULTILINE)
_LINE_START_ANY = re.compile(rf"^[ \t]*\(*[ \t]*(?:{_STATEMENT_KEYWORDS})\b", re.MULTILINE | re.IGNORECASE)
_ANYWHERE_UPPER = re.compile(r"\b(?:SELECT|WITH)\b")
_ANYWHERE_ANY = re.compile(r"\bselect\b", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_QUERY_START = re.compile(r"^\(*\s*(?:SELECT|WITH|VALUES)\b", re.IGNORECASE)
_SQL_FENCE_LANGS = {"sql", "sqlite", "postgresql", "mysql", ""}


def _first_statement(sql: str) -> str:
    """``sql`` up to its first top-level semicolon, skipping quoted text and comments."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:  # doubled quote escape
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif ch == ";":
            return sql[:i]
        else:
            i += 1
    return sql


def _parses(sql: str) -> bool:
    try:
        return sqlglot.parse_one(sql, read="sqlite") is not None
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        return False


def extract_sql(text: Any) -> str | None:
    """The first SQL statement in a model's output, without code fences, prose or the semicolon.

    Takes the first ```sql fence when there is one; starts at the first line that begins with a
    statement keyword (upper case preferred, so a prose line "Select the..." loses to
    "SELECT ..."), else at the first SELECT/WITH anywhere; stops at the first top-level ``;``; and
    when the rest does not parse, drops trailing paragraphs of prose. Returns None when no
    statement is found. Never raises.
    """
    text = as_text(text)
    if not text.strip():
        return None
    blocks = fenced_blocks(text)
    if blocks:
        sql_blocks = [body for lang, body in blocks if lang in _SQL_FENCE_LANGS and body.strip()]
        text = sql_blocks[0] if sql_blocks else blocks[0][1]
    start = None
    for pattern in (_LINE_START_UPPER, _LINE_START_ANY, _ANYWHERE_UPPER, _ANYWHERE_ANY):
        match = pattern.search(text)
        if match:
            start = match.start()
            break
    if start is None:
        return None
    sql = _first_statement(text[start:]).strip()
    if sql and not _parses(sql):
        # Prose after a query without a semicolon: keep the longest prefix of paragraphs that parses.
        cuts = [m.start() for m in _BLANK_LINE.finditer(sql)]
        for cut in reversed(cuts):
            if _parses(sql[:cut]):
                sql = sql[:cut].strip()
                break
    sql = sql.strip().rstrip("`").strip()
    return sql or None


_SCHEMA_QUESTION_RE = re.compile(r"Schema:\s*(.*?)\s*(?:Question:\s*(.*))?\Z", re.DOTALL | re.IGNORECASE)
_CREATE_RE = re.compile(r"CREATE\s+TABLE.*?\)\s*;", re.DOTALL | re.IGNORECASE)


def split_schema_question(text: str) -> tuple[str, str]:
    """``(schema_ddl, question)`` from the public text2sql layout ``"Schema: ... Question: ..."``."""
    match = _SCHEMA_QUESTION_RE.search(text or "")
    if match:
        return match.group(1).strip(), (match.group(2) or "").strip()
    statements = _CREATE_RE.findall(text or "")
    return "\n\n".join(statements), (text or "").strip()


# -- safe execution -------------------------------------------------------------------------------
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
# Functions that reach outside the database (none are compiled into stock SQLite but load_extension).
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


def _read_only_authorizer(action: int, arg1: Any, arg2: Any, db_name: Any, trigger: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if str(arg2).lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _setup_authorizer(action: int, arg1: Any, arg2: Any, db_name: Any, trigger: Any) -> int:
    # While loading the (trusted) schema and generated rows: anything but reaching outside.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


# While running a schema DDL: create tables and indexes, insert rows (the INSERTs may read), and the
# bookkeeping SQLite does for them on its own schema table. No views, triggers, PRAGMA, ATTACH,
# updates, deletes, drops or transactions.
_SCHEMA_ACTIONS = {
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_REINDEX,  # SQLite fills a new index with it
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_sequence"}


def _schema_authorizer(action: int, arg1: Any, arg2: Any, db_name: Any, trigger: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if str(arg2).lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_UPDATE and str(arg1).lower() in _SCHEMA_TABLES:
        return sqlite3.SQLITE_OK  # SQLite records a new table or index (and AUTOINCREMENT counters)
    if db_name not in (None, "main") and action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_READ):
        return sqlite3.SQLITE_DENY  # the temp schema: the DDL has no business there
    return sqlite3.SQLITE_OK if action in _SCHEMA_ACTIONS else sqlite3.SQLITE_DENY


def _new_connection() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SCHEMA_CHARS)
    conn.execute(f"PRAGMA max_page_count = {MAX_DATABASE_PAGES}")  # a schema cannot fill the memory
    conn.set_authorizer(_setup_authorizer)
    return conn


def _statement_name(statement: exp.Expression) -> str:
    """``CREATE TABLE``, ``CREATE VIEW``, ``PRAGMA``, ``DELETE``...: what a parsed statement is."""
    if isinstance(statement, exp.Create):
        temp = " TEMP" if statement.find(exp.TemporaryProperty) is not None else ""
        return f"CREATE{temp} {statement.args.get('kind') or ''}".strip()
    if isinstance(statement, exp.Command):  # syntax sqlglot does not model: its first words
        rest = statement.args.get("expression")
        rest = rest.name if isinstance(rest, exp.Expression) else str(rest or "")
        words = f"{statement.this} {rest}".upper().split()
        if words[:1] == ["CREATE"]:
            return " ".join(words[:3] if words[1:2] in (["UNIQUE"], ["TEMP"], ["TEMPORARY"]) else words[:2])
        return words[0] if words else "?"
    return statement.key.upper()


def check_schema_statements(schema_sql: str) -> None:
    """Raises unless every statement of ``schema_sql`` is a CREATE TABLE with declared columns, a
    CREATE [UNIQUE] INDEX or an INSERT (parsed with sqlglot, SQLite dialect).

    :class:`SQLSchemaNotAllowed` names the first other statement by its position and kind (CREATE
    TABLE ... AS <query> included: its columns have no declared types); :class:`SQLSchemaError`
    says the DDL is empty or too long. DDL that sqlglot cannot parse (or parses only as a generic
    command) is left to SQLite, which runs it under :func:`load_schema`'s authorizer and reports
    its own syntax error.
    """
    if not schema_sql or not schema_sql.strip():
        raise SQLSchemaError("schema DDL is empty")
    if len(schema_sql) > MAX_SCHEMA_CHARS:
        raise SQLSchemaError(f"schema DDL longer than {MAX_SCHEMA_CHARS} characters")
    try:
        statements = [s for s in sqlglot.parse(schema_sql, read="sqlite") if s is not None]
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        return
    for number, statement in enumerate(statements, start=1):
        kind = str(statement.args.get("kind") or "").upper() if isinstance(statement, exp.Create) else ""
        if kind == "TABLE" and isinstance(statement.expression, exp.Query):
            raise SQLSchemaNotAllowed(
                f"schema DDL statement {number} is CREATE TABLE ... AS <query>: only CREATE TABLE with "
                "declared columns, CREATE INDEX and INSERT are allowed"
            )
        if isinstance(statement, exp.Insert) or _statement_name(statement) in (
                "CREATE TABLE", "CREATE INDEX", "CREATE UNIQUE INDEX"):
            continue  # also as a generic command (syntax sqlglot does not model); the authorizer has the last word
        raise SQLSchemaNotAllowed(
            f"schema DDL statement {number} is {_statement_name(statement)}: only CREATE TABLE, CREATE INDEX "
            "and INSERT are allowed"
        )


def load_schema(conn: sqlite3.Connection, schema_sql: str, *, timeout_s: float = SCHEMA_TIMEOUT_S) -> None:
    """Runs an untrusted schema DDL on ``conn`` (a fresh in-memory database).

    The sandbox: only CREATE TABLE / CREATE INDEX / INSERT statements (:func:`check_schema_statements`),
    an authorizer that allows those and nothing else (no views, triggers, PRAGMA, ATTACH, updates,
    deletes or ``load_extension``), the connection's caps on value size and database size, and one
    deadline, ``timeout_s`` after the call, enforced inside SQLite by a progress handler. Raises
    :class:`SQLSchemaTimeout` past the deadline, :class:`SQLSchemaTooLarge` past the size cap,
    :class:`SQLSchemaNotAllowed` for a statement of another kind, :class:`SQLSchemaError` for any
    other failure (the reason in the message).
    ``conn`` keeps the setup authorizer afterwards.
    """
    check_schema_statements(schema_sql)
    _execute_schema(conn, schema_sql, timeout_s)


def _execute_schema(conn: sqlite3.Connection, schema_sql: str, timeout_s: float = SCHEMA_TIMEOUT_S) -> None:
    # load_schema without the statement check (for a schema that already passed it).
    deadline = time.perf_counter() + timeout_s
    conn.set_progress_handler(lambda: int(time.perf_counter() > deadline), _PROGRESS_EVERY)
    conn.set_authorizer(_schema_authorizer)
    try:
        conn.executescript(schema_sql)
    except sqlite3.DatabaseError as exc:
        if "interrupted" in str(exc):
            raise SQLSchemaTimeout(f"schema DDL did not finish within {timeout_s:g}s (a runaway INSERT?)") from None
        if "full" in str(exc):  # SQLITE_FULL: max_page_count reached
            raise SQLSchemaTooLarge(
                f"schema DDL writes more than {MAX_DATABASE_PAGES * 4 // 1024} MiB (the database size cap; a runaway "
                "INSERT?)") from None
        if "not authorized" in str(exc):
            raise SQLSchemaNotAllowed(f"schema DDL does an operation other than CREATE TABLE/INDEX or INSERT: {exc}") from None
        raise SQLSchemaError(f"schema DDL does not execute: {exc}") from None
    except (sqlite3.Error, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        raise SQLSchemaError(f"schema DDL does not execute: {type(exc).__name__}: {exc}") from None
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(_setup_authorizer)


class SQLSandboxError(Exception):
    """An untrusted query was refused or failed in the sandbox (error, not allowed, timed out, too
    many rows, columns or bytes). ``str(exc)`` says why; timeouts start with ``"timed out"``."""


_QueryFailed = SQLSandboxError  # the name the scoring code and older tests use


def _value_bytes(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value) + 8
    return 8


def run_sandboxed(
    conn: sqlite3.Connection,
    sql: str,
    *,
    timeout_s: float = 2.0,
    row_cap: int = ROW_CAP,
    byte_cap: int = MAX_RESULT_BYTES,
) -> tuple[int, list[tuple]]:
    """``(column count, rows)`` of one untrusted ``sql`` statement on ``conn``.

    The sandbox: an authorizer that allows reading and nothing else (no ATTACH, PRAGMA, writes,
    DDL, transactions, ``load_extension``); one statement; values of at most ``MAX_VALUE_BYTES``
    and results of at most ``MAX_RESULT_COLUMNS`` columns (SQLite limits, so one row can never
    exceed ``MAX_VALUE_BYTES * MAX_RESULT_COLUMNS``); at most ``row_cap`` rows and ``byte_cap``
    bytes in all (counted while fetching, in batches); and one deadline, ``timeout_s`` after the
    call, enforced by a progress handler inside SQLite *and* between fetched batches, so a query
    that is slow to execute or to fetch stops in time. Raises :class:`SQLSandboxError` with the
    reason on any failure; ``conn`` is left as it was (authorizer and limits restored).
    """
    if len(sql) > MAX_SQL_CHARS:
        raise SQLSandboxError(f"query longer than {MAX_SQL_CHARS} characters")
    deadline = time.perf_counter() + timeout_s
    conn.set_progress_handler(lambda: int(time.perf_counter() > deadline), _PROGRESS_EVERY)
    conn.set_authorizer(_read_only_authorizer)
    old_columns = conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_RESULT_COLUMNS)
    old_length = conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    rows: list[tuple] = []
    total = 0
    try:
        cursor = conn.execute(sql)
        width = len(cursor.description or ())
        while True:
            batch = cursor.fetchmany(_FETCH_BATCH)
            if not batch:
                break
            for row in batch:
                total += 16 + sum(_value_bytes(v) for v in row)
            rows.extend(batch)
            if len(rows) > row_cap:
                raise SQLSandboxError(f"returned more than {row_cap} rows")
            if total > byte_cap:
                raise SQLSandboxError(f"result larger than {byte_cap} bytes")
            if time.perf_counter() > deadline:
                raise SQLSandboxError(f"timed out after {timeout_s:g}s (fetching)")
        cursor.close()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise SQLSandboxError(f"timed out after {timeout_s:g}s") from None
        raise SQLSandboxError(str(exc)) from None
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        raise SQLSandboxError(f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(_setup_authorizer)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, old_columns)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old_length)
    return width, rows


def run_readonly_query(
    conn: sqlite3.Connection, sql: str, *, timeout_s: float = 2.0, row_cap: int = ROW_CAP
) -> tuple[int, list[tuple]]:
    """:func:`run_sandboxed` with the default byte cap (kept for existing callers)."""
    return run_sandboxed(conn, sql, timeout_s=timeout_s, row_cap=row_cap)


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


# -- schema introspection -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # int | real | text | bool | date | datetime
    notnull: bool
    pk: bool


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[_Column, ...]
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


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _introspect(schema_sql: str) -> tuple[_Table, ...]:
    """Tables of ``schema_sql`` as SQLite itself understood the DDL, parents before children.

    Run in the schema sandbox (:func:`load_schema`). The answer is remembered per schema, a
    rejection too (the same error again, at once: a recorded file's rows often share one schema).
    """
    result = _introspect_or_error(schema_sql)
    if isinstance(result, SQLSchemaError):
        raise type(result)(str(result))
    return result


@lru_cache(maxsize=256)
def _introspect_or_error(schema_sql: str) -> tuple[_Table, ...] | SQLSchemaError:
    try:
        return _introspect_uncached(schema_sql)
    except SQLSchemaError as exc:
        return type(exc)(str(exc))  # without its traceback (the cache would keep the frames alive)


def _introspect_uncached(schema_sql: str) -> tuple[_Table, ...]:
    conn = _new_connection()
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
        tables: dict[str, _Table] = {}
        for name in names:
            info = conn.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
            pk_cols = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
            columns = tuple(
                _Column(
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
            for idx in conn.execute(f"PRAGMA index_list({_quote(name)})").fetchall():
                if idx[2]:  # unique
                    cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({_quote(idx[1])})"))
                    if cols and None not in cols and cols not in uniques:
                        uniques.append(cols)
            fk_groups: dict[int, list[tuple]] = {}
            for fk in conn.execute(f"PRAGMA foreign_key_list({_quote(name)})").fetchall():
                fk_groups.setdefault(fk[0], []).append(fk)
            fks = []
            for group in fk_groups.values():
                group.sort(key=lambda r: r[1])
                parent = group[0][2]
                parent_cols = [r[4] for r in group]
                if any(c is None for c in parent_cols):  # REFERENCES parent: its primary key
                    parent_info = conn.execute(f"PRAGMA table_info({_quote(parent)})").fetchall()
                    parent_pk = [r[1] for r in sorted((r for r in parent_info if r[5]), key=lambda r: r[5])]
                    parent_cols = parent_pk or ["rowid"]
                fks.append((tuple(r[3] for r in group), parent, tuple(parent_cols)))
            tables[name] = _Table(name, columns, integer_pk, tuple(uniques), tuple(fks))
    finally:
        conn.close()
    # Parents before children; a cycle (or self reference) is broken by taking tables in DDL order.
    ordered: list[_Table] = []
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


def _shift_days(day: dt.date, days: int) -> dt.date | None:
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
        days = [day] if lit.op == "eq" else [x for d in (-1, 0, 1, -30, 30) if (x := _shift_days(day, d))]
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


def _random_value(column: _Column, rng: random.Random, vocabulary: int, pool: list[Any] | None = None) -> Any:
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


def _literal_pools(literals: Iterable[_Literal], tables: tuple[_Table, ...], rng: random.Random) -> dict:
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
    table: _Table, rng: random.Random, parent_values: dict, self_rows: list[dict]
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
    table: _Table, n_rows: int, rng: random.Random, pools: dict, parent_values: dict
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
    tables = _introspect(schema_sql)
    literals = sorted(set(literals), key=repr)  # order-independent: data is a function of the set
    rng = random.Random(f"distil-sql:{seed}:{index}:{schema_sql}")
    pools = _literal_pools(literals, tables, rng)
    low, high = _TABLE_SIZES[index % len(_TABLE_SIZES)]
    conn = _new_connection()
    try:
        try:
            _execute_schema(conn, schema_sql)  # sandboxed as ever; its statements were checked by _introspect
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
                cols = ", ".join(_quote(c.name) for c in table.columns)
                marks = ", ".join("?" for _ in table.columns)
                conn.executemany(
                    f"INSERT OR IGNORE INTO {_quote(table.name)} ({cols}) VALUES ({marks})", rows
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
                    select = ", ".join(_quote(c) for c in pcols)
                    keyed = conn.execute(f"SELECT {select}, * FROM {_quote(parent)}").fetchall()
                    keys = sorted({r[: len(pcols)] for r in keyed}, key=repr)
                    hot = sorted(
                        {r[: len(pcols)] for r in keyed if literal_values & set(r[len(pcols) :])}, key=repr
                    )
                    parent_values[(parent, pcols)] = (keys, hot)
    except sqlite3.Error as exc:
        conn.close()
        raise SQLSchemaError(f"cannot fill a database for the schema: {exc}") from None
    return conn


# -- comparison ----------------------------------------------------------------------------------
def _normalize_value(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return float(f"{value:.10g}")  # AVG vs SUM/COUNT may differ in the last bits
    return value


def results_match(
    reference: tuple[int, list[tuple]], prediction: tuple[int, list[tuple]], *, ordered: bool
) -> bool:
    """Whether two results agree: same width and row count, and some column permutation of the
    prediction makes the rows equal as a multiset (as a list when ``ordered``)."""
    (ref_width, ref_rows), (pred_width, pred_rows) = reference, prediction
    if ref_width != pred_width or len(ref_rows) != len(pred_rows):
        return False
    ref_rows = [tuple(_normalize_value(v) for v in r) for r in ref_rows]
    pred_rows = [tuple(_normalize_value(v) for v in r) for r in pred_rows]
    if not ref_rows:
        return True
    ref_cols = [Counter(r[j] for r in ref_rows) for j in range(ref_width)]
    pred_cols = [Counter(r[j] for r in pred_rows) for j in range(pred_width)]
    candidates = [[k for k in range(pred_width) if pred_cols[k] == ref_cols[j]] for j in range(ref_width)]
    if any(not c for c in candidates):
        return False
    ref_target: Any = ref_rows if ordered else Counter(ref_rows)

    def permutations(j: int, used: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
        if j == ref_width:
            yield used
            return
        for k in candidates[j]:
            if k not in used:
                yield from permutations(j + 1, used + (k,))

    # Bound the work (permutations x rows) so a wide result of look-alike columns stays cheap.
    budget = max(10, min(_MAX_PERMUTATIONS, 2_000_000 // len(pred_rows)))
    for perm in islice(permutations(0, ()), budget):
        permuted = [tuple(r[k] for k in perm) for r in pred_rows]
        if (permuted if ordered else Counter(permuted)) == ref_target:
            return True
    return False


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost query has ORDER BY (then row order is part of the answer)."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
        return tree is not None and tree.args.get("order") is not None
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        pass
    depth, upper = 0, sql.upper()
    for i, ch in enumerate(upper):  # fallback: ORDER BY outside all parentheses
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and upper.startswith("ORDER", i) and re.match(r"ORDER\s+BY\b", upper[i:]):
            return True
    return False


def _is_query(sql: str) -> bool:
    return bool(_QUERY_START.match(sql.lstrip()))


# -- metric --------------------------------------------------------------------------------------
def sql_match_details(
    prediction: Any,
    reference: str,
    schema_sql: str,
    *,
    n_databases: int = 3,
    seed: int = 0,
    timeout_s: float = 2.0,
    suite: bool = True,
) -> SQLMatchResult:
    """:func:`sql_execution_match` with whether the output held SQL and why it scored 0."""
    if n_databases < 1:
        raise ValueError("n_databases must be >= 1")
    ref_sql = extract_sql(reference)
    if ref_sql is None or not _is_query(ref_sql):
        raise SQLReferenceError(f"reference is not a SELECT query: {as_text(reference)[:200]!r}")
    pred_sql = extract_sql(prediction)
    if pred_sql is None:
        return SQLMatchResult(0.0, False, "no SQL in the output")
    if not _is_query(pred_sql):
        return SQLMatchResult(0.0, True, "not a SELECT query")
    ordered = has_top_level_order_by(ref_sql)
    literals = extract_literals(ref_sql) + extract_literals(pred_sql)
    budget_end = time.perf_counter() + timeout_s  # one time budget for the prediction on all databases
    for index in range(n_databases):
        conn = build_database(schema_sql, literals, seed=seed, index=index)
        try:
            try:
                ref_result = run_readonly_query(conn, ref_sql, timeout_s=max(timeout_s, 10.0))
            except _QueryFailed as exc:
                raise SQLReferenceError(f"reference query fails on database {index}: {exc}") from None
            remaining = budget_end - time.perf_counter()
            if remaining <= 0:
                return SQLMatchResult(0.0, True, f"prediction timed out after {timeout_s:g}s")
            try:
                pred_result = run_readonly_query(conn, pred_sql, timeout_s=remaining)
            except _QueryFailed as exc:
                if str(exc).startswith("timed out"):
                    return SQLMatchResult(0.0, True, f"prediction timed out after {timeout_s:g}s")
                return SQLMatchResult(0.0, True, f"prediction error: {exc}")
        finally:
            conn.close()
        if not results_match(ref_result, pred_result, ordered=ordered):
            return SQLMatchResult(0.0, True, f"results differ on database {index}")
    if suite:
        from distil_platform.evaluation.scoring.sql_suite import distinguishing_suite, open_suite_database

        chosen = distinguishing_suite(schema_sql, ref_sql, seed=seed)
        for (kind, index), data, ref_result in zip(chosen.specs, chosen.databases, chosen.gold_results):
            remaining = budget_end - time.perf_counter()
            if remaining <= 0:
                return SQLMatchResult(0.0, True, f"prediction timed out after {timeout_s:g}s")
            conn = open_suite_database(data)
            try:
                pred_result = run_sandboxed(conn, pred_sql, timeout_s=remaining)
            except SQLSandboxError as exc:
                if str(exc).startswith("timed out"):
                    return SQLMatchResult(0.0, True, f"prediction timed out after {timeout_s:g}s")
                return SQLMatchResult(0.0, True, f"prediction error: {exc}")
            finally:
                conn.close()
            if not results_match(ref_result, pred_result, ordered=ordered):
                return SQLMatchResult(0.0, True, f"results differ on distinguishing database {kind} {index}")
    return SQLMatchResult(1.0, True, "")


def sql_execution_match(
    prediction: Any,
    reference: str,
    schema_sql: str,
    *,
    n_databases: int = 3,
    seed: int = 0,
    timeout_s: float = 2.0,
    suite: bool = True,
) -> float:
    """Execution accuracy: 1.0 only when prediction and reference return the same results on each of
    ``n_databases`` generated databases and, with ``suite`` (the default), on the reference's
    distinguishing databases (:func:`distil_platform.evaluation.scoring.sql_suite.distinguishing_suite`: boundary
    databases chosen because they tell the reference from its near-miss neighbours; cached per
    schema, reference and seed). ``suite=False`` is the scoring before distinguishing databases.

    Results compare as multisets of rows, or as lists when the reference has a top-level ORDER BY;
    column order may differ; floats compare to 10 significant digits. A prediction that has no
    SQL, is not a SELECT, errors, runs past ``timeout_s`` (in total) or returns more than
    ``ROW_CAP`` rows scores 0.0. Raises :class:`SQLSchemaError` / :class:`SQLReferenceError` only
    for a bad schema or reference.
    """
    return sql_match_details(
        prediction,
        reference,
        schema_sql,
        n_databases=n_databases,
        seed=seed,
        timeout_s=timeout_s,
        suite=suite,
    ).score


def sql_reference_error(
    reference: str, schema_sql: str, *, n_databases: int = 3, seed: int = 0
) -> str | None:
    """Why ``reference`` cannot serve as a text2sql answer for ``schema_sql`` (None when it can)."""
    try:
        sql_match_details(reference, reference, schema_sql, n_databases=n_databases, seed=seed, suite=False)
    except (SQLSchemaError, SQLReferenceError) as exc:
        return str(exc)
    return None
