"""A teacher's replies: failed requests and billed non-answers (truncated, empty), the candidate rows
parsed out of a reply's text, and the validity check of one candidate (schema and prompt template)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from distil_platform.tasks.prompts import build_training_messages
from distil_platform.tasks.spec import TaskSpec
from distil_platform.teacher.requests import CONTEXT_BOUND_TYPES

TRUNCATED_REPLY, EMPTY_REPLY = "truncated_reply", "empty_reply"


@dataclass(frozen=True)
class Reply:
    """A model reply with what the stage needs to judge it (``llm.ChatResult`` has the same fields)."""

    text: str | None
    finish_reason: str | None = None
    error: str | None = None


def reply_text(reply: Any) -> str | None:
    """The text of a reply (a string, None, or an object with ``text``)."""
    if reply is None or isinstance(reply, str):
        return reply
    return getattr(reply, "text", None)


def reply_failed(reply: Any) -> bool:
    """The request got no reply (None, or an object with an ``error``)."""
    if reply is None or isinstance(reply, str):
        return reply is None
    return getattr(reply, "error", None) is not None


def unusable_reply(reply: Any) -> str | None:
    """``truncated_reply`` (cut off at max_tokens) or ``empty_reply`` (answered with no text) for a
    billed reply that is no answer; None for anything else (failed requests and plain strings,
    which carry no finish reason, included)."""
    if reply is None or isinstance(reply, str) or reply_failed(reply):
        return None
    if getattr(reply, "finish_reason", None) == "length":
        return TRUNCATED_REPLY
    if not (reply_text(reply) or "").strip() and not getattr(reply, "tool_calls", None):
        return EMPTY_REPLY
    return None


def exception_reason(kind: str, exc: BaseException) -> str:
    """A countable rejection reason for an exception raised on one reply or row."""
    return f"{kind} ({type(exc).__name__})"


# -- parsing -----------------------------------------------------------------------------------
_FENCE_RE = re.compile(r"```[a-zA-Z]*\n?")


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON value in ``text`` (JSON lines, a JSON list, or objects in prose)."""
    text = _FENCE_RE.sub("", text)
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while i < len(text):
        start = min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(value, list):
            out.extend(v for v in value if isinstance(v, dict))
        elif isinstance(value, dict) and "question" not in value and "answer" not in value and any(
                isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in value.values()):
            # An object wrapper ({"examples": [...]}), as endpoints that need an object root write.
            for v in value.values():
                if isinstance(v, list):
                    out.extend(x for x in v if isinstance(x, dict))
        elif isinstance(value, dict):
            out.append(value)
        i = end
    return out


def parse_teacher_output(spec: TaskSpec, text: str | None, context: str = "") -> tuple[list[dict], Counter]:
    """Candidate rows (``question``, ``answer``, ``context``) from one teacher reply, plus the
    count of objects dropped while parsing, by reason."""
    rejected: Counter = Counter()
    if not text or not text.strip():
        rejected["empty_response"] += 1
        return [], rejected
    objects = _json_objects(text)
    if not objects:
        rejected["no_json_in_response"] += 1
        return [], rejected
    rows = []
    for obj in objects:
        question, answer = obj.get("question"), obj.get("answer")
        if question is None or answer is None or (isinstance(question, str) and not question.strip()):
            rejected["missing_question_or_answer"] += 1
            continue
        if spec.type == "tool_calling":
            if isinstance(answer, str):
                try:
                    answer = json.loads(answer)
                except json.JSONDecodeError:
                    rejected["answer_not_json"] += 1
                    continue
            answer_text = json.dumps(answer, ensure_ascii=False)
        elif isinstance(answer, (dict, list)):
            answer_text = json.dumps(answer, ensure_ascii=False)
        else:
            answer_text = str(answer).strip()
        if isinstance(question, list):  # a chat history (multi-turn tool calling)
            question = json.dumps(question, ensure_ascii=False)
        row_context = context if spec.type in CONTEXT_BOUND_TYPES else str(obj.get("context") or "")
        rows.append({"question": str(question).strip(), "answer": answer_text, "context": row_context})
    return rows, rejected


# -- validation --------------------------------------------------------------------------------
def check_candidate(spec: TaskSpec, row: dict[str, Any]) -> str | None:
    """Rejection reason for one candidate, or None when it is a valid training example. A validator
    that raises on the row (e.g. ``RecursionError`` on deeply nested SQL) is a rejection too."""
    from distil_platform.tasks.validation import validate_row

    if row.get("reject_reason"):  # a billed non-answer or an unparseable label (self-training)
        return str(row["reject_reason"])
    try:
        reason = validate_row(spec, row)
    except Exception as exc:  # noqa: BLE001 - any failure on one row rejects that row, never the stage
        return f"{exception_reason('validation_error', exc)}: {str(exc)[:120]}"
    if reason:
        return reason
    try:
        build_training_messages(spec, row)
    except Exception as exc:  # noqa: BLE001 - any failure to render is a rejection reason
        return f"does not render through the prompt template ({type(exc).__name__})"
    return None


def reason_key(reason: str) -> str:
    """Group free-text reasons into countable keys (text before the first colon, truncated)."""
    return reason.split(":", 1)[0].strip()[:80] or "invalid"
