"""Summaries of scored results (``evaluation.evaluate``'s :class:`ItemResult` rows): per-item means
over repeats, the score with its interval and the reply-outcome counts (:class:`EvalSummary`), the
worst items, and the paired comparison of two models on the items both scored by the same metric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distil_platform.evaluation.evaluate import OUTCOME_EMPTY, OUTCOME_SCORING_ERROR, ItemResult


def item_means(results: Sequence[ItemResult], strict: bool = False) -> dict[str, float]:
    """Mean score per item over repeats (unscorable repeats left out; items with none dropped)."""
    acc: dict[str, list[float]] = {}
    for r in results:
        value = r.score_strict if strict else r.score
        if value is not None:
            acc.setdefault(r.item_id, []).append(value)
    return {k: sum(v) / len(v) for k, v in acc.items() if v}


def repeat_means(results: Sequence[ItemResult]) -> list[float]:
    by_repeat: dict[int, list[float]] = {}
    for r in results:
        if r.score is not None:
            by_repeat.setdefault(r.repeat, []).append(r.score)
    return [sum(v) / len(v) for _, v in sorted(by_repeat.items()) if v]


@dataclass
class EvalSummary:
    score: float
    ci_low: float
    ci_high: float
    n: int
    repeats: int
    repeat_mean: float
    repeat_std: float
    parse_failures: int
    request_errors: int
    unscorable: int
    score_strict: float | None = None
    mean_prompt_tokens: float | None = None
    mean_completion_tokens: float | None = None
    mean_latency_s: float | None = None
    # Reply outcomes (module docstring): cut off at max_tokens (finish_reason length, with or without
    # text), empty (no text: 0 or unscorable; a reply can be both), timed-out attempts, scorer exceptions
    # (unscorable); finish reasons seen; mean reported reasoning tokens.
    truncated: int = 0
    empty: int = 0
    timeouts: int = 0
    scoring_errors: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    mean_reasoning_tokens: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


def _mean(values: Sequence[float | int | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(results: Sequence[ItemResult], *, seed: int = 0) -> EvalSummary:
    """Item-level score with a 95% bootstrap CI over items (repeats averaged per item first), and
    mean ± std over repeats."""
    from distil_platform.economics.stats import mean_std, score_interval

    per_item = item_means(results)
    empty = sum(1 for r in results if r.outcome == OUTCOME_EMPTY)
    truncated = sum(1 for r in results if r.finish_reason == "length")
    scoring_errors = sum(1 for r in results if r.outcome == OUTCOME_SCORING_ERROR)
    if not per_item:
        raise ValueError(
            f"no scorable results to summarise: {len(results)} replies, {empty} empty, {truncated} cut off at "
            f"max_tokens, {scoring_errors} scoring errors, {sum(1 for r in results if r.score is None)} unscorable"
            + (" (empty replies: raise the model's max_tokens or lower its reasoning_effort)" if empty else ""))
    values = list(per_item.values())
    score = sum(values) / len(values)
    ci = score_interval(per_item, seed=seed)  # Wilson for 0/1 item scores, BCa bootstrap otherwise
    lo, hi = float(ci.low), float(ci.high)
    reps = repeat_means(results)
    rep_mean, rep_std = mean_std(reps) if reps else (score, 0.0)
    strict_items = item_means(results, strict=True)
    return EvalSummary(
        score=score,
        ci_low=lo,
        ci_high=hi,
        n=len(values),
        repeats=len({r.repeat for r in results}),
        repeat_mean=float(rep_mean),
        repeat_std=float(rep_std),
        parse_failures=sum(1 for r in results if not r.parse_ok),
        request_errors=sum(1 for r in results if r.error is not None
                           or (r.prediction is None and r.outcome != OUTCOME_EMPTY)),
        unscorable=sum(1 for r in results if r.score is None),
        score_strict=(sum(strict_items.values()) / len(strict_items)) if strict_items else None,
        mean_prompt_tokens=_mean([r.prompt_tokens for r in results]),
        mean_completion_tokens=_mean([r.completion_tokens for r in results]),
        mean_latency_s=_mean([r.latency_s for r in results]),
        truncated=truncated,
        empty=empty,
        timeouts=sum(r.timeouts or 0 for r in results),
        scoring_errors=scoring_errors,
        finish_reasons=dict(sorted(Counter(r.finish_reason or "unknown" for r in results
                                           if r.error is None).items())),
        mean_reasoning_tokens=_mean([r.reasoning_tokens for r in results]),
    )


def worst_items(results: Sequence[ItemResult], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` lowest-scoring items (mean over repeats), parse failures first on ties."""
    per_item = item_means(results)
    first: dict[str, ItemResult] = {}
    parse_fail: dict[str, int] = {}
    for r in results:
        first.setdefault(r.item_id, r)
        parse_fail[r.item_id] = parse_fail.get(r.item_id, 0) + (not r.parse_ok)
    order = sorted(first, key=lambda i: (per_item.get(i, -1.0), -parse_fail[i], i))
    rows = []
    for item_id in order[:k]:
        r = first[item_id]
        rows.append({"item_id": item_id, "score": round(per_item[item_id], 3) if item_id in per_item else None,
                     "parse_ok": r.parse_ok, "question": r.question, "prediction": r.prediction,
                     "reference": r.reference, "detail": r.detail})
    return rows


def item_metrics(results: Sequence[ItemResult]) -> dict[str, str | None]:
    """The metric of each item's scored repeats (None: its repeats were scored by different metrics)."""
    seen: dict[str, set[str]] = {}
    for r in results:
        if r.score is not None:
            seen.setdefault(r.item_id, set()).add(r.metric)
    return {k: next(iter(v)) if len(v) == 1 else None for k, v in seen.items()}


# The fields of a paired comparison a report keeps (benchmarks' JSON, cross-run pairings).
PAIRED_KEYS = ("n", "diff", "ci_low", "ci_high", "mcnemar_p", "test", "verdict", "verdict_note", "margin",
               "item_wins", "item_ties", "item_losses")


def paired_comparison(student: Sequence[ItemResult], baseline: Sequence[ItemResult],
                      **compare_kwargs: Any) -> dict[str, Any]:
    """Student vs baseline on the items both scored **by the same metric** (repeats averaged per
    item): ``stats.compare``'s difference (student - baseline), interval, test and verdict, and
    per-item wins / ties / losses of the student. ``compare_kwargs`` go to ``stats.compare``
    (e.g. ``margin``).

    Scores of different metrics (an LLM judge's verdict vs the token-F1 fallback; two judges) are
    never paired: such items are left out (``n_metric_mismatch``, with the metric pairs in
    ``metric_mismatch``). When the same-metric pairs still span several metrics, each gets its own
    comparison under ``by_metric`` and the top-level result is that of the metric with the most
    pairs (named by ``metric``)."""
    from distil_platform.economics.stats import compare

    s, b = item_means(student), item_means(baseline)
    sm, bm = item_metrics(student), item_metrics(baseline)
    common = sorted(set(s) & set(b))
    groups: dict[str, list[str]] = {}
    mismatch: list[str] = []
    for i in common:
        if sm.get(i) is not None and sm.get(i) == bm.get(i):
            groups.setdefault(sm[i], []).append(i)
        else:
            mismatch.append(i)
    base: dict[str, Any] = {"n_common": len(common), "n_metric_mismatch": len(mismatch)}
    if mismatch:
        base["metric_mismatch"] = sorted({f"{sm.get(i) or '?'} vs {bm.get(i) or '?'}" for i in mismatch})
    if not groups:
        return {"n_paired": 0, **base}

    def one(items: list[str]) -> dict[str, Any]:
        out = dict(compare([s[i] for i in items], [b[i] for i in items], **compare_kwargs))
        out["n_paired"] = len(items)
        out["item_wins"] = sum(1 for i in items if s[i] > b[i])
        out["item_ties"] = sum(1 for i in items if s[i] == b[i])
        out["item_losses"] = sum(1 for i in items if s[i] < b[i])
        return out

    by_metric = {metric: one(items) for metric, items in sorted(groups.items())}
    metric = max(sorted(groups), key=lambda m: len(groups[m]))
    out = {**by_metric[metric], **base, "metric": metric}
    if len(by_metric) > 1:
        out["by_metric"] = by_metric
    return out
