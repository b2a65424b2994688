"""Evaluation core with scripted answers: scoring, summaries, worst items, paired comparison, store rows."""

from __future__ import annotations

import pytest

from distil_platform.evaluation.evaluate import (
    Answer,
    ItemResult,
    eval_metric,
    evaluate,
    prediction_rows,
    results_from_store_rows,
)
from distil_platform.evaluation.summary import item_means, paired_comparison, summarize, worst_items
from distil_platform.tasks.prompts import build_messages
from distil_platform.tasks.spec import get_task


@pytest.fixture
def spec():
    return get_task("banking77")


@pytest.fixture
def rows(spec):
    labels = list(spec.labels)
    return [{"id": f"t{i}", "question": f"customer message {i}", "answer": labels[i % 3], "context": ""}
            for i in range(12)]


def scripted(rows, correct: set[int], garbage: set[int] = frozenset(), fail: set[int] = frozenset()):
    """An answer function returning the right label for ``correct`` items (per repeat: set of ids)."""
    seen = []

    def answer(messages_list, repeat):
        seen.append((len(messages_list), repeat))
        out = []
        for i, row in enumerate(rows):
            if i in fail:
                out.append(Answer(text=None, error="HTTP 500"))
            elif i in garbage:
                out.append(Answer(text="no idea at all", prompt_tokens=10, completion_tokens=4, latency_s=0.1))
            elif i in correct:
                out.append(Answer(text=row["answer"], prompt_tokens=10, completion_tokens=3, latency_s=0.1))
            else:
                wrong = next(lbl for lbl in ("card_payment_fee_charged", "cash_withdrawal_charge") if lbl != row["answer"])
                out.append(Answer(text=wrong, prompt_tokens=10, completion_tokens=3, latency_s=0.1))
        return out

    answer.seen = seen
    return answer


def test_evaluate_sends_the_shared_prompt_and_scores_each_repeat(spec, rows):
    fn = scripted(rows, correct=set(range(6)), garbage={10}, fail={11})
    captured = []

    def answer(messages_list, repeat):
        captured.append(messages_list)
        return fn(messages_list, repeat)

    results = evaluate(spec, rows, answer, repeats=2)
    assert captured[0] == [build_messages(spec, r) for r in rows]
    assert len(results) == 24 and {r.repeat for r in results} == {0, 1}
    by_id = {(r.item_id, r.repeat): r for r in results}
    assert by_id[("t0", 0)].score == 1.0 and by_id[("t7", 1)].score == 0.0
    assert by_id[("t11", 0)].prediction is None and not by_id[("t11", 0)].parse_ok
    summary = summarize(results)
    assert summary.score == pytest.approx(6 / 12)
    assert summary.ci_low <= summary.score <= summary.ci_high and summary.ci_high - summary.ci_low > 0.1
    assert summary.n == 12 and summary.repeats == 2 and summary.repeat_std == 0.0
    assert summary.request_errors == 2 and summary.parse_failures >= 2
    assert summary.mean_prompt_tokens == pytest.approx(10.0)


def test_worst_items_lists_failures_first(spec, rows):
    results = evaluate(spec, rows, scripted(rows, correct=set(range(1, 12)), fail={0}))
    worst = worst_items(results, k=3)
    assert worst[0]["item_id"] == "t0" and worst[0]["score"] == 0.0 and worst[0]["parse_ok"] is False
    assert all(w["score"] == 1.0 for w in worst[1:])


def test_paired_comparison_sees_the_better_model(spec, rows):
    good = evaluate(spec, rows, scripted(rows, correct=set(range(12))))
    bad = evaluate(spec, rows, scripted(rows, correct={0}))
    cmp = paired_comparison(good, bad)
    assert cmp["n_paired"] == 12
    assert (cmp["item_wins"], cmp["item_ties"], cmp["item_losses"]) == (11, 1, 0)
    assert cmp["diff"] == pytest.approx(11 / 12) and cmp["ci_low"] > 0 and cmp["verdict"] == "win"
    assert cmp["mcnemar_p"] < 0.01
    assert paired_comparison(good, [])["n_paired"] == 0


def test_store_rows_round_trip(spec, rows):
    from distil_platform.storage.store import ResultsStore, predictions

    answers = scripted(rows, correct={1, 2})

    def with_cached_tokens(messages_list, repeat):
        out = answers(messages_list, repeat)
        for k, ans in enumerate(out):
            ans.cached_prompt_tokens = k % 3
        return out

    results = evaluate(spec, rows, with_cached_tokens, repeats=1)
    assert {r.metric for r in results} == {"exact_match"}
    stored = prediction_rows(results, task="banking77", stage="student_eval", model="m", run_id="r1")
    assert {r["stage"] for r in stored} == {"student_eval"} and len(stored) == len(rows)
    store = ResultsStore()
    store.insert(predictions, stored)
    back = results_from_store_rows(store.select(predictions, run_id="r1"))
    assert item_means(back) == item_means(results)
    assert [r.metric for r in back] == ["exact_match"] * len(rows)
    assert [r.cached_prompt_tokens for r in back] == [k % 3 for k in range(len(rows))]
    # Rows from before the metric column: unknown unless the caller says.
    legacy = [{**row, "metric": None} for row in stored]
    assert {r.metric for r in results_from_store_rows(legacy)} == {""}
    assert {r.metric for r in results_from_store_rows(legacy, default_metric="exact_match")} == {"exact_match"}


@pytest.fixture
def judged():
    spec = get_task("hotpotqa")
    rows = [{"id": f"h{i}", "question": f"question {i}?", "answer": f"answer number {i}", "context": ""}
            for i in range(12)]
    return spec, rows


def _judge_good_when_exact(messages):
    user = messages[-1]["content"]
    reference = user.split("Reference answer:\n", 1)[1].split("\n", 1)[0].strip()
    prediction = user.split("Model answer:\n", 1)[1].split("\n\nVerdict", 1)[0].strip()
    return "GOOD" if prediction == reference else "BAD"


def _answers(rows, good: set[int], partial: set[int] = frozenset()):
    def answer(messages_list, repeat):
        out = []
        for i, row in enumerate(rows):
            # "partial" answers share most words with the reference: token F1 > 0, judge BAD.
            text = row["answer"] if i in good else ("answer number" if i in partial else "no")
            out.append(Answer(text=text, prompt_tokens=5, completion_tokens=2))
        return out

    return answer


def test_judge_and_fallback_scores_are_never_paired(judged):
    spec, rows = judged
    judge = _judge_good_when_exact
    def judge_with_model(messages):
        return _judge_good_when_exact(messages)

    judge_with_model.model = "mistral/mistral-large-2512"
    assert eval_metric(spec, None) == "fallback:token_f1" and eval_metric(spec, judge) == "llm_judge"
    assert eval_metric(spec, judge_with_model) == "llm_judge:mistral/mistral-large-2512"

    judged_student = evaluate(spec, rows, _answers(rows, good=set(range(6))), judge=judge)
    fallback_student = evaluate(spec, rows, _answers(rows, good=set(range(6))))
    baseline = evaluate(spec, rows, _answers(rows, good=set(), partial=set(range(12))), judge=judge)
    assert {r.metric for r in judged_student} == {"llm_judge"}
    assert {r.metric for r in fallback_student} == {"fallback:token_f1"}
    assert {r.detail for r in fallback_student} == {"fallback:token_f1"}

    same = paired_comparison(judged_student, baseline)
    assert same["n_paired"] == 12 and same["metric"] == "llm_judge" and same["n_metric_mismatch"] == 0
    # Token F1 of the student vs judge verdicts of the baseline: not one comparison.
    crossed = paired_comparison(fallback_student, baseline)
    assert crossed["n_paired"] == 0 and crossed["n_metric_mismatch"] == 12 and "verdict" not in crossed
    assert crossed["metric_mismatch"] == ["fallback:token_f1 vs llm_judge"]
    # Two judges are two metrics too.
    other_judge = evaluate(spec, rows, _answers(rows, good=set()), judge=judge_with_model)
    assert paired_comparison(judged_student, other_judge)["n_paired"] == 0
    # The metric survives the store round trip, so pairing across assets sees it.
    stored = prediction_rows(fallback_student, task=spec.name, stage="student_eval", model="m", run_id="r")
    assert {r["metric"] for r in stored} == {"fallback:token_f1"}
    assert paired_comparison(results_from_store_rows(stored), baseline)["n_paired"] == 0


def test_pairs_of_several_metrics_are_split_by_metric():
    def item(i, score, metric):
        return ItemResult(item_id=f"i{i}", repeat=0, prediction="x", reference="y", score=score,
                          score_strict=None, parse_ok=True, metric=metric)

    # Items 0-7 judged on both sides; 8-9 token F1 on both; 10-11 judged vs fallback.
    student = ([item(i, 1.0, "llm_judge") for i in range(8)] + [item(i, 0.5, "fallback:token_f1") for i in (8, 9)]
               + [item(i, 1.0, "fallback:token_f1") for i in (10, 11)])
    baseline = ([item(i, 1.0 if i < 4 else 0.0, "llm_judge") for i in range(8)]
                + [item(i, 0.25, "fallback:token_f1") for i in (8, 9)] + [item(i, 0.0, "llm_judge") for i in (10, 11)])
    cmp = paired_comparison(student, baseline)
    assert cmp["metric"] == "llm_judge" and cmp["n_paired"] == 8 and cmp["n_common"] == 12
    assert cmp["diff"] == pytest.approx(0.5) and (cmp["item_wins"], cmp["item_ties"]) == (4, 4)
    assert cmp["n_metric_mismatch"] == 2 and set(cmp["by_metric"]) == {"llm_judge", "fallback:token_f1"}
    assert cmp["by_metric"]["fallback:token_f1"]["n_paired"] == 2
    assert cmp["by_metric"]["fallback:token_f1"]["diff"] == pytest.approx(0.25)
    # One item scored by different metrics across its own repeats pairs with nothing.
    mixed = [item(0, 1.0, "llm_judge"), ItemResult(item_id="i0", repeat=1, prediction="x", reference="y", score=0.0,
                                                   score_strict=None, parse_ok=True, metric="fallback:token_f1")]
    assert paired_comparison(mixed, baseline[:1])["n_paired"] == 0
