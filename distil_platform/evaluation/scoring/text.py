"""Text normalisation shared by the metrics, and SQuAD-style token F1.

Model output is untrusted: every helper here accepts any object and never raises on it.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_WS_RE = re.compile(r"\s+")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def as_text(value: object) -> str:
    """``value`` as a string; None becomes the empty string (a model that returned nothing)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every Markdown code fence in ``text``; an unclosed fence runs to the end."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]


def strip_code_fences(text: str) -> str:
    """The body of the first code fence when ``text`` has one, else ``text`` unchanged."""
    blocks = fenced_blocks(text)
    return blocks[0][1] if blocks else text


def collapse_whitespace(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def squad_normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = as_text(text).lower().translate(_PUNCT_TABLE)
    return collapse_whitespace(_ARTICLES_RE.sub(" ", text))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between ``prediction`` and ``reference`` in [0, 1].

    Both sides are normalised with :func:`squad_normalize` and split on whitespace; the overlap is
    counted as a multiset. Two empty answers score 1.0; exactly one empty answer scores 0.0. This is
    the documented fallback for open-book QA and generation tasks when no judge is configured.
    """
    pred_tokens = squad_normalize(prediction).split()
    ref_tokens = squad_normalize(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = Counter(pred_tokens) & Counter(ref_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)
