"""LLM-as-judge scoring: a good/bad verdict from a judge model under the task's rubric.

The judge is any callable ``judge(messages: list[dict]) -> str`` returning the judge model's text
(the platform wraps its LLM client; tests inject a local or recorded model).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from distil_platform.evaluation.scoring.text import as_text, strip_code_fences

Judge = Callable[[list[dict[str, str]]], str]

JUDGE_SYSTEM_PROMPT = """You grade one answer produced by a model against a reference answer.

Grading rubric:
{rubric}

Judge only whether the model answer is acceptable under the rubric, using the reference as the
ground truth. Wording may differ from the reference; facts and required content may not.
Reply with exactly one word on the last line: GOOD or BAD."""

JUDGE_USER_PROMPT = """Question:
{question}
{context_block}
Reference answer:
{reference}

Model answer:
{prediction}

Verdict (GOOD or BAD):"""

# One verdict per line, optionally labelled and decorated: "GOOD", "Verdict: **bad**.", "[GOOD]".
_VERDICT_LINE_RE = re.compile(
    r"^\s*(?:(?:final\s+)?(?:verdict|answer|grade|judgement|judgment)\s*[:=-]\s*)?"
    r"[\*\[\(\"'`]*\s*(good|bad)\s*[\*\]\)\"'`]*\s*[.!]?\s*$",
    re.IGNORECASE,
)
# A labelled verdict anywhere in a line ("..., so my verdict: BAD") also counts, so a judge that
# changes its mind mid-reply is caught as contradictory.
_LABELLED_VERDICT_RE = re.compile(r"\bverdict\s*[:=]\s*[\*\[\(\"'`]*\s*(good|bad)\b", re.IGNORECASE)
_VERDICT_KEYS = ("verdict", "grade", "answer", "judgement", "judgment", "label")


def build_judge_messages(
    prediction: str, reference: str, question: str, rubric: str, context: str = ""
) -> list[dict[str, str]]:
    context_block = f"\nContext:\n{context.strip()}\n" if context and context.strip() else ""
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT.format(rubric=rubric.strip())},
        {
            "role": "user",
            "content": JUDGE_USER_PROMPT.format(
                question=question.strip(),
                context_block=context_block,
                reference=reference.strip(),
                prediction=prediction.strip(),
            ),
        },
    ]


def parse_verdict(text: Any) -> float:
    """1.0 for GOOD, 0.0 for BAD, NaN when the reply does not state exactly one verdict.

    Strict on purpose: the verdict must be a JSON object ``{"verdict": "good"|"bad"}`` or stand
    alone on a line (optionally as ``Verdict: X``, in bold/brackets/quotes, with a final period);
    a labelled ``verdict: X`` inside a line also counts. A reply that states both verdicts, or only
    mentions one inside a sentence ("the answer is not good"), is unparseable.
    """
    text = strip_code_fences(as_text(text)).strip()
    if not text:
        return math.nan
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            value = None
        if isinstance(value, dict):
            lowered = {str(k).lower(): v for k, v in value.items()}
            for key in _VERDICT_KEYS:
                verdict = lowered.get(key)
                if isinstance(verdict, str) and verdict.strip().lower() in ("good", "bad"):
                    return 1.0 if verdict.strip().lower() == "good" else 0.0
            return math.nan
    verdicts = {m.group(1).lower() for line in text.splitlines() if (m := _VERDICT_LINE_RE.match(line))}
    verdicts |= {m.group(1).lower() for m in _LABELLED_VERDICT_RE.finditer(text)}
    if len(verdicts) != 1:
        return math.nan
    return 1.0 if verdicts.pop() == "good" else 0.0


def llm_judge(
    prediction: str,
    reference: str,
    question: str,
    rubric: str,
    *,
    judge: Judge,
    context: str = "",
) -> float:
    """Asks ``judge`` whether ``prediction`` is acceptable under ``rubric`` given the reference.

    Returns 1.0 (good), 0.0 (bad) or NaN when the verdict is unparseable (callers count and exclude
    those). An empty prediction scores 0.0 without calling the judge. Errors raised by the judge
    itself (network, budget) propagate: they are not a verdict.
    """
    if not rubric or not str(rubric).strip():
        raise ValueError("llm_judge needs a non-empty rubric")
    if as_text(reference).strip() == "":
        raise ValueError("llm_judge: reference answer is empty")
    prediction = as_text(prediction)
    if not prediction.strip():
        return 0.0
    messages = build_judge_messages(
        prediction, as_text(reference), as_text(question), rubric, as_text(context)
    )
    return parse_verdict(judge(messages))
