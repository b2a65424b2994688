"""JSON schemas that constrain the teacher's reply to the task's example format.

One builder per task type, derived from the task YAML:

- classification: ``answer`` is one of the label names (``enum``);
- tool calling: ``answer`` is one of the tools' calls, each ``{"name": <const>, "parameters": <the
  tool's own JSON schema>}`` (``anyOf``);
- text2sql: ``answer`` is a SQL string (the schema, i.e. the context, is fixed by the request);
  where the task's ``synthesis.constrain_sql`` says ``subset`` for the profile, a query matching
  :func:`sql_answer_pattern` over that request's tables and columns;
- open-book QA: one of the request passage's spans (:func:`answer_spans`) or yes/no, which is what
  the row validator accepts (``answer_not_in_context`` otherwise);
- generation: strings (generation tasks whose seeds carry a ``context`` get a required ``context``
  string too).

The reply is a top-level JSON **array** of ``{question, answer[, context]}`` items, between
``synthesis.min_examples_per_request`` (default: all N) and N = ``examples_per_request``: that is
what :func:`distil_platform.teacher.replies.parse_teacher_output` reads (cpu-notes: an object wrapper
such as ``{"examples": [...]}`` was not), and what vLLM's structured outputs enforce with
``response_format={"type": "json_schema", ...}``. Whether a teacher endpoint gets the schema is a
per-teacher setting (``ModelRef.response_format``), see :func:`use_structured_output`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Any

from distil_platform.tasks.spec import TaskSpec
from distil_platform.teacher.filters import fixed_instruction

# A span candidate for open-book QA answers: clause-bounded, starting and ending with an
# entity-like word (capitalised or a number), at most this many words.
MAX_SPAN_WORDS = 6
MAX_SPANS = 2000
# Sentence ends (not an initial's period: "C. S. Lewis"), brackets, quotes, semicolons, newlines.
_CLAUSE_BREAK = re.compile(r"(?<!\b[A-Z])\.\s|[;:!?()\[\]\"\u201c\u201d\n]")
# Capitalised sentence openers that are not answers on their own.
_NOT_AN_ANSWER = {"a", "an", "the", "it", "its", "he", "his", "she", "her", "they", "their", "this", "that",
                  "these", "those", "there", "in", "on", "at", "of", "by", "for", "from", "with", "as", "after",
                  "before", "when", "while", "during", "since", "and", "but", "or", "if", "although"}


def _entity_like(word: str) -> bool:
    return bool(word) and (word[0].isdigit() or (word[0].isupper() and len(word.rstrip(".")) > 1)
                           or (len(word) == 2 and word[0].isupper() and word[1] == "."))


def answer_spans(context: str, max_words: int = MAX_SPAN_WORDS, limit: int = MAX_SPANS) -> list[str]:
    """Answers an open-book QA teacher may give about ``context``: "yes", "no", and the passage's
    entity-like spans (names, titles, dates, numbers; HotpotQA's answers are such spans), each one
    that the row validator accepts as a span of the context. In passage order, at most ``limit``."""
    from distil_platform.tasks.validation import normalise_text

    haystack = f" {normalise_text(context)} "
    out: dict[str, None] = {"yes": None, "no": None}
    for clause in _CLAUSE_BREAK.split(context or ""):
        words = [w.strip(",'\u2019") for w in clause.split()]
        words = [w[:-1] if w.endswith(".") and len(w) > 2 else w for w in words if w]  # "Inc." -> "Inc"
        for i, first in enumerate(words):
            if not _entity_like(first):
                continue
            for j in range(i, min(len(words), i + max_words)):
                if not _entity_like(words[j]) or words[j].endswith("."):  # a span does not end on an initial
                    continue
                span = " ".join(words[i:j + 1])
                if i == j and span.casefold() in _NOT_AN_ANSWER:
                    continue
                norm = normalise_text(span)
                if norm and f" {norm} " in haystack:
                    out.setdefault(span, None)
                if len(out) >= limit:
                    return list(out)
    return list(out)


def schema_columns(ddl: str) -> dict[str, list[str]]:
    """Each ``CREATE TABLE``'s columns, by table (sqlglot, SQLite dialect); {} when unparseable."""
    import sqlglot
    from sqlglot import exp

    out: dict[str, list[str]] = {}
    try:
        statements = sqlglot.parse(ddl, read="sqlite")
    except sqlglot.errors.ParseError:
        return {}
    for stmt in statements:
        if isinstance(stmt, exp.Create) and isinstance(stmt.this, exp.Schema) and stmt.this.this is not None:
            cols = out.setdefault(stmt.this.this.name, [])
            cols.extend(c.name for c in stmt.this.expressions if isinstance(c, exp.ColumnDef) and c.name not in cols)
    return out


def _alternation(names: Sequence[str]) -> str:
    return "(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + ")"


def _select_pattern(tables: Sequence[str], columns: Sequence[str], join: bool) -> str:
    table, column = _alternation(tables), _alternation(columns)
    # Bounded: an unbounded identifier let the 135M teacher loop on digits to the token limit.
    alias, ident = "[a-z][a-z0-9]{0,3}", "[a-z][a-z0-9_]{0,29}"
    col = f"(({table}|{alias})\\.)?{column}"
    agg = f"(COUNT\\(\\*\\)|(COUNT|SUM|AVG|MIN|MAX)\\((DISTINCT )?{col}\\))"
    item = f"({agg}|{col}|{alias}\\.\\*|\\*)( AS {ident})?"
    value = "('[^']*'|-?[0-9]+(\\.[0-9]+)?)"
    op = "( = | != | <> | > | < | >= | <= | LIKE )"
    lhs = f"({agg}|{col}|strftime\\('%Y(-%m)?(-%d)?', {col}\\)|date\\({col}\\))"
    cond = f"({lhs}{op}{value}|{lhs} BETWEEN {value} AND {value}|{col} IS (NOT )?NULL)"
    if join:
        source = f"{table}( {alias})?"
        from_ = f" FROM {source}( (INNER |LEFT )?JOIN {source} ON {col} = {col})+"
    else:
        from_ = f" FROM {table}( {alias})?"
    where = f"( WHERE {cond}(( AND | OR ){cond})*)?"
    group = f"( GROUP BY {col}(, {col})*( HAVING {cond})?)?"
    key = f"({agg}|{col}|{ident})( ASC| DESC)?"
    order = f"( ORDER BY {key}(, {key})*)?"
    return f"(DISTINCT )?{item}(, {item})*{from_}{where}{group}{order}"


def sql_answer_pattern(ddl: str) -> str | None:
    """A regular expression for single SELECT queries over ``ddl``'s tables and columns: select
    items (columns, COUNT/SUM/AVG/MIN/MAX, ``AS`` aliases), joins with aliases, WHERE with
    comparisons, LIKE, BETWEEN, IS NULL, strftime/date on columns, GROUP BY / HAVING, ORDER BY,
    LIMIT. No subqueries, CTEs or window functions: a subset a small teacher can be held to (109 of
    the 110 shipped text2sql gold queries are in it). Names come from the schema, so the teacher
    cannot invent them, and a query over one table uses that table's own columns (one branch per
    table; joins may use any). None when the DDL names no table."""
    by_table = schema_columns(ddl)
    tables = list(by_table)
    columns = list(dict.fromkeys(c for cols in by_table.values() for c in cols))
    if not tables or not columns:
        return None
    branches = [_select_pattern([t], cols, join=False) for t, cols in by_table.items() if cols]
    if len(tables) > 1:
        branches.append(_select_pattern(tables, columns, join=True))
    return f"^SELECT ({'|'.join(branches)})( LIMIT [1-9][0-9]*)?;?$"


def answer_schema(spec: TaskSpec, context: str = "", sql_subset: bool = False) -> dict[str, Any]:
    """The JSON schema of one example's ``answer`` for ``spec``'s type. ``context`` is the request's
    fixed context: for open-book QA the answer is then one of its passage's spans; for text2sql
    with ``sql_subset`` a query in :func:`sql_answer_pattern` over its schema."""
    if spec.type == "open_book_qa" and context.strip():
        return {"type": "string", "enum": answer_spans(context)}
    if spec.type == "text2sql" and sql_subset and (pattern := sql_answer_pattern(context)):
        return {"type": "string", "pattern": pattern}
    if spec.type == "classification":
        return {"type": "string", "enum": list(spec.labels or {})}
    if spec.type == "tool_calling":
        calls = []
        for tool in spec.tools or []:
            fn = tool["function"]
            params = copy.deepcopy(fn.get("parameters") or {"type": "object", "properties": {}})
            params.setdefault("type", "object")
            calls.append({
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "parameters": params},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            })
        return {"anyOf": calls}
    if spec.type == "text2sql":
        return {"type": "string", "minLength": 1, "description": "one SQLite SELECT query"}
    return {"type": "string", "minLength": 1}


def writes_context(spec: TaskSpec, seeds: Sequence[dict[str, Any]]) -> bool:
    """Whether the teacher's examples carry their own ``context`` (generation tasks whose seeds
    have one). Context-bound tasks (text2sql, open-book QA) get theirs from the request instead."""
    return spec.type == "generation" and any(str(s.get("context") or "").strip() for s in seeds)


def example_schema(spec: TaskSpec, seeds: Sequence[dict[str, Any]] = (), context: str = "",
                   sql_subset: bool = False) -> dict[str, Any]:
    """The schema of one ``{question, answer[, context]}`` example (``context``: the request's).
    Where every seed asks the same question (a fixed instruction, as docstring's "Write a docstring
    for this function"), the question is that constant: the example's content is its context."""
    fixed = fixed_instruction(seeds)
    question = {"type": "string", "const": fixed} if fixed else {"type": "string", "minLength": 1}
    props: dict[str, Any] = {"question": question, "answer": answer_schema(spec, context, sql_subset)}
    required = ["question", "answer"]
    if writes_context(spec, seeds):
        props["context"] = {"type": "string", "minLength": 1}
        required.append("context")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def reply_schema(spec: TaskSpec, seeds: Sequence[dict[str, Any]] = (), max_items: int | None = None,
                 context: str = "", sql_subset: bool = False) -> dict[str, Any]:
    """A top-level JSON array of ``min_examples_per_request``..``max_items`` examples.

    ``max_items`` defaults to ``examples_per_request``; the minimum defaults to the maximum. A small
    teacher given ``minItems: 1`` mostly closes the array after one example (the 135M CPU teacher
    wrote 1.4 examples per request of the 4 asked), so the request's room goes unused.
    """
    syn = spec.synthesis
    n = max(1, max_items or syn.examples_per_request)
    low = min(n, syn.min_examples_per_request or n)
    return {"type": "array", "items": example_schema(spec, seeds, context, sql_subset),
            "minItems": low, "maxItems": n}


def response_format(spec: TaskSpec, seeds: Sequence[dict[str, Any]] = (), max_items: int | None = None,
                    context: str = "", sql_subset: bool = False) -> dict[str, Any]:
    """The OpenAI-style ``response_format`` value (vLLM structured outputs accept it as is).
    ``context`` is the request's fixed context (it shapes open-book QA and, with ``sql_subset``,
    text2sql answers)."""
    schema = reply_schema(spec, seeds, max_items, context, sql_subset)
    return {"type": "json_schema", "json_schema": {"name": f"{spec.name}_examples", "schema": schema}}


def second_answer_format(spec: TaskSpec, row: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` of the agreement filter's second answer to ``row``: the answer space
    the teacher's own answer was held to, so the two can agree only on a choice both made from it.
    Open-book QA: the spans of the row's passage (or yes/no); classification: the labels; tool
    calling: a call of one of the tools with arguments valid for its schema. The
    answer sits in an object (``{"answer": ...}``; OpenAI-style endpoints want an object at the
    root): :func:`unwrap_second_answer` takes it out. None where the second answer is free text."""
    context = str(row.get("context") or "")
    if spec.type == "open_book_qa" and context.strip():
        answer: dict[str, Any] = {"type": "string", "enum": answer_spans(context)}
    elif spec.type == "classification" and spec.labels:
        answer = {"type": "string", "enum": list(spec.labels)}
    elif spec.type == "tool_calling" and spec.tools:
        answer = answer_schema(spec)  # one call of one of the tools, its arguments as the tool's schema
    else:
        return None
    schema = {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
              "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": f"{spec.name}_answer", "schema": schema}}


def unwrap_second_answer(text: str | None) -> str | None:
    """The answer of a :func:`second_answer_format` reply; any other text is returned as it is."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError):  # RecursionError: nesting past the parser's depth
        return text
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        return value["answer"]
    if isinstance(value, dict) and isinstance(value.get("answer"), dict):  # a tool call, as the student writes it
        return json.dumps(value["answer"], separators=(", ", ": "))
    return text


def sql_subset_for(spec: TaskSpec, profile: str) -> bool:
    """Whether ``profile``'s teacher is held to :func:`sql_answer_pattern` (``synthesis.constrain_sql``)."""
    return spec.type == "text2sql" and spec.synthesis.constrain_sql.for_profile(profile) == "subset"


def use_structured_output(setting: str, *, served_locally: bool, backend: str | None) -> bool:
    """Whether a teacher gets ``response_format``.

    ``setting`` is the teacher's ``response_format`` field: ``json_schema`` (always send it: the
    endpoint supports it), ``none`` (never: parse free text), ``auto`` (send it only to a model
    served locally by vLLM; ``transformers serve`` ignores it and third-party endpoints vary).
    """
    if setting == "json_schema":
        return True
    if setting == "none":
        return False
    if setting != "auto":
        raise ValueError(f"response_format must be auto, json_schema or none, got {setting!r}")
    return served_locally and backend == "vllm"
