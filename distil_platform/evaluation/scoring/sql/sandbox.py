"""The SQLite sandbox that untrusted SQL runs in: its caps, authorizers, schema loader and query runner.

A model's SQL is untrusted. It runs only in :func:`run_sandboxed`: in-memory databases, an
authorizer that allows reading and nothing else (no ATTACH, PRAGMA, extension loading or writes),
caps on value size, result columns, rows and total result bytes, and one deadline enforced while
executing and while fetching. :func:`~distil_platform.evaluation.scoring.sql.database.execute_untrusted_sql`
builds the database from a DDL first.

The schema DDL is untrusted too (a recorded teacher file brings its own ``context``): it runs only
in :func:`load_schema`, which accepts CREATE TABLE (with declared columns), CREATE INDEX and INSERT
statements (:func:`check_schema_statements`, parsed with sqlglot), under an authorizer that allows
those and nothing else, a database size cap and a deadline, so a runaway schema (``INSERT ... WITH
RECURSIVE`` without an end) is rejected with a reason within ``SCHEMA_TIMEOUT_S``. A rejected schema
is remembered per process (:func:`~distil_platform.evaluation.scoring.sql.schema.introspect`): the rows
that share it are rejected at once.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import sqlglot
from sqlglot import exp

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


class SQLSchemaError(ValueError):
    """The schema DDL does not execute or cannot be filled."""


class SQLSchemaNotAllowed(SQLSchemaError):
    """The schema DDL holds a statement other than CREATE TABLE / CREATE INDEX / INSERT."""


class SQLSchemaTimeout(SQLSchemaError):
    """The schema DDL did not finish within its deadline (``SCHEMA_TIMEOUT_S``)."""


class SQLSchemaTooLarge(SQLSchemaError):
    """The schema DDL wrote more than the database size cap (``MAX_DATABASE_PAGES`` pages)."""


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


def setup_authorizer(action: int, arg1: Any, arg2: Any, db_name: Any, trigger: Any) -> int:
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


def new_connection() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SCHEMA_CHARS)
    conn.execute(f"PRAGMA max_page_count = {MAX_DATABASE_PAGES}")  # a schema cannot fill the memory
    conn.set_authorizer(setup_authorizer)
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
    execute_schema(conn, schema_sql, timeout_s)


def execute_schema(conn: sqlite3.Connection, schema_sql: str, timeout_s: float = SCHEMA_TIMEOUT_S) -> None:
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
        conn.set_authorizer(setup_authorizer)


class SQLSandboxError(Exception):
    """An untrusted query was refused or failed in the sandbox (error, not allowed, timed out, too
    many rows, columns or bytes). ``str(exc)`` says why; timeouts start with ``"timed out"``."""


_QueryFailed = SQLSandboxError  # the name older tests use


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
        conn.set_authorizer(setup_authorizer)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, old_columns)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old_length)
    return width, rows


def run_readonly_query(
    conn: sqlite3.Connection, sql: str, *, timeout_s: float = 2.0, row_cap: int = ROW_CAP
) -> tuple[int, list[tuple]]:
    """:func:`run_sandboxed` with the default byte cap (kept for existing callers)."""
    return run_sandboxed(conn, sql, timeout_s=timeout_s, row_cap=row_cap)
