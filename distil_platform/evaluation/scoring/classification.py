"""Exact-match scoring for classification tasks."""

from __future__ import annotations

import json
import re

from distil_platform.evaluation.scoring.text import as_text, collapse_whitespace, strip_code_fences

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
# Keys under which models commonly wrap a label in JSON, e.g. {"label": "refund"}.
_LABEL_KEYS = ("label", "class", "category", "intent", "answer", "prediction")
_QUOTES = "\"'`"


def _unwrap_json_label(text: str) -> str | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    lowered = {str(k).lower(): v for k, v in value.items()}
    for key in _LABEL_KEYS:
        if isinstance(lowered.get(key), str):
            return lowered[key]
    return None


def normalize_label(text: object) -> str:
    """The canonical form of a class label, applied identically to prediction and reference.

    Rules, in order:

    1. the body of the first Markdown code fence, when there is one;
    2. the content of the first ``<answer>...</answer>`` tag, when there is one;
    3. the string under ``label`` / ``class`` / ``category`` / ``intent`` / ``answer`` /
       ``prediction`` when the text is a JSON object such as ``{"label": "x"}``;
    4. repeatedly strip surrounding whitespace, one pair of matching surrounding quotes or
       backticks, and trailing periods;
    5. case-fold and collapse inner runs of whitespace to one space.

    Anything else (a sentence around the label, "Label: x") is left as is and will not match.
    """
    text = strip_code_fences(as_text(text)).strip()
    tag = _ANSWER_TAG_RE.search(text)
    if tag:
        text = tag.group(1).strip()
    unwrapped = _unwrap_json_label(text)
    if unwrapped is not None:
        text = unwrapped
    while True:
        before = text
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
            text = text[1:-1]
        text = text.rstrip(".")
        if text == before:
            break
    return collapse_whitespace(text.casefold())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when ``prediction`` and ``reference`` are the same label after :func:`normalize_label`.

    Never raises on the prediction (None or garbage scores 0.0); raises ``ValueError`` when the
    reference normalises to the empty string, since such a row cannot be scored.
    """
    ref = normalize_label(reference)
    if not ref:
        raise ValueError(f"exact_match: reference label {reference!r} is empty after normalisation")
    return float(normalize_label(prediction) == ref)


def matches_known_label(prediction: str, labels: list[str] | dict[str, str] | None) -> bool:
    """Whether ``prediction`` normalises to one of ``labels`` (the model produced *a* valid label)."""
    if not labels:
        return bool(normalize_label(prediction))
    return normalize_label(prediction) in {normalize_label(label) for label in labels}
