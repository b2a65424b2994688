"""Answer a test set with a model and score it: per-item results, summary, worst items, paired
comparison. The same prompt rendering (``prompts.build_messages``) serves every model.

Reproducibility: the rows are always sent in the same order, in fixed-size chunks, at the given
temperature (0 for the student): batched greedy decoding in bf16 depends on batch composition, so
the composition must not change between runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distil_platform.prompts import build_messages
from distil_platform.taskspec import TaskSpec


@dataclass
class Answer:
    """One model reply (whatever client produced it)."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = None
    cache_hit: bool = False
    confidence: float | None = None  # from token logprobs (routing.answer_confidence); None: not requested/returned
    cached_prompt_tokens: int | None = None  # prompt tokens the provider served from its prompt cache


@dataclass
class ItemResult:
    item_id: str
    repeat: int
    prediction: str | None
    reference: str
    score: float | None  # None: unscorable (e.g. the judge gave no verdict)
    score_strict: float | None
    parse_ok: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = None
    detail: str = ""
    question: str = ""
    confidence: float | None = None  # the answer's confidence (routing.answer_confidence)
    # The metric that produced ``score``: the task's metric name, ``llm_judge[:<judge model>]``, or
    # ``fallback:token_f1`` when no judge was reachable. Scores of different metrics never pair.
    metric: str = ""
    cached_prompt_tokens: int | None = None


AnswerFn = Callable[[list[list[dict[str, str]]], int], list[Answer]]


def client_answer_fn(client, temperature: float, max_tokens: int, item_ids: Sequence[str], *,
                     extra: dict[str, Any] | None = None,
                     confidence: Callable[[Any], float | None] | None = None) -> AnswerFn:
    """An ``answer`` function for :func:`evaluate` that sends each prompt through an LLM client
    (``distil_platform.llm.LLMClient``) as one batch, ``item_ids`` naming the rows in the store.
    ``extra``: more OpenAI parameters (e.g. ``{"logprobs": True}``); ``confidence``: ChatResult ->
    the answer's confidence (e.g. ``routing.confidence_fn(spec.type)``)."""
    from distil_platform.llm import ChatRequest

    def answer(messages_list: list[list[dict[str, str]]], repeat: int) -> list[Answer]:
        requests = [ChatRequest(messages=m, temperature=temperature, max_tokens=max_tokens, repeat=repeat,
                                item_id=i, extra=dict(extra or {}))
                    for m, i in zip(messages_list, item_ids, strict=True)]
        return [Answer(text=r.text, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                       latency_s=r.latency_s, error=r.error, cache_hit=r.cache_hit,
                       cached_prompt_tokens=r.cached_prompt_tokens,
                       confidence=confidence(r) if confidence is not None and r.error is None else None)
                for r in client.chat_batch(requests)]

    return answer


def eval_messages(spec: TaskSpec, rows: Sequence[dict[str, Any]]) -> list[list[dict[str, str]]]:
    return [build_messages(spec, row) for row in rows]


def eval_metric(spec: TaskSpec, judge: Any = None) -> str:
    """The metric an evaluation of ``spec`` with ``judge`` scores by: the task's metric, or for
    ``llm_judge`` ``llm_judge:<model>`` (when the judge callable has a ``model`` attribute) and
    ``fallback:token_f1`` without a judge (``scoring.score_prediction``'s documented fallback)."""
    metric = spec.metric_name
    if metric != "llm_judge":
        return metric
    if judge is None:
        return "fallback:token_f1"
    model = getattr(judge, "model", None)
    return f"llm_judge:{model}" if model else "llm_judge"


def _item_metric(default: str, detail: str) -> str:
    # The scorer says so when it fell back to another metric for this item.
    head = detail.split(None, 1)[0] if detail.strip() else ""
    return head if head.startswith("fallback:") else default


def score_answers(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    answers: Sequence[Answer],
    *,
    repeat: int = 0,
    judge: Any = None,
) -> list[ItemResult]:
    """Score each answer against its row with the task's metric (``scoring.score_prediction``).

    A failed request (no text) scores 0 and counts as a parse failure: a model that cannot answer
    is wrong, not absent.
    """
    from distil_platform.scoring import score_prediction

    if len(rows) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(rows)} rows")
    default_metric = eval_metric(spec, judge)
    out = []
    for row, ans in zip(rows, answers):
        if ans.text is None:
            score, strict, parse_ok, detail = 0.0, 0.0, False, f"request failed: {ans.error}"
        else:
            item = score_prediction(spec, ans.text, row, judge=judge)
            score, strict, parse_ok, detail = item.score, item.strict, item.parse_ok, item.detail
        out.append(ItemResult(
            item_id=str(row["id"]), repeat=repeat, prediction=ans.text, reference=str(row["answer"]),
            score=None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score),
            score_strict=None if strict is None else float(strict), parse_ok=bool(parse_ok),
            prompt_tokens=ans.prompt_tokens, completion_tokens=ans.completion_tokens,
            latency_s=ans.latency_s, error=ans.error, detail=str(detail or ""),
            question=str(row.get("question", "")), confidence=getattr(ans, "confidence", None),
            metric=_item_metric(default_metric, str(detail or "")),
            cached_prompt_tokens=getattr(ans, "cached_prompt_tokens", None),
        ))
    return out


def evaluate(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    answer: AnswerFn,
    *,
    repeats: int = 1,
    judge: Any = None,
) -> list[ItemResult]:
    """Answer every row ``repeats`` times (``answer(messages, repeat)``) and score the replies."""
    messages = eval_messages(spec, rows)
    results: list[ItemResult] = []
    for r in range(repeats):
        answers = answer(messages, r)
        results += score_answers(spec, rows, answers, repeat=r, judge=judge)
    return results


# -- summaries ---------------------------------------------------------------------------------
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
    from distil_platform.stats import mean_std, score_interval

    per_item = item_means(results)
    if not per_item:
        raise ValueError("no scorable results to summarise")
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
        request_errors=sum(1 for r in results if r.prediction is None),
        unscorable=sum(1 for r in results if r.score is None),
        score_strict=(sum(strict_items.values()) / len(strict_items)) if strict_items else None,
        mean_prompt_tokens=_mean([r.prompt_tokens for r in results]),
        mean_completion_tokens=_mean([r.completion_tokens for r in results]),
        mean_latency_s=_mean([r.latency_s for r in results]),
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
    from distil_platform.stats import compare

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


def prediction_rows(
    results: Sequence[ItemResult], *, task: str, stage: str, model: str, run_id: str, variant: str = ""
) -> list[dict[str, Any]]:
    """Rows for the results store's ``predictions`` table."""
    return [
        {"run_id": run_id, "task": task, "stage": stage, "model": model, "variant": variant,
         "item_id": r.item_id, "repeat": r.repeat, "prediction": r.prediction, "reference": r.reference,
         "score": r.score, "score_strict": r.score_strict, "parse_ok": r.parse_ok,
         "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
         "latency_s": r.latency_s, "error": r.error, "confidence": r.confidence,
         "cached_prompt_tokens": r.cached_prompt_tokens, "metric": r.metric or None}
        for r in results
    ]


def results_from_store_rows(rows: Sequence[dict[str, Any]], *, default_metric: str = "") -> list[ItemResult]:
    """Inverse of :func:`prediction_rows` (for paired comparisons across assets).

    Rows stored before the ``metric`` column existed have none: ``default_metric`` fills it where
    the caller knows it (a task whose metric has no fallback), else they pair only with each other."""
    return [
        ItemResult(item_id=r["item_id"], repeat=r["repeat"] or 0, prediction=r["prediction"],
                   reference=r["reference"] or "", score=r["score"], score_strict=r["score_strict"],
                   parse_ok=bool(r["parse_ok"]), prompt_tokens=r["prompt_tokens"],
                   completion_tokens=r["completion_tokens"], latency_s=r["latency_s"], error=r["error"],
                   confidence=r.get("confidence"), metric=r.get("metric") or default_metric,
                   cached_prompt_tokens=r.get("cached_prompt_tokens"))
        for r in rows
    ]
