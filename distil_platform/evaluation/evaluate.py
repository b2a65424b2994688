"""Answer a test set with a model and score it: per-item results, and their rows in the results
store (summaries and paired comparisons are in ``evaluation.summary``). The same prompt rendering
(``prompts.build_messages``) serves every model.

Reproducibility: the rows are always sent in the same order, in fixed-size chunks, at the given
temperature (0 for the student): batched greedy decoding in bf16 depends on batch composition, so
the composition must not change between runs.

What is scored, and what is not (one rule for every model; ``ItemResult.outcome`` says which):

- A **failed request** (no reply after the client's retries: ``Answer.error``) scores 0 and counts
  as a parse failure and a request error: a model that cannot answer is wrong, not absent.
- An **empty reply** (the request succeeded, billed, but no text: a reasoning model that spent its
  whole ``max_tokens`` thinking, a safety block) is no answer the model gave. The scorer never sees
  it; the item gets ``outcome`` "empty" (the finish reason in ``detail``) and is counted per model
  (``EvalSummary.empty``). What it scores depends on who owns the budget (``empty_reply``), and is
  in both cases the choice that never flatters the student:

  - ``"zero"`` (the default; the student, the zero-shot base and self-hosted baselines, asked at the
    task's own answer budget): nothing within the budget the task needs is a failed answer, and a
    deployment of that model would serve nothing: 0, never left out (leaving it out would raise
    a student that answers nothing on its hardest items).
  - ``"unscorable"`` (frontier API models, whose ``max_tokens`` / ``reasoning_effort`` are our
    configuration): an empty reply says the budget is wrong, not the model: ``score`` None, left
    out of the mean (``summary.item_means``) and of every paired comparison like an unparseable judge
    verdict, counted in ``unscorable`` too; never a 0 that understates the frontier.
- A **truncated reply** (``finish_reason == "length"``: cut off at ``max_tokens``) with text is
  scored as the text the model returned within its budget (what a deployment with that budget
  would serve; leaving it out would flatter a student that runs on past its answer) and flagged:
  ``outcome`` "truncated". ``EvalSummary.truncated`` counts every reply cut off at max_tokens per
  model (empty ones too), so a budget set too tight is visible next to the score.
- A **scorer that raises** on a reply (any exception, e.g. ``RecursionError`` on deeply nested
  output) makes that item unscorable with the reason (``outcome`` "scoring_error", ``detail``
  "scoring_error: <exception>"), counted in ``EvalSummary.scoring_errors``; one poisonous reply never
  crashes an eval. Exceptions of the judge *call* itself (network, budget) and the scorers'
  bad-reference errors (``SQLReferenceError``, ``SQLSchemaError``, ``ToolSchemaError``: a broken
  test row or tool list) still propagate: they are not a property of the reply.

The LLM judge is called in batches: :func:`score_answers` hands every item's judge prompt to the
judge's ``prefetch`` (when it has one: ``assets.common.BatchJudge``) before scoring, so the judge
requests of one pass run concurrently through the LLM client rather than one at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distil_platform.tasks.prompts import build_messages
from distil_platform.tasks.spec import TaskSpec


@dataclass
class Answer:
    """One model reply (whatever client produced it)."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = None
    cache_hit: bool = False
    confidence: float | None = None  # from token logprobs (confidence.answer_confidence); None: not requested/returned
    cached_prompt_tokens: int | None = None  # prompt tokens the provider served from its prompt cache
    finish_reason: str | None = None  # "stop", "length" (cut at max_tokens), "content_filter", ...; None: unknown
    reasoning_tokens: int | None = None  # hidden reasoning tokens reported by the provider
    timeouts: int = 0  # timed-out attempts of the request (each possibly billed)


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
    confidence: float | None = None  # the answer's confidence (confidence.answer_confidence)
    # The metric that produced ``score``: the task's metric name, ``llm_judge[:<judge model>]``, or
    # ``fallback:token_f1`` when no judge was reachable. Scores of different metrics never pair.
    metric: str = ""
    cached_prompt_tokens: int | None = None
    finish_reason: str | None = None
    reasoning_tokens: int | None = None
    timeouts: int = 0
    # "" (an answer, scored), "empty" (billed, no text: 0 or unscorable), "truncated" (cut at max_tokens:
    # scored as given, flagged) or "scoring_error" (the scorer raised: unscorable). Module docstring.
    outcome: str = ""


# ItemResult.outcome values ("not_scored": an answer given elsewhere that cannot be scored as stored,
# e.g. a production answer changed by PII masking; ``detail`` says why)
OUTCOME_EMPTY, OUTCOME_TRUNCATED, OUTCOME_SCORING_ERROR = "empty", "truncated", "scoring_error"
OUTCOME_NOT_SCORED = "not_scored"
# What an empty reply scores (module docstring): 0, or unscorable (left out like a missing verdict).
EMPTY_REPLY_POLICIES = ("zero", "unscorable")


def is_empty_reply(answer: Answer) -> bool:
    """The request succeeded (no error) but the reply has no text: billed, not an answer."""
    return answer.error is None and not (answer.text or "").strip()


AnswerFn = Callable[[list[list[dict[str, str]]], int], list[Answer]]


def client_answer_fn(client, temperature: float, max_tokens: int, item_ids: Sequence[str], *,
                     extra: dict[str, Any] | None = None,
                     confidence: Callable[[Any], float | None] | None = None) -> AnswerFn:
    """An ``answer`` function for :func:`evaluate` that sends each prompt through an LLM client
    (``distil_platform.llm.LLMClient``) as one batch, ``item_ids`` naming the rows in the store.
    ``extra``: more OpenAI parameters (e.g. ``{"logprobs": True}``); ``confidence``: ChatResult ->
    the answer's confidence (e.g. ``confidence.confidence_fn(spec.type)``)."""
    from distil_platform.llm import ChatRequest

    def answer(messages_list: list[list[dict[str, str]]], repeat: int) -> list[Answer]:
        requests = [ChatRequest(messages=m, temperature=temperature, max_tokens=max_tokens, repeat=repeat,
                                item_id=i, extra=dict(extra or {}))
                    for m, i in zip(messages_list, item_ids, strict=True)]
        return [Answer(text=r.text, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                       latency_s=r.latency_s, error=r.error, cache_hit=r.cache_hit,
                       cached_prompt_tokens=r.cached_prompt_tokens,
                       confidence=confidence(r) if confidence is not None and r.error is None else None,
                       finish_reason=getattr(r, "finish_reason", None),
                       reasoning_tokens=getattr(r, "reasoning_tokens", None), timeouts=getattr(r, "timeouts", 0))
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


class _JudgeCallError(Exception):
    """Carries an exception raised by the judge call itself (re-raised: not a property of the reply)."""


def _guarded_judge(judge: Any) -> Any:
    if judge is None:
        return None

    def call(messages):
        try:
            return judge(messages)
        except Exception as exc:  # re-raised as it was by score_answers
            raise _JudgeCallError() from exc

    call.model = getattr(judge, "model", None)  # type: ignore[attr-defined]
    return call


def _prefetch_judge(spec: TaskSpec, rows: Sequence[dict[str, Any]], answers: Sequence[Answer], judge: Any) -> None:
    """Hand every judge prompt of this pass to ``judge.prefetch`` (one concurrent batch). The prompts
    are the ones scoring will send: collected by running the scorer with a recording judge."""
    from distil_platform.evaluation.scoring import score_prediction

    prefetch = getattr(judge, "prefetch", None)
    if prefetch is None or spec.metric_name != "llm_judge":
        return
    wanted: list[list[dict[str, str]]] = []

    def record(messages):
        wanted.append(messages)
        return "GOOD"

    for row, ans in zip(rows, answers):
        if ans.error is not None or is_empty_reply(ans):
            continue
        # A scorer exception here is reported by the scoring pass, as that item's scoring_error.
        with contextlib.suppress(Exception):
            score_prediction(spec, ans.text, row, judge=record)
    if wanted:
        prefetch(wanted)


def score_answers(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    answers: Sequence[Answer],
    *,
    repeat: int = 0,
    judge: Any = None,
    empty_reply: str = "zero",
) -> list[ItemResult]:
    """Score each answer against its row with the task's metric (``scoring.score_prediction``),
    following the module docstring's rule: a failed request scores 0; an empty reply is never
    scored as an answer (``empty_reply``: 0 or unscorable); a truncated one is scored and flagged;
    a scorer exception makes the item unscorable."""
    from distil_platform.evaluation.scoring import (
        SQLReferenceError,
        SQLSchemaError,
        ToolSchemaError,
        score_prediction,
    )

    if len(rows) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(rows)} rows")
    if empty_reply not in EMPTY_REPLY_POLICIES:
        raise ValueError(f"empty_reply must be one of {EMPTY_REPLY_POLICIES}, got {empty_reply!r}")
    default_metric = eval_metric(spec, judge)
    _prefetch_judge(spec, rows, answers, judge)
    guarded = _guarded_judge(judge)
    out = []
    for row, ans in zip(rows, answers):
        finish = getattr(ans, "finish_reason", None)
        outcome = ""
        if ans.error is not None:
            score, strict, parse_ok, detail = 0.0, 0.0, False, f"request failed: {ans.error}"
        elif is_empty_reply(ans):
            zero = empty_reply == "zero"
            score, strict, parse_ok, outcome = (0.0 if zero else None), (0.0 if zero else None), False, OUTCOME_EMPTY
            detail = (f"empty reply (finish_reason={finish}): billed, no answer; "
                      + ("scored 0" if zero else "unscorable"))
        else:
            try:
                item = score_prediction(spec, ans.text, row, judge=guarded)
                score, strict, parse_ok, detail = item.score, item.strict, item.parse_ok, item.detail
            except _JudgeCallError as exc:
                raise exc.__cause__ from None  # the judge call failed (network, budget): not the reply's fault
            except (SQLReferenceError, SQLSchemaError, ToolSchemaError):
                raise  # a bad reference, schema or tool list: the test set is broken, not the reply
            except Exception as exc:  # noqa: BLE001 - any scorer failure on one reply makes that item unscorable
                score, strict, parse_ok, outcome = None, None, False, OUTCOME_SCORING_ERROR
                detail = f"scoring_error: {type(exc).__name__}: {str(exc)[:200]}"
            if finish == "length" and outcome == "":
                outcome = OUTCOME_TRUNCATED
                detail = f"{detail}; truncated at max_tokens" if detail else "truncated at max_tokens"
        out.append(ItemResult(
            item_id=str(row["id"]), repeat=repeat, prediction=ans.text, reference=str(row["answer"]),
            score=None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score),
            score_strict=None if strict is None else float(strict), parse_ok=bool(parse_ok),
            prompt_tokens=ans.prompt_tokens, completion_tokens=ans.completion_tokens,
            latency_s=ans.latency_s, error=ans.error, detail=str(detail or ""),
            question=str(row.get("question", "")), confidence=getattr(ans, "confidence", None),
            metric=_item_metric(default_metric, str(detail or "")),
            cached_prompt_tokens=getattr(ans, "cached_prompt_tokens", None),
            finish_reason=finish, reasoning_tokens=getattr(ans, "reasoning_tokens", None),
            timeouts=int(getattr(ans, "timeouts", 0) or 0), outcome=outcome,
        ))
    return out


def evaluate(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    answer: AnswerFn,
    *,
    repeats: int = 1,
    judge: Any = None,
    empty_reply: str = "zero",
) -> list[ItemResult]:
    """Answer every row ``repeats`` times (``answer(messages, repeat)``) and score the replies
    (``empty_reply``: what an empty reply scores, see the module docstring)."""
    messages = eval_messages(spec, rows)
    results: list[ItemResult] = []
    for r in range(repeats):
        answers = answer(messages, r)
        results += score_answers(spec, rows, answers, repeat=r, judge=judge, empty_reply=empty_reply)
    return results


def score_logged_answers(spec: TaskSpec, test_rows: Sequence[dict[str, Any]], logged_rows: Sequence[dict[str, Any]],
                         *, judge: Any = None, match_on: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                         ) -> tuple[list[dict[str, Any]], list[ItemResult]]:
    """Answers given outside this evaluation (a recorded teacher's file, a production model's traces)
    to the test questions they ask, matched by normalised question and context
    (``teacher_gate.match_recorded``) and scored like a model's replies (an empty answer scores 0: it
    was given): ``(matched test rows, results)``, both empty when no row asks a test question.
    ``match_on``: the form of a test row that is matched (e.g. masked as the logged rows were); the
    row itself is scored. A logged row with a non-empty ``not_scored`` (the reason) is matched but
    unscorable (outcome ``not_scored``), never a silent 0 or 1."""
    import dataclasses

    from distil_platform.evaluation.teacher_gate import match_recorded
    from distil_platform.tasks.prompts import format_answer

    keys = [match_on(row) for row in test_rows] if match_on is not None else list(test_rows)
    matched_keys, logged = match_recorded(keys, logged_rows)
    row_of = {id(key): row for key, row in zip(keys, test_rows)}
    matched = [row_of[id(key)] for key in matched_keys]

    def text(answer: str) -> str:
        try:
            return format_answer(spec, answer)
        except ValueError:  # a tool call that is no JSON: scored as written
            return answer

    if not matched:
        return [], []
    results = score_answers(spec, matched, [Answer(text=text(str(r.get("answer") or ""))) for r in logged], judge=judge)
    return matched, [dataclasses.replace(res, score=None, score_strict=None, outcome=OUTCOME_NOT_SCORED,
                                         detail=str(r["not_scored"])) if r.get("not_scored") else res
                     for res, r in zip(results, logged)]


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
         "cached_prompt_tokens": r.cached_prompt_tokens, "metric": r.metric or None,
         "finish_reason": r.finish_reason, "reasoning_tokens": r.reasoning_tokens}
        for r in results
    ]


def results_from_store_rows(rows: Sequence[dict[str, Any]], *, default_metric: str = "") -> list[ItemResult]:
    """Inverse of :func:`prediction_rows` (for paired comparisons across assets).

    Rows stored before the ``metric`` column existed have none: ``default_metric`` fills it where
    the caller knows it (a task whose metric has no fallback), else they pair only with each other.
    ``outcome`` is read back where the row shows it: "empty" (no error, no text),
    "truncated" (finish_reason length); a scoring error is only in the in-memory result's detail."""
    return [
        ItemResult(item_id=r["item_id"], repeat=r["repeat"] or 0, prediction=r["prediction"],
                   reference=r["reference"] or "", score=r["score"], score_strict=r["score_strict"],
                   parse_ok=bool(r["parse_ok"]), prompt_tokens=r["prompt_tokens"],
                   completion_tokens=r["completion_tokens"], latency_s=r["latency_s"], error=r["error"],
                   confidence=r.get("confidence"), metric=r.get("metric") or default_metric,
                   cached_prompt_tokens=r.get("cached_prompt_tokens"), finish_reason=r.get("finish_reason"),
                   reasoning_tokens=r.get("reasoning_tokens"), outcome=_stored_outcome(r))
        for r in rows
    ]


def _stored_outcome(row: dict[str, Any]) -> str:
    if row.get("error") is None and not (row.get("prediction") or "").strip():
        return OUTCOME_EMPTY
    return OUTCOME_TRUNCATED if row.get("finish_reason") == "length" else ""
