"""llm_judge with injected (recorded) judges, strict verdict parsing, and the token-F1 fallback."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distil_platform.evaluation.scoring import (
    build_judge_messages,
    llm_judge,
    parse_verdict,
    score_prediction,
)
from distil_platform.tasks.spec import TaskSpec

RUBRIC = "GOOD when the answer names the same entity as the reference."


class RecordedJudge:
    """Replays a recorded judge reply and keeps the messages it was sent."""

    def __init__(self, reply: str):
        self.reply = reply
        self.calls: list[list[dict]] = []

    def __call__(self, messages):
        self.calls.append(messages)
        return self.reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("GOOD", 1.0),
        ("bad", 0.0),
        ("Good.", 1.0),
        ("**BAD**", 0.0),
        ("The answer names the right band.\nVerdict: GOOD", 1.0),
        ("Reasoning...\n\nFinal verdict: bad", 0.0),
        ('{"verdict": "good", "reason": "same entity"}', 1.0),
        ('```json\n{"Verdict": "BAD"}\n```', 0.0),
        ("[GOOD]", 1.0),
    ],
)
def test_parse_verdict_accepts(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        None,
        "The answer is not good.",  # verdict inside a sentence
        "GOOD\nBAD",  # two verdicts
        "Verdict: GOOD\nOn reflection, Verdict: BAD",
        "good-ish",
        '{"verdict": "maybe"}',
        '{"score": 1}',
        "PASS",
    ],
)
def test_parse_verdict_unparseable_is_nan(reply):
    assert math.isnan(parse_verdict(reply))


def test_llm_judge_sends_rubric_question_context_reference_prediction():
    judge = RecordedJudge("Verdict: GOOD")
    score = llm_judge(
        "Blonde Redhead",
        "Blonde Redhead",
        "Which band has more albums?",
        RUBRIC,
        judge=judge,
        context="Passage text",
    )
    assert score == 1.0
    (messages,) = judge.calls
    assert [m["role"] for m in messages] == ["system", "user"]
    assert RUBRIC in messages[0]["content"]
    user = messages[1]["content"]
    for part in (
        "Which band has more albums?",
        "Passage text",
        "Reference answer:\nBlonde Redhead",
        "Model answer:\nBlonde Redhead",
    ):
        assert part in user


def test_llm_judge_bad_unparseable_and_empty():
    assert llm_judge("White Zombie", "Blonde Redhead", "q", RUBRIC, judge=RecordedJudge("BAD")) == 0.0
    assert math.isnan(llm_judge("x", "Blonde Redhead", "q", RUBRIC, judge=RecordedJudge("I am unsure.")))
    silent = RecordedJudge("GOOD")
    assert llm_judge("   ", "Blonde Redhead", "q", RUBRIC, judge=silent) == 0.0
    assert silent.calls == []  # no judge call for an empty answer


def test_llm_judge_bad_inputs_raise_and_judge_errors_propagate():
    with pytest.raises(ValueError, match="rubric"):
        llm_judge("x", "y", "q", " ", judge=RecordedJudge("GOOD"))
    with pytest.raises(ValueError, match="reference"):
        llm_judge("x", "", "q", RUBRIC, judge=RecordedJudge("GOOD"))

    def failing(messages):
        raise ConnectionError("judge endpoint down")

    with pytest.raises(ConnectionError):
        llm_judge("x", "y", "q", RUBRIC, judge=failing)


def test_messages_are_plain_strings():
    messages = build_judge_messages("p", "r", "q", RUBRIC)
    assert all(isinstance(m["content"], str) for m in messages)
    assert "Context:" not in messages[1]["content"]


def _qa_spec(**kw):
    return TaskSpec(name="qa", type="open_book_qa", description="Answer from the passage.", **kw)


def test_score_prediction_judge_and_fallback():
    row = {"question": "Which band?", "answer": "Blonde Redhead", "context": "passage"}
    spec = _qa_spec(metric="llm_judge", judge_rubric=RUBRIC)
    item = score_prediction(spec, "Blonde Redhead.", row, judge=RecordedJudge("GOOD"))
    assert (item.score, item.strict, item.parse_ok, item.detail) == (1.0, None, True, "")
    item = score_prediction(spec, "Blonde", row)  # no judge configured
    assert item.detail == "fallback:token_f1" and item.score == pytest.approx(2 / 3)
    item = score_prediction(spec, "x", row, judge=RecordedJudge("hmm"))
    assert math.isnan(item.score) and item.detail == "judge verdict unparseable"
    # default metric for open_book_qa is llm_judge; without a rubric the default rubric is used
    judge = RecordedJudge("BAD")
    assert score_prediction(_qa_spec(), "x", row, judge=judge).score == 0.0
    assert "reference" in judge.calls[0][0]["content"].lower()
    assert score_prediction(_qa_spec(metric="token_f1"), "Blonde Redhead", row).score == 1.0


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_parse_verdict_never_raises(text):
    value = parse_verdict(text)
    assert math.isnan(value) or value in (0.0, 1.0)
