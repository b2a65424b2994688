"""Text-to-SQL execution accuracy in the style of the Spider test-suite evaluation.

``sql_execution_match`` builds several small SQLite databases from the schema DDL
(:mod:`distil_platform.evaluation.scoring.sql.database`), filled with deterministic random rows that
respect the schema's types and constraints and that reuse the literal values of both queries (so
``WHERE status = 'pending'`` selects rows), runs both queries on each in the sandbox
(:mod:`distil_platform.evaluation.scoring.sql.sandbox`), then on the reference's distinguishing databases
(:mod:`distil_platform.evaluation.scoring.sql.suite`: boundary-targeted databases chosen because they
tell the reference from its near-miss neighbours), and scores 1.0 only when the results agree on
every database (:mod:`distil_platform.evaluation.scoring.sql.results`). Also here: the SQL of a model's
output (:func:`extract_sql`) and the schema and question of a prompt (:func:`split_schema_question`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import sqlglot

from distil_platform.evaluation.scoring.sql.database import build_database, extract_literals
from distil_platform.evaluation.scoring.sql.results import has_top_level_order_by, results_match
from distil_platform.evaluation.scoring.sql.sandbox import (
    SQLSandboxError,
    SQLSchemaError,
    run_readonly_query,
    run_sandboxed,
)
from distil_platform.evaluation.scoring.sql.suite import distinguishing_suite, open_suite_database
from distil_platform.evaluation.scoring.text import as_text, fenced_blocks


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
            except SQLSandboxError as exc:
                raise SQLReferenceError(f"reference query fails on database {index}: {exc}") from None
            remaining = budget_end - time.perf_counter()
            if remaining <= 0:
                return SQLMatchResult(0.0, True, f"prediction timed out after {timeout_s:g}s")
            try:
                pred_result = run_readonly_query(conn, pred_sql, timeout_s=remaining)
            except SQLSandboxError as exc:
                if str(exc).startswith("timed out"):
                    return SQLMatchResult(0.0, True, f"prediction timed out after {timeout_s:g}s")
                return SQLMatchResult(0.0, True, f"prediction error: {exc}")
        finally:
            conn.close()
        if not results_match(ref_result, pred_result, ordered=ordered):
            return SQLMatchResult(0.0, True, f"results differ on database {index}")
    if suite:
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
    distinguishing databases (:func:`distil_platform.evaluation.scoring.sql.suite.distinguishing_suite`: boundary
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
