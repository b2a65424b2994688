"""Statistics for comparing a student with frontier models on the same test items.

Items are the unit of resampling: with repeated runs, scores are averaged per item first, so
repeats narrow each item's noise without pretending to be more items. NaN scores (unparseable
judge verdicts) are excluded: within an item, then items with no score at all.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

ItemScores = Sequence[float] | Sequence[Sequence[float]] | Mapping[str, float | Sequence[float]]


class MeanStd(NamedTuple):
    mean: float
    std: float


@dataclass(frozen=True)
class BootstrapCI:
    """A bootstrap confidence interval; ``ci["low"]`` works as well as ``ci.low``."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class McNemarResult:
    p_value: float
    a_only: int  # items A got right and B wrong
    b_only: int  # items B got right and A wrong
    both: int
    neither: int

    @property
    def n(self) -> int:
        return self.a_only + self.b_only + self.both + self.neither

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def _scipy_stats():
    # scipy.stats takes ~1 s to import: only when a statistic is computed, not at Definitions load.
    from scipy import stats

    return stats


def per_item_means(item_scores: ItemScores) -> np.ndarray:
    """One score per item: floats pass through, a list of repeats becomes its NaN-ignoring mean
    (NaN when every repeat is NaN). A mapping ``item id -> score(s)`` is read in item-id order, so
    the same scores resample identically however they were collected (every asset shows one CI)."""
    if isinstance(item_scores, Mapping):
        item_scores = [item_scores[k] for k in sorted(item_scores)]
    out = np.empty(len(item_scores), dtype=float)
    for i, value in enumerate(item_scores):
        if isinstance(value, (list, tuple, np.ndarray)):
            arr = np.asarray(value, dtype=float)
            arr = arr[~np.isnan(arr)]
            out[i] = arr.mean() if arr.size else math.nan
        else:
            out[i] = math.nan if value is None else float(value)
    return out


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof=1) over repeated runs, NaNs ignored.

    One run has std 0.0; no runs give (NaN, NaN)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return MeanStd(math.nan, math.nan)
    return MeanStd(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0)


def _bootstrap(
    data: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int, seed: int, paired: bool
):
    """scipy's BCa interval, falling back to the percentile method where BCa is undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("BCa", "percentile"):
            result = _scipy_stats().bootstrap(
                data,
                statistic,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=method,
                paired=paired,
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
            if not (math.isnan(low) or math.isnan(high)):
                return low, high
    return math.nan, math.nan


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(
    item_scores: ItemScores, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> BootstrapCI:
    """Bootstrap CI of the mean score over items (``scipy.stats.bootstrap``, BCa).

    ``item_scores`` is one score per item, or a list of repeats per item (averaged per item
    first). No items give NaNs; one item or all-equal scores give the degenerate interval
    low = high = mean.
    """
    _check_confidence(confidence)
    scores = per_item_means(item_scores)
    scores = scores[~np.isnan(scores)]
    n = int(scores.size)
    if n == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(scores.mean())
    if n == 1 or np.all(scores == scores[0]):
        return BootstrapCI(mean, mean, mean, n, confidence)
    low, high = _bootstrap(
        (scores,), lambda x, axis: np.mean(x, axis=axis), confidence, n_resamples, seed, paired=False
    )
    return BootstrapCI(mean, low, high, n, confidence)


def _aligned(scores_a: ItemScores, scores_b: ItemScores) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(scores_a, Mapping) and isinstance(scores_b, Mapping) and scores_a.keys() != scores_b.keys():
        raise ValueError("paired scores must cover the same item ids")
    a, b = per_item_means(scores_a), per_item_means(scores_b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same items: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def paired_bootstrap_diff(
    scores_a: ItemScores,
    scores_b: ItemScores,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> BootstrapCI:
    """CI of mean(A) - mean(B) over the same items, resampling item indices jointly (paired).

    Items where either side is NaN are dropped. ``mean`` is the observed difference."""
    _check_confidence(confidence)
    a, b = _aligned(scores_a, scores_b)
    n = int(a.size)
    if n == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, 0, confidence)
    diffs = a - b
    diff = float(diffs.mean())
    if n == 1 or np.all(diffs == diffs[0]):
        return BootstrapCI(diff, diff, diff, n, confidence)
    low, high = _bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        confidence,
        n_resamples,
        seed,
        paired=True,
    )
    return BootstrapCI(diff, low, high, n, confidence)


def mcnemar_exact(correct_a: Sequence[Any], correct_b: Sequence[Any]) -> McNemarResult:
    """Exact McNemar test: a two-sided binomial test (p = 0.5) on the discordant pairs
    (``scipy.stats.binomtest``). p = 1.0 when there are no discordant pairs."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"mcnemar_exact: {len(correct_a)} vs {len(correct_b)} items")
    a = np.asarray(correct_a, dtype=float) > 0.5
    b = np.asarray(correct_b, dtype=float) > 0.5
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    both, neither = int(np.sum(a & b)), int(np.sum(~a & ~b))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(_scipy_stats().binomtest(a_only, discordant, 0.5).pvalue)
    return McNemarResult(p, a_only, b_only, both, neither)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (NaN, NaN) when n = 0."""
    _check_confidence(confidence)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    ci = _scipy_stats().binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0.0) | (values == 1.0)))


def compare(
    student_items: ItemScores,
    frontier_items: ItemScores,
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = 10_000,
) -> dict[str, Any]:
    """Student vs frontier on the same items: win / tie / loss by the paired bootstrap CI of the
    difference (student - frontier). ``win`` when the whole CI is above 0, ``loss`` when it is
    below 0, else ``tie`` (also with no items). Includes the exact McNemar p-value when every
    per-item score is 0/1, else None.
    """
    student, frontier = _aligned(student_items, frontier_items)
    ci = paired_bootstrap_diff(student, frontier, confidence, n_resamples, seed)
    if ci.n and ci.low > 0:
        verdict = "win"
    elif ci.n and ci.high < 0:
        verdict = "loss"
    else:
        verdict = "tie"
    binary = ci.n > 0 and _is_binary(student) and _is_binary(frontier)
    return {
        "n": ci.n,
        "n_excluded": len(student_items) - ci.n,
        "student_mean": float(student.mean()) if ci.n else math.nan,
        "frontier_mean": float(frontier.mean()) if ci.n else math.nan,
        "diff": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "confidence": confidence,
        "verdict": verdict,
        "mcnemar_p": mcnemar_exact(student, frontier).p_value if binary else None,
    }
