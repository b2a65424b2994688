"""Answer confidence: how sure the served student is of one answer, from the token log-probabilities
it returns (vLLM's OpenAI server with ``logprobs``; a backend that returns none gives None). Routing
cascades escalate the unsure answers (``economics.routing``).

Rules, per task type (:func:`answer_confidence`):

- classification: the probability of the emitted label, ``exp(sum of the answer's token
  logprobs)`` (the chain-rule probability of that label's token sequence; it is the label's
  probability under the model, up to other tokenisations of the same label);
- text2sql and tool calling: the weakest token's probability, ``exp(min logprob)``: one wrong
  token (a column name, an argument value) breaks execution match or tool-call equivalence;
- open-book QA and generation: the geometric-mean token probability, ``exp(mean logprob)``
  (length-normalised: long answers have many legitimately uncertain tokens).

Only the answer's tokens count: a ``<think>…</think>`` block, whitespace-only tokens and special
tokens (``<|im_end|>``) are left out. An item without confidence (failed request, no logprobs) is
always escalated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_SPECIAL_TOKEN = re.compile(r"^<\|[^|]*\|>$|^</?s>$")

CONFIDENCE_RULES = {
    "classification": "label probability exp(Σ logprob)",
    "text2sql": "weakest-token probability exp(min logprob)",
    "tool_calling": "weakest-token probability exp(min logprob)",
    "open_book_qa": "geometric-mean token probability exp(mean logprob)",
    "generation": "geometric-mean token probability exp(mean logprob)",
}


def _answer_logprobs(tokens: Sequence[Mapping[str, Any]]) -> list[float]:
    """Logprobs of the answer's tokens: after a ``</think>`` (if any), without whitespace-only or
    special tokens."""
    texts = [str(t.get("token") or "") for t in tokens]
    start = 0
    joined = ""
    for i, text in enumerate(texts):
        joined += text
        if "</think>" in joined:
            start, joined = i + 1, ""
    out = []
    for tok, text in zip(tokens[start:], texts[start:]):
        if not text.strip() or _SPECIAL_TOKEN.match(text.strip()):
            continue
        lp = tok.get("logprob")
        if lp is None:
            continue
        lp = float(lp)
        if math.isnan(lp):
            continue
        out.append(max(lp, -1e4))  # vLLM reports -9999.0 for impossible tokens; -inf would poison sums
    return out


def answer_confidence(task_type: str, logprobs: Sequence[Mapping[str, Any]] | None) -> float | None:
    """Confidence in [0, 1] of one answer from its tokens' ``logprobs.content`` (see the module
    docstring for the rule per task type). None when there are no logprobs or no answer tokens."""
    if not logprobs:
        return None
    values = _answer_logprobs(logprobs)
    if not values:
        return None
    if task_type == "classification":
        return math.exp(sum(values))
    if task_type in ("text2sql", "tool_calling"):
        return math.exp(min(values))
    return math.exp(sum(values) / len(values))


def confidence_fn(task_type: str) -> Callable[[Any], float | None]:
    """``ChatResult -> confidence`` for :func:`distil_platform.evaluation.evaluate.client_answer_fn`."""
    def confidence(result: Any) -> float | None:
        return answer_confidence(task_type, getattr(result, "logprobs", None))

    return confidence
