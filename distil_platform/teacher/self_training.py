"""Self-training on unlabelled in-domain text: a model labels real messages, confident labels become rows.

For tasks that ship unlabelled messages (``data.unstructured_file``: banking77 and ecommerce ship
1,000 each in the public data), a labeller — the profile's teacher, asked with the student's own
prompt at temperature 0, no demonstrations — answers each message. The answers become candidate
rows (``origin="self_training"``) with the answer's confidence: the probability of the generated
answer, ``exp(sum of token logprobs)``, where the server returns logprobs (vLLM, OpenAI-style
endpoints; ``transformers serve`` does not, and then no row is dropped for confidence). The rows go
through the same validation, quality filters (including ``min_confidence``), deduplication and
decontamination as a teacher's (``synthesis.synthesize``).

Only task types whose question is the message itself apply (classification, tool calling); for
context-bound tasks the questions would have to be written, which is the teacher's job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from distil_platform.tasks.spec import TaskSpec

SELF_TRAINING_TYPES = ("classification", "tool_calling")


def answer_confidence(logprobs: Sequence[dict[str, Any]] | None) -> float | None:
    """Probability of the whole generated answer from its tokens' logprobs (None when unknown)."""
    if not logprobs:
        return None
    total = 0.0
    for token in logprobs:
        value = token.get("logprob") if isinstance(token, dict) else None
        if value is None:
            return None
        total += float(value)
    return math.exp(total)


def unlabelled_texts(unstructured: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"id", "question"}`` per unlabelled row with text (its ``question`` or ``context`` column)."""
    out = []
    for i, row in enumerate(unstructured):
        text = str(row.get("question") or row.get("context") or "").strip()
        if text:
            out.append({"id": str(row.get("id") or f"u{i:05d}"), "question": text, "context": ""})
    return out


def _answer_text(spec: TaskSpec, answer: str) -> str:
    if spec.type == "classification":
        from distil_platform.evaluation.scoring.classification import normalize_label

        by_norm = {normalize_label(label): label for label in spec.labels or {}}
        return by_norm.get(normalize_label(answer), answer.strip())
    from distil_platform.evaluation.scoring.toolcalls import parse_tool_call

    call = parse_tool_call(answer)
    if call is None:
        return answer.strip()
    return json.dumps(call, ensure_ascii=False)


def label_rows(
    spec: TaskSpec,
    texts: Sequence[dict[str, Any]],
    answers: Sequence[str | None],
    confidences: Sequence[float | None] | None = None,
    *,
    labeller: str = "",
    unusable: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """Candidate rows from the labeller's ``answers`` to ``texts`` (same order). A label is mapped
    onto the task's label names the way scoring reads it (case, quotes, fences); a tool call is
    re-serialised from the first call in the text. Missing answers become empty rows, which
    validation counts as ``empty_answer``. ``unusable``: per answer, why the reply is no label
    (``replies.unusable_reply``: ``truncated_reply`` / ``empty_reply``) or None; such a row is
    rejected with that reason (``reject_reason``), as is one whose answer cannot be parsed at all
    (``parse_error (<exception>)``)."""
    if spec.type not in SELF_TRAINING_TYPES:
        raise ValueError(f"{spec.name}: self-training applies to {', '.join(SELF_TRAINING_TYPES)} tasks, not {spec.type}")
    if len(answers) != len(texts):
        raise ValueError(f"{len(answers)} answers for {len(texts)} texts")
    confidences = list(confidences) if confidences is not None else [None] * len(texts)
    unusable = list(unusable) if unusable is not None else [None] * len(texts)
    rows = []
    for text, answer, confidence, reason in zip(texts, answers, confidences, unusable):
        label = ""
        if answer and not reason:
            try:
                label = _answer_text(spec, answer)
            except Exception as exc:  # noqa: BLE001 - a poisonous answer rejects its row, never the stage
                reason, label = f"parse_error ({type(exc).__name__})", str(answer)[:200]
        row = {
            "question": text["question"], "answer": label,
            "context": "", "origin": "self_training", "teacher_model": labeller, "seed_ids": "", "topic": "",
            "prompt_hash": "", "grounding_ids": text.get("id", ""), "confidence": confidence,
        }
        if reason:
            row["reject_reason"] = reason
        rows.append(row)
    return rows
