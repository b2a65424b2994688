"""Row validity per task type, and seed/test leakage.

Used by the seed-set checks (every seed and test row must be valid) and by synthesis (teacher
output is kept only when valid). ``validate_row`` returns a short reason code, never raises on bad
data, so callers can count and report rejections.

Reason codes (field in brackets):
- ``empty_question`` [question], ``empty_answer`` [answer], ``missing_context`` [context]
- ``label_not_in_set`` [answer] (classification)
- ``tool_call_unparseable`` [answer], ``unknown_tool`` [answer], ``tool_args_invalid`` [answer],
  ``chat_history_invalid`` [question] (tool calling)
- ``schema_ddl_invalid``, ``schema_ddl_not_allowed`` (a statement other than CREATE TABLE / CREATE
  INDEX / INSERT), ``schema_ddl_timeout`` (the schema did not load within its deadline),
  ``schema_ddl_too_large`` (it wrote past the sandbox's database size cap) [context],
  ``sql_unparseable`` [answer], ``sql_not_single_select`` [answer], ``sql_execution_error``,
  ``sql_timeout`` [answer] (text2sql; schema and query run in the scoring sandbox)
- ``answer_not_in_context`` [answer] (open-book QA: the answer must be a span of the passages,
  except yes/no)
- ``unknown_placeholder`` [answer] (generation with ``answer_placeholders``)
- ``template_render_error`` [question] (the row cannot be rendered into the task's prompt)
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from typing import Any

import polars as pl

from distil_platform.tasks.spec import TaskSpec

REASON_FIELD: dict[str, str] = {
    "empty_question": "question",
    "empty_answer": "answer",
    "missing_context": "context",
    "label_not_in_set": "answer",
    "tool_call_unparseable": "answer",
    "unknown_tool": "answer",
    "tool_args_invalid": "answer",
    "chat_history_invalid": "question",
    "schema_ddl_invalid": "context",
    "schema_ddl_not_allowed": "context",
    "schema_ddl_timeout": "context",
    "schema_ddl_too_large": "context",
    "sql_unparseable": "answer",
    "sql_not_single_select": "answer",
    "sql_execution_error": "answer",
    "sql_timeout": "answer",
    "answer_not_in_context": "answer",
    "unknown_placeholder": "answer",
    "template_render_error": "question",
}

_YES_NO = {"yes", "no"}
SQL_TIMEOUT_S = 2.0  # per query on the generated validation database
_PLACEHOLDER_RE = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")


# -- text normalisation / leakage --------------------------------------------------------------
def normalise_text(s: Any) -> str:
    """Case-, accent-width-, punctuation- and whitespace-insensitive form of ``s`` for comparisons."""
    text = unicodedata.normalize("NFKC", "" if s is None else str(s)).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def _row_key(question: Any, context: Any) -> str:
    # The context is part of the identity: the same question on another schema or passage (and
    # docstring rows, whose question is a fixed instruction) is a different example.
    return normalise_text(question) + "\x1f" + normalise_text(context)


def find_overlaps(seed_df: pl.DataFrame, test_df: pl.DataFrame) -> list[tuple[str, str]]:
    """(seed_id, test_id) pairs whose question (+ context) are equal after :func:`normalise_text`."""
    def keyed(df: pl.DataFrame) -> list[tuple[str, str]]:
        ctx = df["context"].to_list() if "context" in df.columns else [""] * df.height
        return [(str(i), _row_key(q, c)) for i, q, c in zip(df["id"].to_list(), df["question"].to_list(), ctx)]

    by_key: dict[str, list[str]] = {}
    for seed_id, key in keyed(seed_df):
        by_key.setdefault(key, []).append(seed_id)
    return [(seed_id, test_id) for test_id, key in keyed(test_df) for seed_id in by_key.get(key, [])]


# -- tool calls --------------------------------------------------------------------------------
def parse_tool_call(text: str) -> dict[str, Any] | None:
    """``{"name": str, "parameters": dict}`` from the answer text, or None.

    Accepts ``arguments`` for ``parameters`` (OpenAI naming) and arguments given as a JSON string.
    Strict: the whole text must be the call (a dataset answer); a model's output, which may wrap the
    call in other text, is parsed by :func:`distil_platform.evaluation.scoring.toolcalls.parse_tool_call`.
    """
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    params = value.get("parameters", value.get("arguments", {}))
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            return None
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return None
    return {"name": value["name"], "parameters": params}


@lru_cache(maxsize=64)
def _tool_validator(schema_json: str):
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def tool_parameters_schema(spec: TaskSpec, name: str) -> dict[str, Any] | None:
    for tool in spec.tools or []:
        if tool["function"]["name"] == name:
            return tool["function"].get("parameters") or {"type": "object", "properties": {}}
    return None


def _chat_history_ok(question: str) -> bool:
    try:
        history = json.loads(question)
    except json.JSONDecodeError:
        return False
    if not isinstance(history, list) or not history:
        return False
    for message in history:
        if not isinstance(message, dict) or message.get("role") not in {"user", "assistant", "system", "tool"}:
            return False
    return history[-1]["role"] == "user" and bool(str(history[-1].get("content") or "").strip())


def _check_tool_call(spec: TaskSpec, row: dict[str, Any]) -> str | None:
    question = str(row.get("question") or "").strip()
    if question.startswith("[") and not _chat_history_ok(question):
        return "chat_history_invalid"
    call = parse_tool_call(str(row["answer"]))
    if call is None:
        return "tool_call_unparseable"
    schema = tool_parameters_schema(spec, call["name"])
    if schema is None:
        return "unknown_tool"
    validator = _tool_validator(json.dumps(schema, sort_keys=True))
    if next(iter(validator.iter_errors(call["parameters"])), None) is not None:
        return "tool_args_invalid"
    return None


def canonical_tool_call(text: str) -> str:
    """The answer re-serialised as ``{"name": ..., "parameters": {...}}`` with sorted keys.

    Raises ValueError when the text is not a tool call.
    """
    call = parse_tool_call(text)
    if call is None:
        raise ValueError("not a JSON tool call {\"name\": ..., \"parameters\": {...}}")
    return json.dumps(call, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


# -- SQL ---------------------------------------------------------------------------------------
def _check_sql(row: dict[str, Any]) -> str | None:
    import sqlglot
    from sqlglot import exp

    ddl = str(row.get("context") or "").strip()
    if not ddl:
        return "missing_context"
    sql = str(row["answer"]).strip()
    try:
        statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return "sql_unparseable"
    if not statements:
        return "sql_unparseable"
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        return "sql_not_single_select"
    # Teacher SQL is untrusted: it runs only in the scoring sandbox (in-memory database filled with
    # generated rows, read-only authorizer, time limit, row and byte caps), so a runaway recursive
    # CTE cannot hang the stage.
    from distil_platform.evaluation.scoring.sql.database import execute_untrusted_sql
    from distil_platform.evaluation.scoring.sql.sandbox import (
        SQLSandboxError,
        SQLSchemaError,
        SQLSchemaNotAllowed,
        SQLSchemaTimeout,
        SQLSchemaTooLarge,
    )

    try:
        execute_untrusted_sql(ddl, sql, timeout_s=SQL_TIMEOUT_S)
    except SQLSchemaTimeout:
        return "schema_ddl_timeout"
    except SQLSchemaTooLarge:
        return "schema_ddl_too_large"
    except SQLSchemaNotAllowed:
        return "schema_ddl_not_allowed"
    except SQLSchemaError:
        return "schema_ddl_invalid"
    except SQLSandboxError as exc:
        return "sql_timeout" if str(exc).startswith("timed out") else "sql_execution_error"
    return None


# -- per row -----------------------------------------------------------------------------------
def _check(spec: TaskSpec, row: dict[str, Any]) -> str | None:
    question = row.get("question")
    answer = row.get("answer")
    if question is None or not str(question).strip():
        return "empty_question"
    if answer is None or not str(answer).strip():
        return "empty_answer"
    try:
        from distil_platform.tasks.prompts import build_messages

        build_messages(spec, {"question": str(question), "context": str(row.get("context") or "")})
    except Exception:  # noqa: BLE001 - any failure to render means the row cannot be used
        return "template_render_error"

    if spec.type == "classification":
        return None if str(answer).strip() in (spec.labels or {}) else "label_not_in_set"
    if spec.type == "tool_calling":
        return _check_tool_call(spec, row)
    if spec.type == "text2sql":
        return _check_sql(row)
    if spec.type == "open_book_qa":
        context = str(row.get("context") or "")
        if not context.strip():
            return "missing_context"
        norm_answer = normalise_text(answer)
        if norm_answer not in _YES_NO and f" {norm_answer} " not in f" {normalise_text(context)} ":
            return "answer_not_in_context"
        return None
    if spec.answer_placeholders is not None:
        allowed = set(spec.answer_placeholders)
        if any(name not in allowed for name in _PLACEHOLDER_RE.findall(str(answer))):
            return "unknown_placeholder"
    return None


def validate_row(spec: TaskSpec, row: dict[str, Any]) -> str | None:
    """A short rejection reason code for ``row`` (keys id/question/answer/context), or None if valid."""
    return _check(spec, row)


def validate_frame(spec: TaskSpec, df: pl.DataFrame) -> list[tuple[int, str, str, str]]:
    """``(row_index, id, field, reason)`` for every invalid row of ``df`` (row_index 0-based)."""
    problems = []
    for index, row in enumerate(df.iter_rows(named=True)):
        reason = _check(spec, row)
        if reason is not None:
            problems.append((index, str(row.get("id", index)), REASON_FIELD.get(reason, "answer"), reason))
    return problems
