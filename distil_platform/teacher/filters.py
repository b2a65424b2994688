"""Quality filters for teacher rows: content checks that run after validation.

Validation (``validation.validate_row``) checks form: the label exists, the tool call matches its
schema, the SQL parses and runs. Constrained decoding already guarantees most of that; it does not
make a row *right*. These filters judge content, each returning a short reason (or None), each
switchable per task (``synthesis.filters`` in the task YAML, :class:`~distil_platform.tasks.spec.QualityFilters`):

- :class:`QuestionSanity`: the question is a real sentence of the seeds' script and length range,
  not a prompt scaffold (``"Question:"``), not the task instruction, not a tool or label name
  (``"git_commit"``), not a repetition loop;
- :func:`sql_nonempty`: the SQL runs in the scoring sandbox (time limit, read-only authorizer,
  row/byte caps) and returns rows on at least one generated database;
- :func:`ungrounded_arguments`: every string/number argument of a tool call appears in the
  question (or equals the parameter's default); :func:`contradicted_enums`: no enum argument is
  one value where the question names only others;
- :func:`answers_agree`: an independent second answer scores as correct against the row's answer
  (the task's own metric), so a mislabelled row is dropped.

No model, client or Dagster import: the second answer is passed in.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distil_platform.tasks.spec import QualityFilters, TaskSpec

_WS_RE = re.compile(r"\s+")
_NON_WORD_RE = re.compile(r"[^\w\s]")
# Words a model writes when it copies the prompt's layout instead of content.
_SCAFFOLD_WORDS = (
    "question", "questions", "answer", "answers", "input", "output", "example", "examples", "context",
    "schema", "query", "sql", "message", "customer message", "product", "text", "text to redact", "user",
    "assistant", "q", "a", "label", "category", "json", "new example", "your question here", "function",
)
_SCAFFOLD_RE = re.compile(
    r"^\W*(?:" + "|".join(re.escape(w) for w in sorted(_SCAFFOLD_WORDS, key=len, reverse=True))
    + r")\s*\d*\s*[:：\-=>]*\W*$",
    re.IGNORECASE,
)
_PLACEHOLDER_RE = re.compile(r"\{question\}|\{context\}|<question>|<answer>|\[question\]|<your question>", re.IGNORECASE)


QUESTION_MARK_SHARE = 0.9
_QUESTION_ENDS = ("?", "？")


def _norm(text: Any) -> str:
    text = unicodedata.normalize("NFKC", "" if text is None else str(text)).casefold()
    return _WS_RE.sub(" ", _NON_WORD_RE.sub(" ", text)).strip()


def fixed_instruction(seeds: Sequence[dict[str, Any]]) -> str | None:
    """The one question every seed asks (docstring's "Write a docstring for this function"), as the
    first seed writes it; None unless there are >= 2 seeds whose questions agree up to case,
    punctuation and spacing. Such a task's content is its context, not its question."""
    if len(seeds) < 2:
        return None
    distinct = {_norm(s.get("question")) for s in seeds}
    if len(distinct) != 1 or not next(iter(distinct)):
        return None
    return str(seeds[0].get("question") or "")


def question_text(question: str) -> str:
    """The text a person wrote: the latest user message of a JSON chat history, else the question."""
    stripped = question.strip()
    if stripped.startswith("["):
        try:
            history = json.loads(stripped)
        except json.JSONDecodeError:
            return question
        if isinstance(history, list):
            users = [m for m in history if isinstance(m, dict) and m.get("role") == "user"]
            if users:
                return str(users[-1].get("content") or "")
    return question


def _history_text(question: str) -> str:
    """Everything said in a chat history (user turns and earlier calls), else the question."""
    stripped = question.strip()
    if stripped.startswith("["):
        try:
            history = json.loads(stripped)
        except json.JSONDecodeError:
            return question
        if isinstance(history, list):
            parts = []
            for m in history:
                if isinstance(m, dict):
                    parts.append(str(m.get("content") or ""))
                    if m.get("tool_calls"):
                        parts.append(json.dumps(m["tool_calls"], ensure_ascii=False))
            return "\n".join(parts)
    return question


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def _latin_share(text: str) -> float:
    letters = _letters(text)
    if not letters:
        return 0.0
    return sum(1 for c in letters if "LATIN" in unicodedata.name(c, "")) / len(letters)


def _letter_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return len(_letters(text)) / len(chars) if chars else 0.0


def _template_prefix(spec: TaskSpec) -> str:
    """The literal text the prompt template puts before ``{question}`` on its line (e.g. ``Question:``)."""
    template = spec.prompt_template
    pos = template.find("{question}")
    if pos <= 0:
        return ""
    line = template[:pos].rsplit("\n", 1)[-1].strip()
    return line if len(line) >= 2 else ""


@dataclass
class QuestionSanity:
    """Question checks whose limits are derived from the seeds (overridable in the YAML)."""

    spec: TaskSpec
    min_chars: int
    max_chars: int
    latin: bool
    min_letter_share: float
    fixed_instruction: str | None
    instruction_lines: tuple[str, ...]
    prefixes: tuple[str, ...]
    # The answer vocabulary (tool names, label names), normalised: a question that is one of them
    # ("git_commit") restates an answer instead of asking anything.
    answer_names: frozenset[str] = frozenset()
    # Every seed question ends with "?" (>= QUESTION_MARK_SHARE of them: HotpotQA, TREC): a teacher's
    # "question" that does not is a statement or a ramble cut off mid-sentence.
    asks: bool = False

    @classmethod
    def from_seeds(cls, spec: TaskSpec, seeds: Sequence[dict[str, Any]], cfg: QualityFilters | None = None) -> QuestionSanity:
        cfg = cfg or spec.synthesis.filters
        texts = [question_text(str(s.get("question") or "")) for s in seeds] or ["a question"]
        lengths = [len(t.strip()) for t in texts]
        fixed = fixed_instruction(seeds)
        joined = " ".join(texts)
        lines = [_norm(line) for line in (spec.description or "").splitlines()]
        lines += [_norm(v) for v in (spec.labels or {}).values()]
        prefix = _template_prefix(spec)
        return cls(
            spec=spec,
            min_chars=cfg.min_question_chars if cfg.min_question_chars is not None else max(3, min(lengths) // 3),
            max_chars=cfg.max_question_chars if cfg.max_question_chars is not None else max(lengths) * 3 + 40,
            latin=_latin_share(joined) >= 0.9,
            min_letter_share=0.6 * min(_letter_share(t) for t in texts),
            fixed_instruction=_norm(fixed) if fixed is not None else None,
            instruction_lines=tuple(line for line in lines if len(line.split()) >= 4),
            prefixes=tuple(p for p in {prefix.casefold()} if p),
            asks=len(texts) >= 2 and sum(t.strip().endswith(_QUESTION_ENDS) for t in texts) >= QUESTION_MARK_SHARE * len(texts),
            answer_names=frozenset(form for name in [*(spec.tool_names if spec.tools else []), *(spec.labels or {})]
                                   for form in (_norm(name), _norm(str(name).replace("_", " ")))),
        )

    def check(self, row: dict[str, Any]) -> str | None:
        question = str(row.get("question") or "")
        if self.fixed_instruction is not None:
            # Tasks whose question is one fixed instruction (docstring): the content is the context.
            return None if _norm(question) == self.fixed_instruction else "not_the_fixed_instruction"
        text = question_text(question).strip()
        norm = _norm(text)
        if not norm or _SCAFFOLD_RE.match(text) or _PLACEHOLDER_RE.search(text):
            return "scaffold"
        if any(text.casefold().startswith(p) for p in self.prefixes):
            return "scaffold"
        if norm in self.answer_names or norm.replace("_", " ") in self.answer_names:
            return "names_an_answer"
        if len(norm.split()) >= 4 and any(norm == line or (len(norm) >= 30 and norm in line)
                                          for line in self.instruction_lines):
            return "copies_instruction"
        if self.asks and not text.endswith(_QUESTION_ENDS):
            return "not_a_question"
        if len(text) < self.min_chars:
            return "too_short"
        if len(text) > self.max_chars:
            return "too_long"
        if self.latin and _latin_share(text) < 0.9:
            return "wrong_language"
        if _letter_share(text) < self.min_letter_share:
            return "not_a_sentence"
        words = norm.split()
        if len(words) >= 6 and max(words.count(w) for w in set(words)) / len(words) > 0.5:
            return "repetitive"
        return None


# -- text2sql ------------------------------------------------------------------------------------
def sql_nonempty(sql: str, schema_sql: str, *, n_databases: int = 3, timeout_s: float = 2.0, seed: int = 0) -> str | None:
    """None when ``sql`` returns at least one row on one of ``n_databases`` generated databases.

    Runs only in the scoring sandbox (:mod:`distil_platform.evaluation.scoring.sql.sandbox`: in-memory databases,
    read-only authorizer, a time limit per query, row and value-size caps), so a runaway recursive
    CTE ends with ``sql_timeout`` within ``timeout_s``.
    """
    from distil_platform.evaluation.scoring.sql.database import build_database, extract_literals
    from distil_platform.evaluation.scoring.sql.sandbox import SQLSandboxError, SQLSchemaError, run_sandboxed

    try:
        literals = extract_literals(sql)
    except Exception:  # noqa: BLE001 - literals only steer the generated data; none is fine
        literals = []
    for index in range(n_databases):
        try:
            conn = build_database(schema_sql, literals, seed=seed, index=index)
        except SQLSchemaError:
            return "sql_schema_unusable"
        try:
            _, rows = run_sandboxed(conn, sql, timeout_s=timeout_s)
        except SQLSandboxError as exc:
            return "sql_timeout" if str(exc).startswith("timed out") else "sql_sandbox_error"
        finally:
            conn.close()
        if rows:
            return None
    return "sql_empty_result"


# -- tool calls ----------------------------------------------------------------------------------
# File extensions a request names by the file's stem ("the README" -> README.md).
_EXTENSIONS = frozenset({"md", "txt", "rst", "json", "yaml", "yml", "toml", "ini", "cfg", "lock", "js", "ts",
                         "py", "sh", "html", "css", "csv", "xml", "log", "env", "conf"})
_TOKEN_RE = re.compile(r"[^\W_]+")


def _grounded(value: Any, text_raw: str, text_norm: str) -> bool:
    if isinstance(value, str):
        v_norm = _norm(value)
        if not v_norm:  # punctuation only, e.g. "." (stage everything): nothing to look up
            return True
        if value.casefold() in text_raw:
            return True
        if f" {v_norm} " in f" {text_norm} " or f" {v_norm.replace('_', ' ')} " in f" {text_norm} ":
            return True
        # Every word of the value is a word of the request (paths by their parts, files by their stem).
        words = set(_TOKEN_RE.findall(text_raw))
        content = [t for t in _TOKEN_RE.findall(value.casefold()) if t not in _EXTENSIONS]
        return bool(content) and all(t in words for t in content)
    if isinstance(value, (int, float)):
        number = str(int(value)) if float(value).is_integer() else str(value)
        return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text_raw) is not None
    return True


def ungrounded_arguments(spec: TaskSpec, row: dict[str, Any]) -> list[str]:
    """Names of the call's arguments whose value is neither in the question nor the default.

    Checked: free strings (not enums: "switch on" grounds ``state: "on"`` only by meaning), numbers
    and arrays of them. Booleans and enum values are left to the agreement filter.
    """
    from distil_platform.tasks.validation import parse_tool_call, tool_parameters_schema

    call = parse_tool_call(str(row.get("answer") or ""))
    if call is None:
        return []
    schema = tool_parameters_schema(spec, call["name"]) or {}
    props = schema.get("properties") or {}
    text = _history_text(str(row.get("question") or ""))
    text_raw, text_norm = text.casefold(), _norm(text)
    bad = []
    for name, value in call["parameters"].items():
        prop = props.get(name) or {}
        if "default" in prop and value == prop["default"]:
            continue
        if isinstance(value, bool) or "enum" in prop:
            continue
        values = value if isinstance(value, list) else [value]
        if any(not _grounded(v, text_raw, text_norm) for v in values if not isinstance(v, bool)):
            bad.append(name)
    return bad


def contradicted_enums(spec: TaskSpec, row: dict[str, Any]) -> list[str]:
    """Names of the call's enum arguments whose value the question contradicts: the question names
    one or more of that parameter's values (as words: ``living_room`` as "living room") and not the
    one chosen ("unlock the back door" with ``door: "front"``). An enum value the question does not
    name at all is not judged here ("switch on" grounds ``state: "on"``, "lights out" grounds
    ``"off"`` only by meaning)."""
    from distil_platform.tasks.validation import parse_tool_call, tool_parameters_schema

    call = parse_tool_call(str(row.get("answer") or ""))
    if call is None:
        return []
    props = (tool_parameters_schema(spec, call["name"]) or {}).get("properties") or {}
    # The request being answered: earlier turns name the values of earlier calls ("unlock the front
    # door", then "what's the status of everything?" is device_type "all", not "door").
    text = f" {_norm(question_text(str(row.get('question') or ''))).replace('_', ' ')} "
    bad = []
    for name, value in call["parameters"].items():
        enum = (props.get(name) or {}).get("enum") or []
        if not isinstance(value, str) or value not in enum:
            continue
        named = [e for e in enum if isinstance(e, str) and _norm(e) and f" {_norm(e).replace('_', ' ')} " in text]
        if named and value not in named:
            bad.append(name)
    return bad


# -- answer agreement ----------------------------------------------------------------------------
def answers_agree(spec: TaskSpec, row: dict[str, Any], second: str | None, *, text_threshold: float = 0.5) -> bool:
    """Whether ``second`` (an independent answer to ``row``'s question) is correct against the row's
    answer under the task's own metric: exact label, tool-call equivalence, SQL execution match
    (sandboxed); for judge-scored tasks token F1 >= ``text_threshold`` (no judge is called here)."""
    if second is None or not str(second).strip():
        return False
    from distil_platform.evaluation.scoring import score_prediction

    try:
        result = score_prediction(spec, str(second), row, judge=None)
    except Exception:  # noqa: BLE001 - a reference that cannot be scored does not agree
        return False
    if spec.metric_name in ("llm_judge", "token_f1"):
        return result.score >= text_threshold
    return result.score >= 1.0
