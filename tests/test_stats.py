"""Statistics: hand-worked values, degenerate inputs, pairing, and the win / non-inferior /
inconclusive / loss verdict."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distil_platform.economics.stats import (
    TEST_BINARY,
    TEST_BOOTSTRAP,
    bootstrap_ci,
    compare,
    mcnemar_exact,
    mean_std,
    newcombe_paired_diff,
    paired_bootstrap_diff,
    per_item_means,
    score_interval,
    verdict_label,
    wilson_interval,
)


def test_mean_std_hand_worked():
    mean, std = mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)  # sample std (ddof=1)
    assert mean_std([0.7]) == (0.7, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
    assert mean_std([1.0, float("nan"), 0.0]) == pytest.approx((0.5, math.sqrt(0.5)))


def test_wilson_interval_hand_worked():
    # p = 0.3, z = 1.959964: centre (0.3 + z^2/20) / (1 + z^2/10) = 0.355506,
    # half-width z * sqrt(0.021 + z^2/400) / (1 + z^2/10) = 0.247713
    low, high = wilson_interval(3, 10)
    assert low == pytest.approx(0.107793, abs=1e-5) and high == pytest.approx(0.603219, abs=1e-5)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277533, abs=1e-5)  # z^2/10 / (1 + z^2/10)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_hand_worked():
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only, result.both, result.neither, result.n) == (8, 2, 5, 5, 20)
    assert result.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)  # two-sided binomial, n=10, k<=2
    assert mcnemar_exact([1, 0], [1, 0]).p_value == 1.0  # no discordant pairs
    assert mcnemar_exact([True, True, True], [False, False, False]).p_value == pytest.approx(0.25)
    with pytest.raises(ValueError):
        mcnemar_exact([1], [1, 0])


def test_per_item_means_averages_repeats_and_ignores_nan():
    got = per_item_means([[1, 0], [1, 1, float("nan")], 0.25, [float("nan")]])
    assert got[:3].tolist() == [0.5, 1.0, 0.25] and math.isnan(got[3])


def test_bootstrap_ci_close_to_normal_approximation():
    scores = [1.0] * 70 + [0.0] * 30
    ci = bootstrap_ci(scores)
    half = 1.959964 * math.sqrt(0.7 * 0.3 / 100)
    assert ci.mean == pytest.approx(0.7) and ci.n == 100
    assert ci.low == pytest.approx(0.7 - half, abs=0.02) and ci.high == pytest.approx(0.7 + half, abs=0.02)
    assert ci["low"] == ci.low and ci.as_dict()["high"] == ci.high
    assert bootstrap_ci(scores, seed=1).low == pytest.approx(ci.low, abs=0.02)
    assert bootstrap_ci(scores) == ci  # deterministic for a seed
    narrow = bootstrap_ci(scores, confidence=0.5)
    assert ci.low < narrow.low < narrow.high < ci.high


def test_bootstrap_ci_degenerate_inputs():
    empty = bootstrap_ci([])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.low, empty.high))
    one = bootstrap_ci([0.4])
    assert (one.mean, one.low, one.high, one.n) == (0.4, 0.4, 0.4, 1)
    flat = bootstrap_ci([1.0] * 30)
    assert (flat.low, flat.high) == (1.0, 1.0)
    repeats = bootstrap_ci([[1, 0], [1, 1], [0, 0]])
    assert repeats.n == 3 and repeats.mean == pytest.approx(0.5)
    nan_items = bootstrap_ci([1.0, float("nan"), 0.0, [float("nan")]])
    assert nan_items.n == 2 and nan_items.mean == 0.5
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 0.0], confidence=1.5)


def test_bootstrap_ci_of_a_mapping_does_not_depend_on_collection_order():
    # Assets collect item scores in whatever order the store or the client returns them; the
    # interval must be a function of the scores, so the eval and the cost table agree.
    rng = random.Random(3)
    scores = {f"item-{i:03d}": float(rng.random() < 0.4) for i in range(50)}
    shuffled = dict(rng.sample(list(scores.items()), len(scores)))
    assert list(shuffled) != list(scores)
    ci = bootstrap_ci(scores)
    assert bootstrap_ci(shuffled) == ci
    assert ci == bootstrap_ci([scores[k] for k in sorted(scores)])
    assert per_item_means({"b": [1, 0], "a": 0.25}).tolist() == [0.25, 0.5]
    with pytest.raises(ValueError, match="same item ids"):
        paired_bootstrap_diff({"a": 1.0, "b": 0.0}, {"a": 1.0, "c": 0.0})


def test_paired_bootstrap_uses_the_same_items():
    rng = random.Random(0)
    b = [rng.random() for _ in range(60)]  # items differ a lot in difficulty
    a = [x + 0.05 + rng.uniform(-0.01, 0.01) for x in b]  # A is uniformly a bit better
    ci = paired_bootstrap_diff(a, b)
    assert ci.mean == pytest.approx(np.mean(a) - np.mean(b))
    assert 0.04 < ci.low < ci.mean < ci.high < 0.06  # pairing removes the item variance
    shifted = paired_bootstrap_diff([x + 0.1 for x in b], b)
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_diff([1, 0], [1])


def test_compare_verdicts():
    frontier = [1.0] * 40 + [0.0] * 10
    win = compare([1.0] * 50, [1.0] * 20 + [0.0] * 30)
    assert win["verdict"] == "win" and win["ci_low"] > 0 and win["mcnemar_p"] < 0.001
    assert win["test"] == TEST_BINARY and win["ci_method"] == "newcombe"
    loss = compare([0.0] * 30 + [1.0] * 20, frontier)
    assert loss["verdict"] == "loss" and loss["ci_high"] < 0
    # 4 points worse on 50 items: not a loss (p = 0.5), and not shown to be within 2 points either.
    unclear = compare([1.0] * 38 + [0.0] * 12, frontier)
    assert unclear["verdict"] == "inconclusive" and unclear["ci_low"] < -0.02 < 0 <= unclear["ci_high"]
    assert unclear["diff"] == pytest.approx(-0.04) and unclear["n"] == 50
    assert unclear["student_mean"] == pytest.approx(0.76) and unclear["frontier_mean"] == pytest.approx(0.8)
    assert unclear["mcnemar_p"] == pytest.approx(0.5) and unclear["discordant"] == (0, 2)


def test_sparse_binary_wins_need_mcnemar_significance():
    """The review's case: on 50 items, 3 (or 4) discordant pairs all favouring the student. The
    paired bootstrap calls that a win; the exact McNemar test says p = 0.25 (0.125)."""
    for k, p in ((3, 0.25), (4, 0.125)):
        student = [1.0] * k + [1.0] * 30 + [0.0] * (20 - k)
        frontier = [0.0] * k + [1.0] * 30 + [0.0] * (20 - k)
        assert paired_bootstrap_diff(student, frontier).low > 0  # what the old verdict used
        result = compare(student, frontier)
        assert result["mcnemar_p"] == pytest.approx(p)
        assert result["verdict"] != "win"
    six = compare([1.0] * 36 + [0.0] * 14, [0.0] * 6 + [1.0] * 30 + [0.0] * 14)
    assert six["verdict"] == "win" and six["mcnemar_p"] == pytest.approx(2 / 64)


def test_a_verdict_names_both_where_the_exact_test_and_the_interval_disagree():
    """smart_home's constrained-teacher student vs seed-only (2026-12-02): 34/50 vs 40/50, 1 item
    better and 7 worse. Newcombe's interval lies below 0, exact McNemar gives p = 0.070: the verdict
    stays with the test (inconclusive) and says that the interval disagrees."""
    student = [1.0] * 1 + [0.0] * 7 + [1.0] * 33 + [0.0] * 9
    seed_only = [0.0] * 1 + [1.0] * 7 + [1.0] * 33 + [0.0] * 9
    result = compare(student, seed_only)
    assert result["discordant"] == (1, 7) and result["mcnemar_p"] == pytest.approx(18 / 256)
    assert result["ci_high"] < 0 and result["verdict"] == "inconclusive"
    assert "lies below 0" in result["verdict_note"] and "p = 0.0703" in result["verdict_note"]
    # Where the two agree there is no note: a clear loss, a clear win, a tie.
    assert compare(seed_only[:8] * 3 + seed_only[8:], student[:8] * 3 + student[8:])["verdict_note"] is None
    assert compare([0.0] * 30 + [1.0] * 20, [1.0] * 40 + [0.0] * 10)["verdict_note"] is None
    assert compare(student, student)["verdict_note"] is None
    # Non-binary scores use the bootstrap for both: never a note.
    assert compare([0.5] * 10, [0.4] * 10)["verdict_note"] is None


def test_ten_points_worse_is_never_a_match():
    # 50 items, the student 10 points worse (5 discordant pairs, all against it): McNemar p = 0.0625,
    # so not a significant loss — but certainly not "matches" either.
    student = [0.0] * 5 + [1.0] * 30 + [0.0] * 15
    frontier = [1.0] * 5 + [1.0] * 30 + [0.0] * 15
    result = compare(student, frontier)
    assert result["verdict"] == "inconclusive" and result["ci_low"] < -0.1


def test_non_inferiority_within_the_margin():
    # 400 items, 2 discordant pairs each way: the difference is pinned near 0, well within 2 points.
    student = [1.0] * 2 + [0.0] * 2 + [1.0] * 300 + [0.0] * 96
    frontier = [0.0] * 2 + [1.0] * 2 + [1.0] * 300 + [0.0] * 96
    result = compare(student, frontier)
    assert result["verdict"] == "non_inferior" and -0.02 < result["ci_low"] < 0 < result["ci_high"]
    # The same data with a margin too tight to establish: inconclusive. A looser margin: non-inferior.
    assert compare(student, frontier, margin=0.005)["verdict"] == "inconclusive"
    small = compare(student[:60], frontier[:60])
    assert small["verdict"] == "inconclusive"  # 60 items cannot pin 2 points
    assert compare(student[:60], frontier[:60], margin=0.2)["verdict"] == "non_inferior"
    # Measurably worse but within a wide margin is non-inferior, not a loss.
    worse = compare([0.0] * 30 + [1.0] * 300 + [0.0] * 70, [1.0] * 30 + [1.0] * 300 + [0.0] * 70, margin=0.15)
    assert worse["mcnemar_p"] < 0.001 and worse["ci_high"] < 0 and worse["verdict"] == "non_inferior"
    with pytest.raises(ValueError, match="margin"):
        compare([1.0], [1.0], margin=-0.1)


def test_newcombe_interval_matches_published_value():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake, ch. 8: table [[59, 6], [16, 80]]
    # -> difference -0.0621, Newcombe square-and-add 95% CI (-0.1186, -0.0046).
    ci = newcombe_paired_diff(a_only=6, b_only=16, both=59, neither=80)
    assert ci.mean == pytest.approx(-0.0621, abs=5e-5)
    assert ci.low == pytest.approx(-0.1186, abs=5e-5) and ci.high == pytest.approx(-0.0046, abs=5e-5)
    assert ci.method == "newcombe" and ci.n == 161
    assert math.isnan(newcombe_paired_diff(0, 0, 0, 0).low)


def test_non_binary_scores_use_the_paired_bootstrap():
    rng = random.Random(1)
    frontier = [rng.random() for _ in range(80)]
    student = [min(1.0, x + 0.005 + rng.uniform(-0.005, 0.005)) for x in frontier]
    result = compare(student, frontier)
    assert result["test"] == TEST_BOOTSTRAP and result["mcnemar_p"] is None
    assert result["verdict"] == "win" and result["ci_low"] > 0
    slightly_worse = compare([x - 0.005 for x in frontier], frontier)
    assert slightly_worse["verdict"] == "non_inferior"
    much_worse = compare([x - 0.1 for x in frontier], frontier)
    assert much_worse["verdict"] == "loss"


def test_score_interval_is_wilson_for_binary_and_never_zero_width():
    zero = score_interval([0.0] * 96)
    assert zero.method == "wilson" and zero.low == 0.0
    assert zero.high == pytest.approx(wilson_interval(0, 96)[1]) and zero.high > 0.03
    assert bootstrap_ci([0.0] * 96).high == 0.0  # the zero-width interval it replaces
    seven = score_interval({f"q{i}": float(i < 7) for i in range(10)})
    assert (seven.low, seven.high) == pytest.approx(wilson_interval(7, 10))
    judged = score_interval([0.5, 1.0, 0.0, 0.25] * 10)
    assert judged.method == "bootstrap_bca" and judged.low < 0.4375 < judged.high


def test_verdict_labels():
    assert verdict_label("non_inferior", 0.02) == "non-inferior (δ 0.02)"
    assert verdict_label("win", 0.02) == "win" and verdict_label(None) == "–"


def test_compare_repeats_nan_and_empty():
    student = [[1, 1, 0]] * 20
    frontier = [[0, 0, 1]] * 20
    result = compare(student, frontier)
    assert result["verdict"] == "win" and result["mcnemar_p"] is None  # per-item means are not 0/1
    assert result["diff"] == pytest.approx(1 / 3) and result["test"] == TEST_BOOTSTRAP
    with_nan = compare([1.0, float("nan"), 1.0], [0.0, 1.0, 0.0])
    assert with_nan["n"] == 2 and with_nan["n_excluded"] == 1
    empty = compare([], [])
    assert empty["n"] == 0 and empty["verdict"] == "inconclusive" and math.isnan(empty["diff"])
    with pytest.raises(ValueError):
        compare([1.0], [1.0, 0.0])


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=40))
def test_compare_is_antisymmetric(pairs):
    a = [float(x) for x, _ in pairs]
    b = [float(y) for _, y in pairs]
    forward = compare(a, b, n_resamples=2000)
    backward = compare(b, a, n_resamples=2000)
    assert forward["diff"] == pytest.approx(-backward["diff"])
    assert forward["ci_low"] == pytest.approx(-backward["ci_high"])
    assert (forward["verdict"] == "win") == (backward["verdict"] == "loss")
    assert forward["mcnemar_p"] == pytest.approx(backward["mcnemar_p"])
