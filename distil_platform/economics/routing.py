"""Routing: "route between both", measured. Per task, from stored results only (zero model calls),
the cost and accuracy of serving every request with the student, with one comparison model, or with
a **cascade**: the student answers, and items whose confidence is below a threshold τ are escalated
to model M.

Student confidence comes from :mod:`distil_platform.evaluation.confidence` (an item without
confidence is always escalated); τ is fitted and cross-fitted by :mod:`distil_platform.economics.cascade`.
This module is the pure computation (:func:`compute_routing`); :mod:`distil_platform.economics.routing_io`
gathers its inputs from the results store and writes and presents its result.

Policies and their numbers (:func:`compute_routing`), on the items every model scored, paired:

- ``student``, and ``model:<M>`` for every comparison model with answers;
- ``cascade:<M>`` per M, with τ **cross-fitted**: items are split into ``folds`` parts (stratified by
  the student's correctness, seeded); for each part τ is fitted on the other parts and applied to
  this one, so every reported item is scored with a τ that never saw it. Fitting rule: the lowest
  escalation rate whose accuracy on the fitting items reaches the best single model's accuracy on
  those items (else the most accurate τ); and ``cascade:<M> (max accuracy)``, the most accurate τ
  (lowest escalation on ties), listed when it differs. The τ to deploy is the same rule fitted on
  all items;
- a τ sweep per M (τ = the q-quantile of the fitting items' confidence, q = 0, 0.1, …, 1), also
  cross-fitted, drawn as a curve: shown, never recommended (picking the best of many sweep points
  on the scored items would be tuning on them).

Cost per request: the student serves every request on dedicated instances at a stated daily volume
V (``ceil(V / capacity) x 24 x $/hour / V``, capacity = the cost table's requests/s x 86400: an
instance costs its $/hour busy or not); an escalated API model adds ``escalation x its $/request``
(the cost table's measured tokens x snapshot prices); an escalated self-hosted model (the zero-shot
base) needs its own instances for ``escalation x V`` requests a day.

Recommendation: the cheapest policy non-inferior to the best single model (highest accuracy) within
the task's margin δ, by the report's verdict rule (``stats.compare``: exact McNemar + Newcombe CI
for 0/1 item scores, paired BCa bootstrap otherwise; non-inferior = win, or CI lower bound of
policy − best above −δ); "frontier only" when that is the best single model itself, an API model,
and nothing cheaper is non-inferior. Small test sets rarely show non-inferiority within 2 points
(400/400 vs 400/400 has a Newcombe lower bound of −0.0095; 40/40 vs 40/40 one of −0.088).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distil_platform.economics.cascade import assign_folds, cross_fit_cascade, fit_tau, quantile_tau
from distil_platform.economics.costs import fmt_usd

DEFAULT_DAILY_REQUESTS = 1_000_000.0
DEFAULT_MARGIN = 0.02  # used when the task states no margin
DEFAULT_FOLDS = 2
SWEEP_QUANTILES = tuple(round(q / 10, 1) for q in range(11))


class RoutingError(RuntimeError):
    """Routing cannot be computed (the message says what is missing and which asset makes it)."""


# -- costs --------------------------------------------------------------------------------------
def self_hosted_usd_per_million_at_volume(usd_per_hour: float, capacity_rps: float,
                                          requests_per_day: float) -> float:
    """USD per million requests of dedicated instances serving ``requests_per_day``: enough whole
    instances for the volume (each ``capacity_rps x 86400`` a day), each costing 24 x $/hour a day."""
    if capacity_rps <= 0:
        raise ValueError(f"capacity_rps must be positive, got {capacity_rps}")
    if requests_per_day <= 0:
        raise ValueError(f"requests_per_day must be positive, got {requests_per_day}")
    instances = max(1, math.ceil(requests_per_day / (capacity_rps * 86400.0) - 1e-9))
    return instances * 24.0 * usd_per_hour / requests_per_day * 1e6


@dataclass
class Pricing:
    """How one model is priced: an API at a fixed $/M requests, or self-hosted instances."""

    usd_per_million: float | None = None  # API: per request; self-hosted: the cost table's (full load)
    self_hosted: bool = False
    usd_per_hour: float | None = None
    capacity_rps: float | None = None  # the requests/s the cost table priced the instance at
    note: str = ""

    def per_million_of_total(self, share: float, daily_requests: float) -> float | None:
        """USD per million *total* requests when this model serves ``share`` of them."""
        if share <= 0:
            return 0.0
        if not self.self_hosted:
            return None if self.usd_per_million is None else share * self.usd_per_million
        if not self.usd_per_hour or not self.capacity_rps:
            return None
        return share * self_hosted_usd_per_million_at_volume(self.usd_per_hour, self.capacity_rps,
                                                             share * daily_requests)


# -- inputs -------------------------------------------------------------------------------------
@dataclass
class ModelItems:
    label: str
    role: str  # student / frontier / mid_tier / baseline
    scores: dict[str, float]  # item id -> mean score over repeats
    pricing: Pricing


@dataclass
class RoutingInputs:
    task: str
    task_type: str
    student: ModelItems
    confidence: dict[str, float | None]  # student's, by item id
    models: list[ModelItems]  # comparison models with answers
    daily_requests: float = DEFAULT_DAILY_REQUESTS
    margin: float = DEFAULT_MARGIN
    margin_source: str = "default"
    folds: int | Mapping[str, int] = DEFAULT_FOLDS  # count, or an explicit item -> fold assignment
    seed: int = 0
    cost_table_id: str = ""
    snapshot_hash: str = ""
    notes: list[str] = field(default_factory=list)


# -- non-inferiority ----------------------------------------------------------------------------
def versus_best(scores: Sequence[float], best: Sequence[float], margin: float) -> dict[str, Any]:
    """A policy against the best single model on the same items, by the report's own rule
    (``stats.compare``: exact McNemar + Newcombe CI for 0/1 scores, paired BCa bootstrap otherwise):
    non-inferior when the verdict is ``win`` or ``non_inferior`` (CI lower bound of the difference
    above −margin)."""
    from distil_platform.economics.stats import NON_INFERIOR, WIN, compare

    result = compare(list(scores), list(best), margin=margin)
    return {"diff": result["diff"], "lower": result["ci_low"], "verdict": result["verdict"],
            "test": result.get("test"), "noninferior": result["verdict"] in (WIN, NON_INFERIOR)}


# -- the computation ----------------------------------------------------------------------------
@dataclass
class Policy:
    name: str
    kind: str  # student / single / cascade / sweep
    model: str | None  # the single model, or the cascade's escalation target
    accuracy: float
    escalation_rate: float
    usd_per_million_requests: float | None
    tau: float | None = None  # cascades: τ fitted on all items (deploy); sweeps: the quantile q
    fold_taus: dict[int, float] | None = None
    role: str = ""
    eligible: bool = True
    scores: dict[str, float] = field(default_factory=dict, repr=False)
    diff_vs_best: float | None = None
    lower_vs_best: float | None = None  # CI lower bound of (policy − best single)
    verdict_vs_best: str | None = None  # stats.compare's verdict of the policy against the best single
    noninferior: bool | None = None
    on_frontier: bool = False
    note: str = ""

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("scores")
        out["fold_taus"] = None if self.fold_taus is None else {str(k): finite(v) for k, v in self.fold_taus.items()}
        out["tau"] = finite(self.tau)
        return out


def finite(v: float | None) -> float | str | None:
    """``v`` with ±inf written as ``"inf"`` / ``"-inf"`` (for JSON: the store, metadata)."""
    if v is None:
        return None
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    return v


@dataclass
class RoutingResult:
    task: str
    n_items: int
    policies: list[Policy]
    sweep: list[Policy]
    best_single: str | None
    recommendation: Policy | None
    sentence: str
    confidence_available: bool
    daily_requests: float
    margin: float
    margin_source: str
    notes: list[str]
    cost_table_id: str = ""
    snapshot_hash: str = ""

    def summary(self) -> dict[str, Any]:
        rec = self.recommendation
        best = next((p for p in self.policies if p.name == self.best_single), None)
        return {
            "task": self.task, "n_items": self.n_items, "best_single": self.best_single,
            "best_single_usd_per_million": best.usd_per_million_requests if best else None,
            "best_single_accuracy": best.accuracy if best else None,
            "recommended": rec.name if rec else None, "kind": rec.kind if rec else None,
            "route": route_label(rec, best) if rec else None,
            "model": rec.model if rec else None, "tau": finite(rec.tau) if rec else None,
            "accuracy": rec.accuracy if rec else None, "escalation_rate": rec.escalation_rate if rec else None,
            "usd_per_million_requests": rec.usd_per_million_requests if rec else None,
            "savings_vs_best_single": (1 - rec.usd_per_million_requests / best.usd_per_million_requests
                                       if rec and best and rec.usd_per_million_requests is not None
                                       and best.usd_per_million_requests else None),
            "sentence": self.sentence, "confidence_available": self.confidence_available,
            "daily_requests": self.daily_requests, "margin": self.margin, "margin_source": self.margin_source,
            "notes": list(self.notes), "cost_table_id": self.cost_table_id, "snapshot_hash": self.snapshot_hash,
        }


def route_label(rec: Policy | None, best: Policy | None) -> str:
    if rec is None:
        return "–"
    if rec.kind == "cascade":
        return f"cascade → {rec.model} (τ={rec.tau:.3g}, {rec.escalation_rate:.0%} escalated)"
    if rec.kind == "student":
        return "student only"
    if best is not None and rec.name == best.name and rec.role in ("frontier", "mid_tier"):
        return f"frontier only ({rec.model})"
    return f"{rec.model} only"


def _mean(scores: Mapping[str, float], items: Sequence[str]) -> float:
    return sum(scores[i] for i in items) / len(items) if items else math.nan


def compute_routing(inputs: RoutingInputs) -> RoutingResult:
    """Every policy's accuracy, escalation rate and cost; the recommendation. Pure: no store."""
    notes = list(inputs.notes)
    student = inputs.student
    items = sorted(set(student.scores).intersection(*[set(m.scores) for m in inputs.models]))
    if not items:
        raise RoutingError(f"{inputs.task}: no test item was scored by the student and every comparison model")
    dropped = len(student.scores) - len(items)
    if dropped:
        notes.append(f"{dropped} student item(s) not scored by every comparison model are left out")
    V = inputs.daily_requests
    conf = {i: inputs.confidence.get(i) for i in items}
    confidence_available = any(c is not None for c in conf.values())
    student_cost = student.pricing.per_million_of_total(1.0, V)
    if student_cost is None:
        notes.append(f"the student has no price ({student.pricing.note or 'no throughput'}): "
                     "student and cascade policies are unpriced")

    policies: list[Policy] = [Policy(name="student", kind="student", model=student.label, role="student",
                                     accuracy=_mean(student.scores, items), escalation_rate=0.0,
                                     usd_per_million_requests=student_cost, scores={i: student.scores[i] for i in items})]
    for m in inputs.models:
        policies.append(Policy(name=f"model:{m.label}", kind="single", model=m.label, role=m.role,
                               accuracy=_mean(m.scores, items), escalation_rate=1.0,
                               usd_per_million_requests=m.pricing.per_million_of_total(1.0, V),
                               scores={i: m.scores[i] for i in items},
                               note="" if m.pricing.usd_per_million is not None else "no price"))
    singles = {p.name: p for p in policies}
    sweep: list[Policy] = []
    if not inputs.models:
        notes.append("no comparison model has answers: only the student-only policy")
    elif not confidence_available:
        notes.append("no student confidence recorded (the serving backend returned no token logprobs): "
                     "cascades skipped")
    else:
        fold_of = assign_folds(items, student.scores, inputs.folds, inputs.seed)
        all_models = [student, *inputs.models]

        def target(subset: Sequence[str]) -> float:
            return max(_mean(m.scores, subset) for m in all_models)

        for m in inputs.models:
            # Two fitting objectives: reach the best single model's accuracy at the lowest escalation
            # (what the recommendation needs), and the most accurate τ (a cascade can beat both models).
            objectives = {
                f"cascade:{m.label}": target,
                f"cascade:{m.label} (max accuracy)": lambda subset: math.inf,
            }
            seen_taus: list[dict[int, float]] = []
            for name, goal in objectives.items():
                def fit(subset: Sequence[str], m: ModelItems = m, goal=goal) -> float:
                    return fit_tau(subset, student.scores, m.scores, conf, goal(subset))

                cf = cross_fit_cascade(items, student.scores, m.scores, conf, fold_of, fit)
                if cf.taus in seen_taus:
                    continue  # the same cascade as the other objective
                seen_taus.append(cf.taus)
                rate = sum(cf.escalated.values()) / len(items)
                policies.append(Policy(
                    name=name, kind="cascade", model=m.label, role=m.role,
                    accuracy=_mean(cf.scores, items), escalation_rate=rate,
                    usd_per_million_requests=_cascade_cost(student_cost, m.pricing, rate, V),
                    tau=fit(items), fold_taus=cf.taus, scores=cf.scores,
                    note=("cross-fitted: each item scored with a τ fitted on the other folds to "
                          + ("reach the best single model's accuracy at the lowest escalation" if goal(items) != math.inf
                             else "maximise accuracy"))))
            for q in SWEEP_QUANTILES:
                sq = cross_fit_cascade(items, student.scores, m.scores, conf, fold_of,
                                       lambda subset, q=q: quantile_tau(subset, conf, q))
                srate = sum(sq.escalated.values()) / len(items)
                sweep.append(Policy(name=f"sweep:{m.label}@q={q:g}", kind="sweep", model=m.label, role=m.role,
                                    accuracy=_mean(sq.scores, items), escalation_rate=srate,
                                    usd_per_million_requests=_cascade_cost(student_cost, m.pricing, srate, V),
                                    tau=q, fold_taus=sq.taus, scores=sq.scores, eligible=False,
                                    note="τ = q-quantile of the fitting folds' confidence (cross-fitted)"))

    best = max(singles.values(), key=lambda p: (p.accuracy, -(p.usd_per_million_requests or math.inf)))
    for p in policies:
        if p is best:
            p.noninferior = True
            p.diff_vs_best = 0.0
            continue
        test = versus_best([p.scores[i] for i in items], [best.scores[i] for i in items], inputs.margin)
        p.diff_vs_best, p.lower_vs_best, p.verdict_vs_best, p.noninferior = (
            test["diff"], test["lower"], test["verdict"], test["noninferior"])
    for p in sweep:
        p.diff_vs_best = p.accuracy - best.accuracy
    _mark_frontier(policies + sweep)

    priced = [p for p in policies if p.eligible and p.noninferior and p.usd_per_million_requests is not None]
    rec = min(priced, key=lambda p: (p.usd_per_million_requests, -p.accuracy, p.escalation_rate), default=None)
    sentence = _sentence(inputs, rec, best, len(items))
    return RoutingResult(task=inputs.task, n_items=len(items), policies=policies, sweep=sweep,
                         best_single=best.name, recommendation=rec, sentence=sentence,
                         confidence_available=confidence_available, daily_requests=V, margin=inputs.margin,
                         margin_source=inputs.margin_source, notes=notes, cost_table_id=inputs.cost_table_id,
                         snapshot_hash=inputs.snapshot_hash)


def _cascade_cost(student_cost: float | None, pricing: Pricing, rate: float, V: float) -> float | None:
    extra = pricing.per_million_of_total(rate, V)
    return None if student_cost is None or extra is None else student_cost + extra


def _mark_frontier(policies: Sequence[Policy]) -> None:
    """Pareto frontier: no other policy is at most as expensive and strictly more accurate (or
    cheaper and at least as accurate)."""
    priced = [p for p in policies if p.usd_per_million_requests is not None]
    for p in priced:
        p.on_frontier = not any(
            (q.usd_per_million_requests <= p.usd_per_million_requests and q.accuracy > p.accuracy + 1e-12)
            or (q.usd_per_million_requests < p.usd_per_million_requests - 1e-12 and q.accuracy >= p.accuracy - 1e-12)
            for q in priced if q is not p)


def _sentence(inputs: RoutingInputs, rec: Policy | None, best: Policy, n: int) -> str:
    vol = f"{inputs.daily_requests:,.0f} requests/day"
    if rec is None:
        return (f"{inputs.task}: no priced policy is non-inferior to the best single model ({best.model}, accuracy "
                f"{best.accuracy:.3f}); no recommendation at {vol}.")
    margin = f"within δ={inputs.margin:g}"
    saving = ""
    if best.usd_per_million_requests and rec.usd_per_million_requests is not None and rec is not best:
        saving = (f", {fmt_usd(rec.usd_per_million_requests)} vs {fmt_usd(best.usd_per_million_requests)} "
                  f"per million requests ({1 - rec.usd_per_million_requests / best.usd_per_million_requests:.0%} cheaper)")
    if rec.kind == "cascade":
        return (f"{inputs.task}: route — the student answers and items with confidence < τ={rec.tau:.3g} go to "
                f"{rec.model} ({rec.escalation_rate:.0%} escalated, cross-fitted accuracy {rec.accuracy:.3f} on {n} "
                f"items, non-inferior to {best.model} at {best.accuracy:.3f} {margin}){saving}, at {vol}.")
    if rec is best and rec.role in ("frontier", "mid_tier"):
        return (f"{inputs.task}: frontier only — {rec.model} (accuracy {rec.accuracy:.3f}, "
                f"{fmt_usd(rec.usd_per_million_requests)}/M requests); nothing cheaper is non-inferior {margin} "
                f"on {n} items at {vol}.")
    who = "the student alone" if rec.kind == "student" else rec.model
    tail = "" if rec is best else f", non-inferior to {best.model} at {best.accuracy:.3f} {margin}"
    return (f"{inputs.task}: serve with {who} (accuracy {rec.accuracy:.3f}, "
            f"{fmt_usd(rec.usd_per_million_requests)}/M requests{tail}){saving} on {n} items at {vol}.")
