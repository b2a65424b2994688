"""Cascades: the student answers, and items whose confidence is below a threshold τ are escalated
to another model. Scoring one cascade, fitting τ on a set of items, and cross-fitting τ over folds
(each fold scored with a τ fitted on the others); the policies built on them are in ``economics.routing``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def _escalated(conf: float | None, tau: float) -> bool:
    return conf is None or conf < tau


def cascade_scores(items: Sequence[str], student: Mapping[str, float], model: Mapping[str, float],
                   confidence: Mapping[str, float | None], tau: float) -> tuple[dict[str, float], dict[str, bool]]:
    """Per-item score and escalation flag of the cascade with threshold ``tau``."""
    scores, esc = {}, {}
    for i in items:
        e = _escalated(confidence.get(i), tau)
        esc[i] = e
        scores[i] = model[i] if e else student[i]
    return scores, esc


def _candidate_taus(confs: Sequence[float | None]) -> list[float]:
    """-inf (escalate only items without confidence), midpoints between distinct confidences,
    +inf (escalate all)."""
    values = sorted({c for c in confs if c is not None})
    mids = [(a + b) / 2 for a, b in itertools.pairwise(values)]
    return [-math.inf, *mids, math.inf]


def fit_tau(items: Sequence[str], student: Mapping[str, float], model: Mapping[str, float],
            confidence: Mapping[str, float | None], target: float) -> float:
    """On ``items`` only: the τ with the lowest escalation rate whose accuracy reaches ``target``;
    if none does, the most accurate τ (lowest escalation on ties)."""
    if not items:
        return -math.inf
    best_ok, best_any = None, None
    n = len(items)
    for tau in _candidate_taus([confidence.get(i) for i in items]):
        scores, esc = cascade_scores(items, student, model, confidence, tau)
        acc = sum(scores.values()) / n
        rate = sum(esc.values()) / n
        if acc >= target - 1e-12 and (best_ok is None or (rate, -acc) < best_ok[:2]):
            best_ok = (rate, -acc, tau)
        if best_any is None or (-acc, rate) < best_any[:2]:
            best_any = (-acc, rate, tau)
    return best_ok[2] if best_ok is not None else best_any[2]


def quantile_tau(items: Sequence[str], confidence: Mapping[str, float | None], q: float) -> float:
    """τ escalating about a fraction ``q`` of ``items`` (q = 0: none but those without confidence;
    q = 1: all)."""
    if q <= 0:
        return -math.inf
    if q >= 1:
        return math.inf
    import numpy as np

    confs = [confidence.get(i) for i in items]
    confs = [c for c in confs if c is not None]
    if not confs:
        return -math.inf
    return float(np.quantile(np.asarray(confs, dtype=float), q))


def assign_folds(items: Sequence[str], student: Mapping[str, float], folds: int | Mapping[str, int],
                 seed: int = 0) -> dict[str, int]:
    """Item -> fold. An explicit mapping is used as given; a count splits the items stratified by
    the student's correctness (score >= 0.5), in a seeded random order."""
    if isinstance(folds, Mapping):
        missing = [i for i in items if i not in folds]
        if missing:
            raise ValueError(f"fold assignment misses {len(missing)} item(s), e.g. {missing[:3]}")
        return {i: int(folds[i]) for i in items}
    k = int(folds)
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {k}")
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, int] = {}
    offset = 0
    for stratum in (True, False):
        group = sorted(i for i in items if (student[i] >= 0.5) is stratum)
        order = rng.permutation(len(group))
        for pos, idx in enumerate(order):
            out[group[idx]] = (pos + offset) % k
        offset += len(group)
    return out


@dataclass
class CrossFit:
    scores: dict[str, float]
    escalated: dict[str, bool]
    taus: dict[int, float]  # fold -> τ fitted on the other folds


def cross_fit_cascade(items: Sequence[str], student: Mapping[str, float], model: Mapping[str, float],
                      confidence: Mapping[str, float | None], fold_of: Mapping[str, int],
                      fit: Callable[[Sequence[str]], float]) -> CrossFit:
    """Score each fold's items with the τ that ``fit`` returns for the *other* folds' items."""
    scores: dict[str, float] = {}
    esc: dict[str, bool] = {}
    taus: dict[int, float] = {}
    for k in sorted(set(fold_of.values())):
        held = [i for i in items if fold_of[i] == k]
        train = [i for i in items if fold_of[i] != k]
        taus[k] = fit(train)
        s, e = cascade_scores(held, student, model, confidence, taus[k])
        scores.update(s)
        esc.update(e)
    return CrossFit(scores, esc, taus)
