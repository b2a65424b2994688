"""Statistics for comparing a student with frontier models on the same test items.

Items are the unit of resampling: with repeated runs, scores are averaged per item first, so
repeats narrow each item's noise without pretending to be more items. NaN scores (unparseable
judge verdicts) are excluded: within an item, then items with no score at all.

Verdicts (:func:`compare`): for 0/1 scores the exact McNemar test decides superiority and
Newcombe's paired-Wilson interval bounds the difference; otherwise the paired BCa bootstrap does
both. "Matches" is non-inferiority: the interval's lower bound above −δ (the task's margin).
Published score intervals (:func:`score_interval`) are Wilson for 0/1 scores, bootstrap otherwise.
The gap closed (:func:`gap_closed`): (student − base) / (teacher − base) on the same items, with a
paired percentile bootstrap interval. See docs/metrics.md.
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
    # How the interval was computed: "bootstrap_bca" (percentile where BCa is undefined),
    # "wilson" (binary scores), "newcombe" (paired binary difference), "degenerate" (n <= 1 or
    # all-equal non-binary scores), "none" (no items).
    method: str = "bootstrap_bca"

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
        return BootstrapCI(math.nan, math.nan, math.nan, 0, confidence, "none")
    mean = float(scores.mean())
    if n == 1 or np.all(scores == scores[0]):
        return BootstrapCI(mean, mean, mean, n, confidence, "degenerate")
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
        return BootstrapCI(math.nan, math.nan, math.nan, 0, confidence, "none")
    diffs = a - b
    diff = float(diffs.mean())
    if n == 1 or np.all(diffs == diffs[0]):
        return BootstrapCI(diff, diff, diff, n, confidence, "degenerate")
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


def score_interval(
    item_scores: ItemScores, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> BootstrapCI:
    """The interval a score is published with: **Wilson** when every per-item score is 0/1 (so
    0/96 is [0, 0.038], never a zero-width [0, 0]), else the BCa bootstrap of :func:`bootstrap_ci`.
    ``method`` says which."""
    _check_confidence(confidence)
    scores = per_item_means(item_scores)
    scores = scores[~np.isnan(scores)]
    n = int(scores.size)
    if n and _is_binary(scores):
        k = int(scores.sum())
        low, high = wilson_interval(k, n, confidence)
        return BootstrapCI(k / n, low, high, n, confidence, "wilson")
    return bootstrap_ci(scores, confidence, n_resamples, seed)


def newcombe_paired_diff(a_only: int, b_only: int, both: int, neither: int,
                         confidence: float = 0.95) -> BootstrapCI:
    """CI of p(A) − p(B) for paired 0/1 outcomes: Newcombe's square-and-add interval from the two
    marginal Wilson intervals with the correlation correction (Newcombe 1998, method 10; Fagerland,
    Lydersen & Laake, *Statistical Analysis of Contingency Tables*, ch. 8). Good coverage for
    paired proportions where the bootstrap is anti-conservative (few discordant pairs)."""
    _check_confidence(confidence)
    counts = (a_only, b_only, both, neither)
    if min(counts) < 0:
        raise ValueError(f"newcombe_paired_diff needs non-negative counts, got {counts}")
    n = a_only + b_only + both + neither
    if n == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, 0, confidence, "none")
    a_right, b_right = both + a_only, both + b_only
    p1, p2 = a_right / n, b_right / n
    diff = (a_only - b_only) / n
    l1, u1 = wilson_interval(a_right, n, confidence)
    l2, u2 = wilson_interval(b_right, n, confidence)
    margins = (a_right, n - a_right, b_right, n - b_right)
    if 0 in margins:
        phi = 0.0
    else:
        cross = both * neither - a_only * b_only
        # Positive association is shrunk by n/2 (Newcombe's correction); negative is used as is.
        adjusted = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = adjusted / math.sqrt(math.prod(margins))
    low = diff - math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0.0))
    high = diff + math.sqrt(max((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0.0))
    return BootstrapCI(diff, max(low, -1.0), min(high, 1.0), n, confidence, "newcombe")


# Verdicts of the student against another model on the same items.
WIN, NON_INFERIOR, INCONCLUSIVE, LOSS = "win", "non_inferior", "inconclusive", "loss"
VERDICTS = (WIN, NON_INFERIOR, INCONCLUSIVE, LOSS)
# The default non-inferiority margin: 2 points of score (0.02 on the 0..1 scale).
DEFAULT_MARGIN = 0.02
TEST_BINARY = "exact McNemar + Newcombe CI"
TEST_BOOTSTRAP = "paired BCa bootstrap"


def verdict_label(verdict: str | None, margin: float | None = None) -> str:
    """How a verdict is printed: ``win``, ``non-inferior (δ 0.02)``, ``inconclusive``, ``loss``."""
    if verdict is None:
        return "–"
    if verdict == NON_INFERIOR:
        return f"non-inferior (δ {margin:g})" if margin is not None else "non-inferior"
    return verdict


def compare(
    student_items: ItemScores,
    frontier_items: ItemScores,
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = 10_000,
    margin: float = DEFAULT_MARGIN,
) -> dict[str, Any]:
    """Student vs another model on the same items (paired), with the difference student − model.

    - 0/1 scores on every item: superiority by the **exact McNemar test** (two-sided, at
      1 − ``confidence``), the difference's interval by **Newcombe**'s paired-Wilson method.
    - Otherwise (judge scores, repeats averaged per item): the **paired BCa bootstrap** CI; the
      student wins when the whole CI is above 0 and loses when it is below 0.

    Verdict: ``win`` (significantly better); else ``non_inferior`` when the CI's lower bound is
    above −``margin`` (the student is at most ``margin`` worse, at one-sided level
    (1 − confidence)/2); else ``loss`` (significantly worse); else ``inconclusive`` (the data cannot
    tell, including no items). ``mcnemar_p`` is the McNemar p-value for 0/1 scores, else None.
    ``verdict_note`` names both where the exact test and the interval disagree on 0 (e.g. 1 vs 7
    discordant pairs on 50 items: interval below 0, p = 0.070, verdict inconclusive), else None.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1) (a score difference), got {margin}")
    _check_confidence(confidence)
    student, frontier = _aligned(student_items, frontier_items)
    n = int(student.size)
    binary = n > 0 and _is_binary(student) and _is_binary(frontier)
    mcnemar = None
    if binary:
        mcnemar = mcnemar_exact(student, frontier)
        ci = newcombe_paired_diff(mcnemar.a_only, mcnemar.b_only, mcnemar.both, mcnemar.neither, confidence)
        significant = mcnemar.p_value < 1.0 - confidence
        better = significant and mcnemar.a_only > mcnemar.b_only
        worse = significant and mcnemar.a_only < mcnemar.b_only
        test = TEST_BINARY
    else:
        ci = paired_bootstrap_diff(student, frontier, confidence, n_resamples, seed)
        better = bool(n and ci.low > 0)
        worse = bool(n and ci.high < 0)
        test = TEST_BOOTSTRAP
    note = None
    if binary and (ci.low > 0 or ci.high < 0) != significant:
        # The two can disagree: the exact conditional test is conservative where discordant pairs
        # are few, Newcombe's interval holds its nominal level. The verdict follows the test (a
        # claim of superiority needs it), and says so.
        discordant = f"{mcnemar.a_only} vs {mcnemar.b_only} discordant pairs"
        if significant:
            note = (f"exact McNemar rejects (p = {mcnemar.p_value:.3g}, {discordant}) but the "
                    f"{confidence:.0%} interval [{ci.low:.3f}, {ci.high:.3f}] includes 0")
        else:
            side = "above" if ci.low > 0 else "below"
            note = (f"the {confidence:.0%} interval [{ci.low:.3f}, {ci.high:.3f}] lies {side} 0 but exact "
                    f"McNemar does not reject (p = {mcnemar.p_value:.3g}, {discordant}): not claimed")
    if n == 0:
        verdict = INCONCLUSIVE
    elif better:
        verdict = WIN
    elif ci.low > -margin:
        verdict = NON_INFERIOR
    elif worse:
        verdict = LOSS
    else:
        verdict = INCONCLUSIVE
    return {
        "n": n,
        "n_excluded": len(student_items) - n,
        "student_mean": float(student.mean()) if n else math.nan,
        "frontier_mean": float(frontier.mean()) if n else math.nan,
        "diff": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "ci_method": ci.method,
        "confidence": confidence,
        "margin": margin,
        "verdict": verdict,
        "test": test if n else "none",
        "mcnemar_p": mcnemar.p_value if mcnemar is not None else None,
        "discordant": (mcnemar.a_only, mcnemar.b_only) if mcnemar is not None else None,
        # Set where the exact test and the interval disagree on whether the difference is 0.
        "verdict_note": note,
    }


@dataclass(frozen=True)
class GapClosed:
    """(student − base) / (teacher − base) on the same items, with its paired bootstrap interval."""

    value: float  # NaN where undefined (no items, or the teacher does not beat the base)
    low: float
    high: float
    n: int
    student: float
    base: float
    teacher: float
    confidence: float = 0.95
    n_resamples: int = 0
    undefined_resamples: int = 0  # resamples in which the teacher did not beat the base (left out)
    # "paired percentile bootstrap"; "unbounded" (over (1 − confidence)/2 of the resamples undefined:
    # the teacher's lead over the base is too uncertain to bound the ratio); "undefined"; "none" (no items).
    method: str = "paired percentile bootstrap"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gap_closed(student_items: ItemScores, base_items: ItemScores, teacher_items: ItemScores,
               confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> GapClosed:
    """The share of the teacher's lead over the base that the student closed, on the items all three
    scored (aligned lists, or mappings over the same item ids; items with a NaN anywhere dropped).
    Interval: the items are resampled jointly (one index draw for all three models), the ratio taken
    per resample, and its percentiles read off; resamples where the teacher does not beat the base
    have no ratio and are counted in ``undefined_resamples``. Seeded: the same scores give the same
    interval."""
    _check_confidence(confidence)
    given = (student_items, base_items, teacher_items)
    if all(isinstance(x, Mapping) for x in given) and not (given[0].keys() == given[1].keys() == given[2].keys()):
        raise ValueError("gap_closed: the three models' scores must cover the same item ids")
    arrays = [per_item_means(x) for x in given]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"gap_closed: the scores must cover the same items: {[a.size for a in arrays]}")
    keep = ~(np.isnan(arrays[0]) | np.isnan(arrays[1]) | np.isnan(arrays[2]))
    s, b, t = (a[keep] for a in arrays)
    n = int(s.size)
    if n == 0:
        return GapClosed(math.nan, math.nan, math.nan, 0, math.nan, math.nan, math.nan, confidence, 0, 0, "none")
    means = float(s.mean()), float(b.mean()), float(t.mean())
    lead = means[2] - means[1]
    if lead <= 0:
        return GapClosed(math.nan, math.nan, math.nan, n, *means, confidence, 0, 0, "undefined")
    value = (means[0] - means[1]) / lead
    rng = np.random.default_rng(seed)
    ratios, undefined = [], 0
    for start in range(0, n_resamples, 1000):  # chunks: 1000 x n indices at a time
        idx = rng.integers(0, n, size=(min(1000, n_resamples - start), n))
        sm, bm, tm = s[idx].mean(axis=1), b[idx].mean(axis=1), t[idx].mean(axis=1)
        ok = tm - bm > 0
        undefined += int((~ok).sum())
        ratios.append((sm[ok] - bm[ok]) / (tm[ok] - bm[ok]))
    alpha = 1.0 - confidence
    if undefined > alpha / 2 * n_resamples:
        return GapClosed(value, math.nan, math.nan, n, *means, confidence, n_resamples, undefined, "unbounded")
    values = np.concatenate(ratios)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return GapClosed(value, float(low), float(high), n, *means, confidence, n_resamples, undefined)
