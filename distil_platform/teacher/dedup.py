"""Overlap checks on candidate rows: deduplication (exact and near, among the rows and against the
seeds) and decontamination against the test set on the fields that can leak."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distil_platform.tasks.spec import TaskSpec

_WS_RE = re.compile(r"\s+")
_PUNCT_RE = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    return _WS_RE.sub(" ", _PUNCT_RE.sub(" ", str(text).lower())).strip()


def exact_key(row: dict[str, Any]) -> str:
    """Same normalised question and context = the same example (whatever the answer says)."""
    raw = normalise(row["question"]) + "\x1f" + normalise(row.get("context") or "")
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class DedupResult:
    kept: list[dict[str, Any]]
    exact_duplicates: int = 0
    near_duplicates: int = 0
    seed_duplicates: int = 0  # of the above, how many duplicated a seed


def deduplicate(
    rows: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]] = (), near_threshold: float = 0.9
) -> DedupResult:
    """Drop exact (normalised hash) and near duplicates (rapidfuzz ratio >= ``near_threshold``)
    among ``rows`` and against ``seeds``; first occurrence wins. ``near_threshold`` >= 1 disables the
    near-duplicate pass, which applies to teacher rows only (see below)."""
    from rapidfuzz import fuzz, process

    seed_keys = {exact_key(s) for s in seeds}
    seen = set(seed_keys)
    # Near-duplicates are only meaningful within one context (same schema / passage).
    pool: dict[str, list[str]] = {}
    seed_pool: dict[str, set[str]] = {}
    for s in seeds:
        ctx = normalise(s.get("context") or "")
        q = normalise(s["question"])
        pool.setdefault(ctx, []).append(q)
        seed_pool.setdefault(ctx, set()).add(q)
    result = DedupResult(kept=[])
    cutoff = near_threshold * 100
    for row in rows:
        key = exact_key(row)
        if key in seen:
            result.exact_duplicates += 1
            result.seed_duplicates += key in seed_keys
            continue
        ctx, q = normalise(row.get("context") or ""), normalise(row["question"])
        candidates = pool.setdefault(ctx, [])
        # Literal-swap rows are near-copies of a seed by construction (one value changed, and the
        # answer with it): only exact duplicates of them are dropped.
        near_check = row.get("origin", "teacher") == "teacher"
        if near_threshold < 1 and candidates and near_check:
            match = process.extractOne(q, candidates, scorer=fuzz.ratio, score_cutoff=cutoff)
            if match is not None:
                result.near_duplicates += 1
                result.seed_duplicates += match[0] in seed_pool.get(ctx, ())
                continue
        seen.add(key)
        candidates.append(q)
        result.kept.append(row)
    return result


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    if not words:
        return set()
    n = min(n, len(words))  # a question shorter than n words is one n-gram
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DecontaminationResult:
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)


def decontaminate(
    rows: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    *,
    n: int = 8,
    threshold: float = 0.5,
    seeds: Sequence[dict[str, Any]] = (),
    fields: Sequence[str] = ("question",),
    near_threshold: float | None = None,
) -> DecontaminationResult:
    """Drop rows whose ``fields`` (default the question) share more than ``threshold`` of their word
    ``n``-grams with the same field of the test rows, or equal one after normalisation.

    N-grams that also occur in the seeds' field are boilerplate of the task's format (e.g. a fixed
    instruction), not leakage, so they are ignored on both sides. Tasks whose question is a fixed
    instruction leak through the ``context`` (the code of a docstring task): see
    :func:`decontamination_fields`. With ``near_threshold`` a row whose field has a rapidfuzz ratio
    >= ``near_threshold`` with a test row's is a near-copy and dropped too (short questions have
    fewer than ``n`` words, so the n-gram test alone only catches exact copies of them).
    """
    from rapidfuzz import fuzz, process

    checks = []
    for name in fields:
        boilerplate: set[tuple[str, ...]] = set()
        for s in seeds:
            boilerplate |= ngrams(s.get(name) or "", n)
        test_grams: set[tuple[str, ...]] = set()
        test_exact = set()
        for t in test:
            test_grams |= ngrams(t.get(name) or "", n) - boilerplate
            if normalise(t.get(name) or ""):
                test_exact.add(normalise(t.get(name) or ""))
        checks.append((name, boilerplate, test_grams, test_exact, sorted(test_exact)))
    cutoff = None if near_threshold is None or near_threshold >= 1 else near_threshold * 100
    result = DecontaminationResult(kept=[])
    for row in rows:
        worst, hit = 0.0, False
        for name, boilerplate, test_grams, test_exact, test_list in checks:
            grams = ngrams(row.get(name) or "", n) - boilerplate
            overlap = len(grams & test_grams) / len(grams) if grams else 0.0
            worst = max(worst, overlap)
            text = normalise(row.get(name) or "")
            hit = hit or text in test_exact or overlap > threshold
            if not hit and cutoff is not None and text and test_list:
                hit = process.extractOne(text, test_list, scorer=fuzz.ratio, score_cutoff=cutoff) is not None
        if hit:
            result.dropped.append({**row, "test_overlap": round(worst, 3)})
        else:
            result.kept.append(row)
    return result


def decontamination_fields(spec: TaskSpec, setting: str = "auto") -> tuple[str, ...]:
    """The fields that can leak test items: ``auto`` = the context for generation tasks with one
    (docstring: the question is a fixed instruction, the code is the content), else the question.
    Context-bound tasks (text2sql, open-book QA) share contexts with the test set by design."""
    if setting == "both":
        return ("question", "context")
    if setting in ("question", "context"):
        return (setting,)
    return ("context",) if spec.type == "generation" and "{context}" in spec.prompt_template else ("question",)
