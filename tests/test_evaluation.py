"""Evaluation core with scripted answers: scoring, summaries, worst items, paired comparison, store rows."""

from __future__ import annotations

import pytest

from distil_platform.evaluation import (
    Answer,
    evaluate,
    item_means,
    paired_comparison,
    prediction_rows,
    results_from_store_rows,
    summarize,
    worst_items,
)
from distil_platform.prompts import build_messages
from distil_platform.taskspec import get_task


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
    results = evaluate(spec, rows, scripted(rows, correct={1, 2}), repeats=1)
    stored = prediction_rows(results, task="banking77", stage="student_eval", model="m", run_id="r1")
    assert {r["stage"] for r in stored} == {"student_eval"} and len(stored) == len(rows)
    back = results_from_store_rows(stored)
    assert item_means(back) == item_means(results)
