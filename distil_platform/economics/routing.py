"""Routing: "route between both", measured. Per task, from stored results only (zero model calls),
the cost and accuracy of serving every request with the student, with one comparison model, or with
a **cascade**: the student answers, and items whose confidence is below a threshold τ are escalated
to model M.

Student confidence (:func:`answer_confidence`), from the token log-probabilities the served
student returns (vLLM's OpenAI server with ``logprobs``; a backend that returns none gives None):

- classification: the probability of the emitted label, ``exp(sum of the answer's token
  logprobs)`` (the chain-rule probability of that label's token sequence; it is the label's
  probability under the model, up to other tokenisations of the same label);
- text2sql and tool calling: the weakest token's probability, ``exp(min logprob)``: one wrong
  token (a column name, an argument value) breaks execution match or tool-call equivalence;
- open-book QA and generation: the geometric-mean token probability, ``exp(mean logprob)``
  (length-normalised: long answers have many legitimately uncertain tokens).

Only the answer's tokens count: a ``<think>…</think>`` block, whitespace-only tokens and special
tokens (``<|im_end|>``) are left out. An item without confidence (failed request, no logprobs) is
always escalated.

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

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.economics.costs import STAGE_BASELINES, STAGE_FRONTIER, STAGE_STUDENT_EVAL

DEFAULT_DAILY_REQUESTS = 1_000_000.0
DEFAULT_MARGIN = 0.02  # used when the task states no margin
DEFAULT_FOLDS = 2
SWEEP_QUANTILES = tuple(round(q / 10, 1) for q in range(11))

_SPECIAL_TOKEN = re.compile(r"^<\|[^|]*\|>$|^</?s>$")


class RoutingError(RuntimeError):
    """Routing cannot be computed (the message says what is missing and which asset makes it)."""


# -- confidence ---------------------------------------------------------------------------------
CONFIDENCE_RULES = {
    "classification": "label probability exp(Σ logprob)",
    "text2sql": "weakest-token probability exp(min logprob)",
    "tool_calling": "weakest-token probability exp(min logprob)",
    "open_book_qa": "geometric-mean token probability exp(mean logprob)",
    "generation": "geometric-mean token probability exp(mean logprob)",
}


def _answer_logprobs(tokens: Sequence[Mapping[str, Any]]) -> list[float]:
    """Logprobs of the answer's tokens: after a ``</think>`` (if any), without whitespace-only or
    special tokens."""
    texts = [str(t.get("token") or "") for t in tokens]
    start = 0
    joined = ""
    for i, text in enumerate(texts):
        joined += text
        if "</think>" in joined:
            start, joined = i + 1, ""
    out = []
    for tok, text in zip(tokens[start:], texts[start:]):
        if not text.strip() or _SPECIAL_TOKEN.match(text.strip()):
            continue
        lp = tok.get("logprob")
        if lp is None:
            continue
        lp = float(lp)
        if math.isnan(lp):
            continue
        out.append(max(lp, -1e4))  # vLLM reports -9999.0 for impossible tokens; -inf would poison sums
    return out


def answer_confidence(task_type: str, logprobs: Sequence[Mapping[str, Any]] | None) -> float | None:
    """Confidence in [0, 1] of one answer from its tokens' ``logprobs.content`` (see the module
    docstring for the rule per task type). None when there are no logprobs or no answer tokens."""
    if not logprobs:
        return None
    values = _answer_logprobs(logprobs)
    if not values:
        return None
    if task_type == "classification":
        return math.exp(sum(values))
    if task_type in ("text2sql", "tool_calling"):
        return math.exp(min(values))
    return math.exp(sum(values) / len(values))


def confidence_fn(task_type: str) -> Callable[[Any], float | None]:
    """``ChatResult -> confidence`` for :func:`distil_platform.evaluation.evaluate.client_answer_fn`."""
    def confidence(result: Any) -> float | None:
        return answer_confidence(task_type, getattr(result, "logprobs", None))

    return confidence


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


def pricing_from_cost_row(row: Mapping[str, Any]) -> Pricing:
    """A model's :class:`Pricing` from its cost-table row (self-hosted capacity recovered from the
    row's $/hour and $/M requests, so it matches whatever rate the cost table priced at)."""
    cost = row.get("usd_per_million_requests")
    cost = None if cost is None or (isinstance(cost, float) and math.isnan(cost)) else float(cost)
    if row.get("cost_basis") == "api":
        return Pricing(usd_per_million=cost, note=row.get("cost_note") or "")
    hour = row.get("usd_per_hour")
    capacity = hour * 1e6 / (3600.0 * cost) if hour and cost else None
    return Pricing(usd_per_million=cost, self_hosted=True, usd_per_hour=hour, capacity_rps=capacity,
                   note=row.get("cost_note") or "")


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


# -- cascades -----------------------------------------------------------------------------------
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
        out["fold_taus"] = None if self.fold_taus is None else {str(k): _finite(v) for k, v in self.fold_taus.items()}
        out["tau"] = _finite(self.tau)
        return out


def _finite(v: float | None) -> float | str | None:
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
            "model": rec.model if rec else None, "tau": _finite(rec.tau) if rec else None,
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


def _usd(v: float | None) -> str:
    from distil_platform.economics.costs import fmt_usd

    return fmt_usd(v)


def _sentence(inputs: RoutingInputs, rec: Policy | None, best: Policy, n: int) -> str:
    vol = f"{inputs.daily_requests:,.0f} requests/day"
    if rec is None:
        return (f"{inputs.task}: no priced policy is non-inferior to the best single model ({best.model}, accuracy "
                f"{best.accuracy:.3f}); no recommendation at {vol}.")
    margin = f"within δ={inputs.margin:g}"
    saving = ""
    if best.usd_per_million_requests and rec.usd_per_million_requests is not None and rec is not best:
        saving = (f", {_usd(rec.usd_per_million_requests)} vs {_usd(best.usd_per_million_requests)} per million "
                  f"requests ({1 - rec.usd_per_million_requests / best.usd_per_million_requests:.0%} cheaper)")
    if rec.kind == "cascade":
        return (f"{inputs.task}: route — the student answers and items with confidence < τ={rec.tau:.3g} go to "
                f"{rec.model} ({rec.escalation_rate:.0%} escalated, cross-fitted accuracy {rec.accuracy:.3f} on {n} "
                f"items, non-inferior to {best.model} at {best.accuracy:.3f} {margin}){saving}, at {vol}.")
    if rec is best and rec.role in ("frontier", "mid_tier"):
        return (f"{inputs.task}: frontier only — {rec.model} (accuracy {rec.accuracy:.3f}, "
                f"{_usd(rec.usd_per_million_requests)}/M requests); nothing cheaper is non-inferior {margin} "
                f"on {n} items at {vol}.")
    who = "the student alone" if rec.kind == "student" else rec.model
    tail = "" if rec is best else f", non-inferior to {best.model} at {best.accuracy:.3f} {margin}"
    return (f"{inputs.task}: serve with {who} (accuracy {rec.accuracy:.3f}, {_usd(rec.usd_per_million_requests)}"
            f"/M requests{tail}){saving} on {n} items at {vol}.")


# -- from the results store ---------------------------------------------------------------------
def _item_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in rows:
        s = r.get("score")
        if s is None or (isinstance(s, float) and math.isnan(s)):
            continue
        acc.setdefault(str(r["item_id"]), []).append(float(s))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _latest_run(rows: Sequence[Mapping[str, Any]]) -> str | None:
    best = max(rows, key=lambda r: r["id"], default=None)
    return best["run_id"] if best else None


def task_margin(spec: Any) -> tuple[float, str]:
    """The task's non-inferiority margin δ and where it came from."""
    for name in ("noninferiority_margin", "margin"):
        value = getattr(spec, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), f"task spec ({name})"
    return DEFAULT_MARGIN, "default"


def gather_routing_inputs(store: Any, spec: Any, *, daily_requests: float = DEFAULT_DAILY_REQUESTS,
                          folds: int = DEFAULT_FOLDS, seed: int = 0, margin: float | None = None) -> RoutingInputs:
    """Everything routing needs, from the results store: the latest cost table (prices, and which
    eval run of each model it priced: ``eval_run_id``), and those runs' per-item scores and the
    student's confidence. Models the cost table has no answers for are listed in the notes."""
    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage.store import predictions

    task = spec.name
    table = latest_cost_table(store, task)
    if not table:
        from distil_platform.redact import hide_password

        raise RoutingError(f"{task}: no cost table in the results store ({hide_password(store.url)}); materialise {task}_cost_table")
    students = [r for r in table if r.get("role") == "student"]
    # The reference variant (the precision the eval ran in) is the table's first student row.
    student_row = students[0] if students else None
    if student_row is None:
        raise RoutingError(f"{task}: the cost table has no student row; re-materialise {task}_cost_table")

    def rows_of(stage: str, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        rows = store.select(predictions, task=task, stage=stage, model=row["model"])
        run = row.get("eval_run_id") or _latest_run(rows)
        return [r for r in rows if r["run_id"] == run]

    student_rows = rows_of(STAGE_STUDENT_EVAL, student_row)
    if not student_rows:
        raise RoutingError(f"{task}: no student predictions for {student_row['model']} (run "
                           f"{student_row.get('eval_run_id')}); materialise {task}_student_eval")
    notes: list[str] = []
    confidence: dict[str, float | None] = {}
    for r in sorted(student_rows, key=lambda r: (r.get("repeat") or 0)):
        c = r.get("confidence")
        confidence.setdefault(str(r["item_id"]), None if c is None or math.isnan(c) else float(c))
    student = ModelItems(label=student_row["model"], role="student", scores=_item_means(student_rows),
                         pricing=pricing_from_cost_row(student_row))

    models: list[ModelItems] = []
    unevaluated = []
    for row in table:
        if row.get("role") == "student":
            continue
        # Self-hosted comparisons answer in baseline_evals, API models in frontier_evals.
        rows = (rows_of(STAGE_BASELINES, row) or rows_of(STAGE_FRONTIER, row)) if row.get("n_items") else []
        if not rows:
            unevaluated.append(row["model"])
            continue
        models.append(ModelItems(label=row["model"], role=row.get("role") or "baseline", scores=_item_means(rows),
                                 pricing=pricing_from_cost_row(row)))
    api = [m for m in models if m.role in ("frontier", "mid_tier")]
    if models and not api:
        notes.append("only the zero-shot base has answers (no frontier API key set): routing compares the student "
                     "with it; set API keys to evaluate frontier models")
    if unevaluated:
        notes.append(f"not evaluated (no answers to route to): {', '.join(unevaluated)}")
    if margin is None:
        margin, source = task_margin(spec)
    else:
        source = "run config"
    return RoutingInputs(task=task, task_type=spec.type, student=student, confidence=confidence, models=models,
                         daily_requests=float(daily_requests), margin=float(margin), margin_source=source,
                         folds=folds, seed=seed, cost_table_id=str(student_row.get("table_id") or ""),
                         snapshot_hash=str(student_row.get("snapshot_hash") or ""), notes=notes)


# -- outputs ------------------------------------------------------------------------------------
POLICY_COLUMNS = ["name", "kind", "model", "role", "accuracy", "escalation_rate", "usd_per_million_requests",
                  "tau", "diff_vs_best", "lower_vs_best", "verdict_vs_best", "noninferior", "on_frontier", "eligible", "note"]


def policy_markdown(result: RoutingResult) -> str:
    from distil_platform.economics.stats import verdict_label

    lines = [("| policy | accuracy | escalated | $/M requests | τ (deploy) | Δ vs best [CI low] "
              f"| vs best (δ {result.margin:g}) | frontier |"), "|---|---|---|---|---|---|---|---|"]
    rec = result.recommendation
    for p in result.policies:
        tau = "–" if p.tau is None else ("−∞ (none)" if p.tau == -math.inf else "∞ (all)" if p.tau == math.inf
                                         else f"{p.tau:.3g}")
        if p.name == result.best_single:
            diff, verdict = "best single", "–"
        else:
            low = p.lower_vs_best
            diff = f"{p.diff_vs_best:+.3f}" + ("" if low is None or math.isnan(low) else f" [{low:+.3f}]")
            verdict = verdict_label(p.verdict_vs_best, result.margin)
        name = f"**{p.name}** (recommended)" if rec is not None and p is rec else p.name
        lines.append(f"| {name} | {p.accuracy:.3f} | {p.escalation_rate:.0%} | {_usd(p.usd_per_million_requests)} "
                     f"| {tau} | {diff} | {verdict} | {'★' if p.on_frontier else ''} |")
    return "\n".join(lines)


def _short(model: str | None) -> str:
    return (model or "").rsplit("/", 1)[-1]


def plot_routing(result: RoutingResult, path: Path) -> Path | None:
    """Accuracy against USD per million requests (log axis): single models, fitted cascades, the
    τ sweep per escalation model, the Pareto frontier highlighted, the recommendation circled."""
    pts = [p for p in result.policies + result.sweep
           if p.usd_per_million_requests is not None and p.usd_per_million_requests > 0]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"student": "tab:green", "frontier": "tab:red", "mid_tier": "tab:orange", "baseline": "tab:grey"}
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    by_model: dict[str, list[Policy]] = {}
    for p in result.sweep:
        if p.usd_per_million_requests:
            by_model.setdefault(p.model or "", []).append(p)
    for sweep in by_model.values():
        sweep = sorted(sweep, key=lambda p: p.escalation_rate)
        ax.plot([p.usd_per_million_requests for p in sweep], [p.accuracy for p in sweep], "-", lw=0.8, alpha=0.6,
                color="tab:blue", marker=".", ms=3)
    for p in result.policies:
        if not p.usd_per_million_requests:
            continue
        x, y = p.usd_per_million_requests, p.accuracy
        if p.kind == "cascade":
            if p.escalation_rate == 0.0:
                continue  # escalates nothing: the student's own point
            ax.plot([x], [y], marker="*", ms=11, color="tab:blue", ls="none")
            label = f"cascade→{_short(p.model)} ({p.escalation_rate:.0%})"
        else:
            ax.plot([x], [y], marker="o", ms=7, color=colours.get(p.role, "tab:purple"), ls="none")
            label = "student" if p.kind == "student" else _short(p.model)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    frontier = sorted([p for p in pts if p.on_frontier], key=lambda p: p.usd_per_million_requests)
    if frontier:
        ax.step([p.usd_per_million_requests for p in frontier], [p.accuracy for p in frontier], where="post",
                color="black", lw=1.8, alpha=0.8, label="Pareto frontier")
    rec = result.recommendation
    if rec is not None and rec.usd_per_million_requests:
        ax.plot([rec.usd_per_million_requests], [rec.accuracy], marker="o", ms=18, mfc="none", mec="black", mew=1.5,
                ls="none", label="recommended")
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.08)
    ax.set_xlabel(f"USD per million requests (log) at {result.daily_requests:,.0f} requests/day")
    ax.set_ylabel("accuracy (cascades cross-fitted)")
    ax.set_title(f"{result.task}: routing — cost vs accuracy (blue line: τ sweep)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_policies(result: RoutingResult, out_dir: Path) -> tuple[Path, Path]:
    """``routing_policies.parquet`` / ``.csv``: the main policies and the τ sweep (τ ±inf: escalate
    only items without confidence / everything)."""
    import polars as pl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{c: getattr(p, c) for c in POLICY_COLUMNS} for p in result.policies + result.sweep]
    schema = {c: (pl.Utf8 if c in ("name", "kind", "model", "role", "note", "verdict_vs_best") else
                  pl.Boolean if c in ("noninferior", "on_frontier", "eligible") else pl.Float64)
              for c in POLICY_COLUMNS}
    df = pl.DataFrame(rows, schema=schema)
    parquet, csv = out_dir / "routing_policies.parquet", out_dir / "routing_policies.csv"
    df.write_parquet(parquet)
    df.write_csv(csv)
    return parquet, csv


def store_routing(store: Any, result: RoutingResult, run_id: str) -> None:
    from distil_platform.storage.store import routing_results

    def clean(v: Any) -> Any:
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return _finite(v) if math.isinf(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    store.insert(routing_results, [{
        "task": result.task, "run_id": run_id, "cost_table_id": result.cost_table_id,
        "snapshot_hash": result.snapshot_hash, "summary": clean(result.summary()),
        "policies": clean([p.row() for p in result.policies]),
    }])


def latest_routing(store: Any, task: str) -> dict[str, Any] | None:
    """The summary of the most recent routing of ``task`` (None if never computed)."""
    from distil_platform.storage.store import routing_results

    rows = store.select(routing_results, task=task)
    if not rows:
        return None
    return max(rows, key=lambda r: r["id"])["summary"]


def routing_report_columns(store: Any, summary: Any) -> dict[str, str]:
    """The benchmark report's routing cells for one task (``report.TaskSummary``): the recommended
    route with its $/M requests, and its cost ratio against the report's best mid-tier model
    (mid-tier $/M ÷ route $/M). A routing computed on another cost table than the report's is
    marked stale; none yet says which asset to materialise."""
    task = summary.task
    r = latest_routing(store, task)
    if r is None:
        return {"recommended route": f"– (materialise {task}_routing)", "cost ratio (mid-tier ÷ route)": "–"}
    table_id = (summary.student or {}).get("table_id") if getattr(summary, "student", None) else None
    cost = r.get("usd_per_million_requests")
    daily = r.get("daily_requests")
    route = f"{r.get('route') or 'none non-inferior'}" + (
        f", {_usd(cost)}/M req" + (f" at {daily:,.0f} req/day" if daily else "") if cost is not None else "")
    if table_id and r.get("cost_table_id") != table_id:
        route += f" (stale: prices changed since; re-materialise {task}_routing)"
    elif not r.get("confidence_available"):
        route += " (no student confidence: cascades not computed)"
    mid = getattr(summary, "mid_tier", None) or {}
    mid_cost = mid.get("usd_per_million_requests")
    ratio = f"{mid_cost / cost:.3g}×" if mid_cost is not None and cost else "–"
    return {"recommended route": route, "cost ratio (mid-tier ÷ route)": ratio}
