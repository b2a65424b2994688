"""exact_match / normalize_label / token_f1: hand-worked cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distil_platform.evaluation.scoring import exact_match, matches_known_label, normalize_label, token_f1


@pytest.mark.parametrize(
    "prediction",
    [
        "card_arrival",
        "  card_arrival \n",
        "CARD_ARRIVAL",
        "card_arrival.",
        '"card_arrival"',
        "'card_arrival'.",
        "`card_arrival`",
        "```\ncard_arrival\n```",
        "```text\ncard_arrival\n```",
        '{"label": "card_arrival"}',
        '{"Label": "Card_Arrival"}',
        '```json\n{"intent": "card_arrival"}\n```',
        "<answer>card_arrival</answer>",
        "<ANSWER> 'card_arrival' </ANSWER>",
        "Reasoning first.\n<answer>card_arrival</answer>",
    ],
)
def test_exact_match_accepts_wrapped_label(prediction):
    assert exact_match(prediction, "card_arrival") == 1.0


@pytest.mark.parametrize(
    "prediction",
    [
        "card arrival",  # underscore is part of the label
        "card_arrivals",
        "The label is card_arrival",
        "Label: card_arrival",
        '{"label": 3}',
        '{"other": "card_arrival"}',
        "",
        None,
        "card_arrival, card_linking",
    ],
)
def test_exact_match_rejects(prediction):
    assert exact_match(prediction, "card_arrival") == 0.0


def test_exact_match_collapses_inner_whitespace_and_case_both_sides():
    assert exact_match("Health  and\nPersonal Care", "health and personal care") == 1.0
    assert normalize_label("  Books. ") == "books"
    assert normalize_label("\"'x'\"") == "x"  # nested quotes peel off repeatedly


def test_exact_match_bad_reference_raises():
    with pytest.raises(ValueError, match="reference label"):
        exact_match("x", "  ...  ")


def test_matches_known_label():
    labels = {"books": "d", "electronics": "d"}
    assert matches_known_label("Books.", labels)
    assert not matches_known_label("toys", labels)
    assert not matches_known_label("", None)
    assert matches_known_label("anything", None)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Blonde Redhead", "Blonde Redhead", 1.0),
        ("the Blonde Redhead!", "blonde redhead", 1.0),  # articles and punctuation dropped
        ("Blonde", "Blonde Redhead", 2 * (1.0 * 0.5) / 1.5),  # P=1, R=1/2
        ("w b c d", "c d e", 2 * (0.5 * (2 / 3)) / (0.5 + 2 / 3)),
        ("a b c d", "c d e", 2 / 3),  # "a" is an article: 3 tokens, P = R = 2/3
        ("yes", "no", 0.0),
        ("", "", 1.0),
        ("", "x", 0.0),
        (None, "x", 0.0),
        ("x x", "x", 2 * 0.5 * 1 / 1.5),  # multiset overlap counts x once
    ],
)
def test_token_f1_hand_worked(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


_labels = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda s: normalize_label(s) != ""
)


@settings(max_examples=60, deadline=None)
@given(_labels)
def test_exact_match_reflexive(label):
    assert exact_match(label, label) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_token_f1_bounded_symmetric_reflexive(a, b):
    score = token_f1(a, b)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(token_f1(b, a))
    assert token_f1(a, a) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=40), st.integers(), st.none()))
def test_exact_match_never_raises_on_garbage(prediction):
    assert exact_match(prediction, "books") in (0.0, 1.0)


def test_every_shipped_sample_reference_scores_one_against_itself():
    # All task types, not only classification: the nine shipped tasks with their sample data.
    import json

    from distil_platform.evaluation.scoring import score_prediction
    from distil_platform.tasks.spec import load_tasks

    for name, spec in load_tasks().items():
        rows = [
            json.loads(line)
            for split in ("train", "test")
            if (spec.sample_dir() / f"{split}.jsonl").exists()
            for line in (spec.sample_dir() / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        assert rows, name
        for row in rows:
            item = score_prediction(spec, str(row["answer"]), row)
            assert (item.score, item.parse_ok) == (1.0, True), (name, row["id"], item)
