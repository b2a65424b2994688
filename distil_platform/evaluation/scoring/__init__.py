"""Metrics: one score in [0, 1] (or NaN where stated) per model output. See docs/metrics.md.

Every metric accepts any model output without raising; only a bad reference, schema or tool list
raises (a clear ``ValueError`` subclass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distil_platform.evaluation.scoring.classification import (
    exact_match,
    matches_known_label,
    normalize_label,
)
from distil_platform.evaluation.scoring.judge import Judge, build_judge_messages, llm_judge, parse_verdict
from distil_platform.evaluation.scoring.sql.database import build_database
from distil_platform.evaluation.scoring.sql.matching import (
    SQLReferenceError,
    extract_sql,
    split_schema_question,
    sql_execution_match,
    sql_match_details,
    sql_reference_error,
)
from distil_platform.evaluation.scoring.sql.sandbox import SQLSchemaError
from distil_platform.evaluation.scoring.text import token_f1
from distil_platform.evaluation.scoring.toolcalls import (
    ToolSchemaError,
    parse_tool_call,
    tool_call_equivalence,
    tool_call_staged,
    tool_call_strict,
)

if TYPE_CHECKING:
    from distil_platform.tasks.spec import TaskSpec

__all__ = [
    "DEFAULT_JUDGE_RUBRIC",
    "ItemScore",
    "Judge",
    "SQLReferenceError",
    "SQLSchemaError",
    "ToolSchemaError",
    "build_database",
    "build_judge_messages",
    "exact_match",
    "extract_sql",
    "llm_judge",
    "matches_known_label",
    "normalize_label",
    "parse_tool_call",
    "parse_verdict",
    "score_prediction",
    "split_schema_question",
    "sql_execution_match",
    "sql_match_details",
    "sql_reference_error",
    "token_f1",
    "tool_call_equivalence",
    "tool_call_staged",
    "tool_call_strict",
]

DEFAULT_JUDGE_RUBRIC = (
    "GOOD when the model answer states the same facts as the reference answer and answers the "
    "question; extra correct detail is fine. BAD when it is wrong, contradicts the reference, "
    "misses required content, or does not answer."
)


@dataclass
class ItemScore:
    """The score of one model output on one test row.

    ``score``: the task's metric (NaN when a judge verdict was unparseable). ``strict``: a stricter
    companion where the task has one (tool calling: :func:`tool_call_strict`), else None.
    ``parse_ok``: the output could be parsed (a tool call / SQL / a known label was found).
    ``detail``: why the score is what it is, e.g. ``"fallback:token_f1"`` or a SQL error.
    """

    score: float
    strict: float | None
    parse_ok: bool
    detail: str = ""


def sql_schema_for(row: dict[str, Any]) -> str:
    """The schema a text2sql row is scored against: its `context`, else the `Schema:` part of its question."""
    schema = str(row.get("context") or "").strip()
    if schema:
        return schema
    schema, _ = split_schema_question(str(row.get("question") or ""))
    if not schema:
        raise SQLSchemaError("text2sql row has no schema: `context` is empty and `question` has no 'Schema:'")
    return schema


def score_prediction(
    spec: TaskSpec, prediction: str, row: dict[str, Any], judge: Judge | None = None
) -> ItemScore:
    """Scores ``prediction`` for ``row`` (keys question, answer, context) with ``spec.metric_name``.

    For ``llm_judge`` without a judge the documented fallback is :func:`token_f1`
    (``detail="fallback:token_f1"``).
    """
    metric = spec.metric_name
    reference = str(row["answer"])
    if metric == "exact_match":
        score = exact_match(prediction, reference)
        return ItemScore(score, None, matches_known_label(prediction, spec.labels))
    if metric == "tool_call_equivalence":
        tools = spec.tools or []
        score = tool_call_equivalence(prediction, reference, tools)
        strict = tool_call_strict(prediction, reference, tools)
        parsed = parse_tool_call(prediction) is not None
        detail = "" if parsed else "no tool call in the output"
        if parsed and score < 1.0:
            detail = f"staged={tool_call_staged(prediction, reference, tools):g}"
        return ItemScore(score, strict, parsed, detail)
    if metric == "sql_execution_match":
        result = sql_match_details(prediction, reference, sql_schema_for(row))
        return ItemScore(result.score, None, result.parse_ok, result.reason)
    if metric == "llm_judge":
        if judge is None:
            return ItemScore(token_f1(prediction, reference), None, True, "fallback:token_f1")
        score = llm_judge(
            prediction,
            reference,
            str(row.get("question") or ""),
            spec.judge_rubric or DEFAULT_JUDGE_RUBRIC,
            judge=judge,
            context=str(row.get("context") or ""),
        )
        return ItemScore(score, None, True, "judge verdict unparseable" if math.isnan(score) else "")
    if metric == "token_f1":
        return ItemScore(token_f1(prediction, reference), None, True)
    raise ValueError(f"task {spec.name}: unknown metric {metric!r}")
