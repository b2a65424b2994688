"""Routing from planted per-item results whose right answer is known by hand: a calibrated student
(its unsure items are exactly its errors), a useless confidence, price changes that flip the
recommendation, cross-fitting that never fits τ on the items it scores; then the asset on a planted
store, the benchmark report's routing column, and a re-pricing that recomputes it."""

from __future__ import annotations

import math

import pytest
from test_costs import model_call_counter as _model_call_counter  # noqa: F401  (fixture: refuses and counts model calls)

from distil_platform.economics.cascade import assign_folds, cross_fit_cascade, fit_tau
from distil_platform.economics.routing import (
    ModelItems,
    Pricing,
    RoutingInputs,
    compute_routing,
    self_hosted_usd_per_million_at_volume,
    versus_best,
)
from distil_platform.evaluation.confidence import answer_confidence


def _tok(token: str, p: float) -> dict:
    return {"token": token, "logprob": math.log(p), "top_logprobs": []}


# -- confidence ---------------------------------------------------------------------------------
def test_confidence_rule_per_task_type():
    tokens = [_tok("card", 0.9), _tok("_arr", 0.5), _tok("ival", 0.8)]
    assert answer_confidence("classification", tokens) == pytest.approx(0.9 * 0.5 * 0.8)  # label probability
    assert answer_confidence("text2sql", tokens) == pytest.approx(0.5)  # weakest token
    assert answer_confidence("tool_calling", tokens) == pytest.approx(0.5)
    assert answer_confidence("generation", tokens) == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3))  # geometric mean


def test_confidence_ignores_think_block_whitespace_and_special_tokens():
    tokens = [_tok("<think>", 0.01), _tok("\n", 0.02), _tok("</think>", 0.03), _tok("\n\n", 0.04),
              _tok("refund", 0.7), _tok("<|im_end|>", 0.05)]
    assert answer_confidence("classification", tokens) == pytest.approx(0.7)
    assert answer_confidence("classification", None) is None
    assert answer_confidence("classification", []) is None
    assert answer_confidence("text2sql", [_tok(" ", 0.5)]) is None  # no answer tokens


# -- costs --------------------------------------------------------------------------------------
def test_self_hosted_cost_at_volume_counts_idle_instances():
    # One H100 at $2.40/h, 222 req/s: full (19,180,800/day) = the benchmark's $3.00/M requests.
    full = 222 * 86400
    assert self_hosted_usd_per_million_at_volume(2.40, 222, full) == pytest.approx(3.0031, rel=1e-3)
    # At 1M/day the same instance costs $57.60/day: $57.60 per million requests.
    assert self_hosted_usd_per_million_at_volume(2.40, 222, 1e6) == pytest.approx(57.6)
    # Just over one instance's capacity needs two.
    assert self_hosted_usd_per_million_at_volume(2.40, 222, full + 1) == pytest.approx(2 * 57.6 / (full + 1) * 1e6)


# -- planted per-item results -------------------------------------------------------------------
STUDENT_HOUR, STUDENT_RPS = 2.40, 222.0


def _student_pricing() -> Pricing:
    return Pricing(usd_per_million=3.0, self_hosted=True, usd_per_hour=STUDENT_HOUR, capacity_rps=STUDENT_RPS)


def _inputs(student_scores, confidence, models, *, daily=1e6, folds=2, margin=0.02, student_pricing=None):
    return RoutingInputs(task="t", task_type="classification",
                         student=ModelItems("student", "student", student_scores, student_pricing or _student_pricing()),
                         confidence=confidence, models=models, daily_requests=daily, margin=margin, folds=folds)


def _calibrated(n: int = 400, errors: int = 100):
    """Student wrong on the first ``errors`` items, with confidence 0.05-0.3 there and 0.6-0.99 elsewhere."""
    ids = [f"i{k:02d}" for k in range(n)]
    student = {i: float(k >= errors) for k, i in enumerate(ids)}
    conf = {i: (0.05 + 0.25 * k / errors if k < errors else 0.6 + 0.39 * (k - errors) / (n - errors))
            for k, i in enumerate(ids)}
    return ids, student, conf


def _policy(result, name):
    return next(p for p in result.policies if p.name == name)


def test_calibrated_student_cascade_reaches_frontier_accuracy_at_its_error_rate():
    ids, student, conf = _calibrated()
    frontier = ModelItems("frontier-m", "frontier", dict.fromkeys(ids, 1.0), Pricing(usd_per_million=1000.0))
    result = compute_routing(_inputs(student, conf, [frontier]))
    cascade = _policy(result, "cascade:frontier-m")
    assert cascade.accuracy == pytest.approx(1.0)  # the frontier's accuracy, cross-fitted
    assert cascade.escalation_rate == pytest.approx(100 / 400)  # = the student's error rate
    assert all(0.3 < t < 0.6 for t in cascade.fold_taus.values())  # every fitted τ falls in the gap
    assert 0.3 < cascade.tau < 0.6
    # $57.60/M for the student at 1M/day + 25% x $1000/M.
    assert cascade.usd_per_million_requests == pytest.approx(57.6 + 250.0)
    assert result.best_single == "model:frontier-m"
    assert result.recommendation is cascade and cascade.noninferior
    assert "route" in result.sentence and "25% escalated" in result.sentence
    assert _policy(result, "student").noninferior is False  # 0.75 vs 1.0 is not within 0.02
    assert cascade.on_frontier and _policy(result, "model:frontier-m").on_frontier is False


def test_useless_confidence_no_cascade_beats_the_better_single_model():
    # Five confidence levels, each holding the same mix of outcomes in each of two folds: escalating
    # by confidence escalates a random-like slice, so any cascade is a blend of the two models.
    pattern = [(1, 1)] * 6 + [(1, 0)] + [(0, 1)] * 3  # (student, model): 0.7 vs 0.9
    student, model, conf, folds = {}, {}, {}, {}
    for level in range(5):
        for fold in range(2):
            for k, (s, m) in enumerate(pattern):
                i = f"b{level}f{fold}k{k}"
                student[i], model[i], conf[i], folds[i] = float(s), float(m), 0.1 + 0.2 * level, fold
    frontier = ModelItems("frontier-m", "frontier", model, Pricing(usd_per_million=1000.0))
    result = compute_routing(_inputs(student, conf, [frontier], folds=folds))
    better = max(_policy(result, "student").accuracy, _policy(result, "model:frontier-m").accuracy)
    assert better == pytest.approx(0.9)
    cascades = [p for p in result.policies + result.sweep if p.kind in ("cascade", "sweep")]
    assert len(cascades) == 1 + 11  # the max-accuracy cascade is the same one here
    assert all(p.accuracy <= better + 1e-12 for p in cascades)
    fitted = _policy(result, "cascade:frontier-m")
    assert fitted.escalation_rate == pytest.approx(1.0)  # reaching 0.9 needs every item escalated
    assert fitted.usd_per_million_requests > 1000.0
    assert result.recommendation.name == "model:frontier-m"
    assert "frontier only" in result.sentence


def test_price_changes_flip_the_recommendation():
    ids, student, conf = _calibrated()

    def run(frontier_price: float, daily: float = 1e6):
        frontier = ModelItems("frontier-m", "frontier", dict.fromkeys(ids, 1.0), Pricing(usd_per_million=frontier_price))
        return compute_routing(_inputs(student, conf, [frontier], daily=daily))

    assert run(1000.0).recommendation.kind == "cascade"  # 57.6 + 250 < 1000
    # Frontier at $60/M: the cascade costs 57.6 + 15 = 72.6 > 60: frontier only.
    cheap = run(60.0)
    assert cheap.recommendation.name == "model:frontier-m" and "frontier only" in cheap.sentence
    # The same $60/M frontier, at 19.18M requests/day (the student instance full: $3.00/M): route again.
    busy = run(60.0, daily=STUDENT_RPS * 86400)
    assert busy.recommendation.kind == "cascade"
    assert busy.recommendation.usd_per_million_requests == pytest.approx(3.0031 + 15.0, rel=1e-3)


def test_student_recommended_when_it_is_the_best_and_cheapest():
    ids, student, conf = _calibrated(errors=0)
    weaker = ModelItems("frontier-m", "frontier", {i: float(k % 2) for k, i in enumerate(ids)},
                        Pricing(usd_per_million=1000.0))
    result = compute_routing(_inputs(student, conf, [weaker]))
    assert result.recommendation.name == "student" and "the student alone" in result.sentence


def test_cross_fitting_never_fits_tau_on_the_items_it_scores():
    ids, student, conf = _calibrated()
    model = dict.fromkeys(ids, 1.0)
    fold_of = assign_folds(ids, student, 2, seed=0)
    assert {fold_of[i] for i in ids} == {0, 1}
    assert sum(1 for i in ids[:100] if fold_of[i] == 0) == 50  # stratified: errors split evenly

    seen: list[set[str]] = []

    def fit(subset):
        seen.append(set(subset))
        return fit_tau(subset, student, model, conf, 1.0)

    base = cross_fit_cascade(ids, student, model, conf, fold_of, fit)
    for k, subset in zip(sorted(base.taus), seen, strict=True):
        assert not subset & {i for i in ids if fold_of[i] == k}  # fold k's τ saw none of fold k

    # Scramble fold 0's confidences: τ for fold 0 (fitted on fold 1) is unchanged; fold 1's moves.
    scrambled = dict(conf)
    for i in ids:
        if fold_of[i] == 0:
            scrambled[i] = 1.0 - conf[i]

    def fit2(subset):
        return fit_tau(subset, student, model, scrambled, 1.0)

    after = cross_fit_cascade(ids, student, model, scrambled, fold_of, fit2)
    assert after.taus[0] == base.taus[0]
    assert after.taus[1] != base.taus[1]


def test_missing_confidence_skips_cascades_and_says_so():
    ids, student, _ = _calibrated()
    frontier = ModelItems("frontier-m", "frontier", dict.fromkeys(ids, 1.0), Pricing(usd_per_million=1000.0))
    result = compute_routing(_inputs(student, dict.fromkeys(ids), [frontier]))
    assert not result.confidence_available
    assert [p.kind for p in result.policies] == ["student", "single"] and not result.sweep
    assert any("no student confidence" in n for n in result.notes)


def test_zero_shot_base_only_still_computes_every_policy():
    # The local profile: the zero-shot base is the only comparison model, right exactly where the
    # (calibrated) student is wrong, and self-hosted like the student.
    ids, student, conf = _calibrated()
    base = ModelItems("base (zero-shot)", "baseline", {i: float(k < 100) for k, i in enumerate(ids)},
                      _student_pricing())
    result = compute_routing(_inputs(student, conf, [base]))
    names = [p.name for p in result.policies]
    assert names == ["student", "model:base (zero-shot)", "cascade:base (zero-shot)",
                     "cascade:base (zero-shot) (max accuracy)"]
    assert len(result.sweep) == 11
    reach = _policy(result, "cascade:base (zero-shot)")
    assert reach.escalation_rate == 0.0 and reach.accuracy == pytest.approx(0.75)  # the student is the best single
    best = _policy(result, "cascade:base (zero-shot) (max accuracy)")
    assert best.accuracy == pytest.approx(1.0) and best.escalation_rate == pytest.approx(0.25)
    # The escalated 250k requests/day need their own instance: another $57.60/day on top of the student's.
    assert best.usd_per_million_requests == pytest.approx(2 * 57.6)
    assert result.recommendation.name == "student"  # cheapest among the non-inferior
    assert best.on_frontier and _policy(result, "student").on_frontier


def test_noninferiority_is_the_reports_rule():
    from distil_platform.economics.stats import compare

    same = versus_best([1.0] * 400, [1.0] * 400, 0.02)
    assert same["noninferior"] and same["verdict"] == "non_inferior"
    # 400/400 vs 400/400: Newcombe's lower bound is about −0.0095; with 40 items it is −0.088, so
    # 40 items cannot show non-inferiority within 2 points.
    assert not versus_best([1.0] * 40, [1.0] * 40, 0.02)["noninferior"]
    worse = [1.0] * 360 + [0.0] * 40
    result = versus_best(worse, [1.0] * 400, 0.02)
    assert not result["noninferior"] and result["verdict"] == compare(worse, [1.0] * 400, margin=0.02)["verdict"]


# -- the asset on a planted store ---------------------------------------------------------------
HAIKU = "anthropic/claude-haiku-4-5"
FLASH_LITE = "gemini/gemini-2.5-flash-lite"


def _plant_routing_store(store, spec, tmp_path, *, n: int = 400, errors: int = 100, confidence: bool = True):
    """cost_fixtures' task (seed set, throughput: one H100 at 222 req/s), then a student eval and a
    baseline run on ``n`` items: the student wrong on the first ``errors`` with low confidence,
    Haiku right everywhere (2 repeats), Flash Lite on every other item, the zero-shot base on 5."""
    from cost_fixtures import COMPLETION, DISTILLED, PROMPT, plant_task

    from distil_platform.storage.store import llm_requests, predictions, student_lineage

    info = plant_task(store, spec, tmp_path, student_lineage=DISTILLED)
    ids = [f"r{k:03d}" for k in range(n)]
    _, _, conf = _calibrated(n, errors)
    store.insert(predictions, [{"run_id": "student-run-2", "task": spec.name, "stage": "student_eval",
                                    "model": info["student"], "variant": "student", "item_id": i, "repeat": 0,
                                    "score": float(k >= errors),
                                    "confidence": conf[f"i{k:02d}"] if confidence else None}
                               for k, i in enumerate(ids)])
    base = f"{spec.student_base('local')} (zero-shot)"
    pred, reqs = [], []
    for model, tier, right in ((HAIKU, "frontier", lambda k: True), (FLASH_LITE, "mid_tier", lambda k: k % 2 == 0)):
        for rep in range(2):
            for k, i in enumerate(ids):
                pred.append({"run_id": "baseline-run-2", "task": spec.name, "stage": "baseline_evals", "model": model,
                                 "variant": tier, "item_id": i, "repeat": rep, "score": float(right(k)),
                                 "prompt_tokens": PROMPT, "completion_tokens": COMPLETION})
                reqs.append({"run_id": "baseline-run-2", "task": spec.name, "stage": "baseline_evals", "model": model,
                                 "prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "cached_prompt_tokens": 200})
    pred += [{"run_id": "baseline-run-2", "task": spec.name, "stage": "baseline_evals", "model": base, "variant": "zero_shot",
                  "item_id": i, "repeat": 0, "score": float(k < 5), "prompt_tokens": None, "completion_tokens": None}
             for k, i in enumerate(ids)]
    store.insert(predictions, pred)
    store.insert(llm_requests, reqs)
    store.insert(student_lineage, [{"run_id": "student-run-2", "task": spec.name, "stage": "student_eval",
                                    "model": info["student"], **DISTILLED}])
    info["runs"].update(student_eval="student-run-2", baseline_evals="baseline-run-2")
    return info


def _materialise(assets, instance):
    import dagster as dg
    from distil_platform.resources.store import ResultsStoreResource

    result = dg.materialize(assets, resources={"results_store": ResultsStoreResource()}, instance=instance)
    assert result.success
    return result


def _published(spec, info):
    """A Dagster instance holding what the runs that measured ``info``'s planted rows leave."""
    import dagster as dg
    from cost_fixtures import publish_planted

    instance = dg.DagsterInstance.ephemeral()
    publish_planted(instance, spec.name, info["runs"])
    return instance


def test_routing_asset_recommends_a_cascade_and_the_report_shows_it(tmp_path, _model_call_counter,  # noqa: F811
                                                                    monkeypatch):
    import json

    import yaml
    from distil_platform.assets.costs import build_shared_cost_assets, build_task_cost_assets
    from distil_platform.assets.routing import build_routing_asset

    from distil_platform.economics.pricing_file import DEFAULT_PRICING_FILE
    from distil_platform.economics.routing_io import latest_routing
    from distil_platform.storage.store import ResultsStore, llm_requests
    from distil_platform.tasks.spec import get_task

    store = ResultsStore()
    spec = get_task("text2sql")
    instance = _published(spec, _plant_routing_store(store, spec, tmp_path))
    n_requests = len(store.select(llm_requests))
    pricing, report = build_shared_cost_assets([spec.name])
    cost_assets = [a for a in build_task_cost_assets(spec) if a.key.path[0].endswith("_cost_table")]
    routing = build_routing_asset(spec)
    result = _materialise([pricing, *cost_assets, *routing], instance)
    md = result.asset_materializations_for_node("text2sql_routing")[0].metadata
    assert md["model_calls"].value == 0 and md["confidence_available"].value is True
    assert md["recommended_policy"].value == f"cascade:{HAIKU}"
    # One H100 at 1M requests/day: $57.60/M; 25% of requests to Haiku at $1070/M.
    assert md["recommended_usd_per_million_requests"].value == pytest.approx(57.6 + 0.25 * 1070.0)
    assert md["recommended_escalation_rate"].value == pytest.approx(0.25)
    assert md["recommended_accuracy"].value == pytest.approx(1.0)
    assert "data:image/png;base64," in md["pareto_plot"].value
    assert "(recommended)" in md["policies"].value
    assert "route" in md["recommendation"].value
    summary = latest_routing(store, "text2sql")
    assert summary["kind"] == "cascade" and summary["model"] == HAIKU

    rep = _materialise([report], instance).asset_materializations_for_node("benchmark_report")[0].metadata["report"].value
    assert f"cascade → {HAIKU}" in rep
    # With an object store for artefacts the plots are uploaded and the scratch directory removed on
    # leaving the block: the UI's copy of the report still carries them inline.
    import uuid

    monkeypatch.setenv("DISTIL_ARTIFACTS_URL", f"memory://report-{uuid.uuid4().hex[:8]}/artifacts")
    remote = _materialise([report], instance).asset_materializations_for_node("benchmark_report")[0].metadata
    assert remote["report"].value.count("](data:image/png;base64,") == 1
    assert remote["report_path"].value.startswith("memory://")
    monkeypatch.delenv("DISTIL_ARTIFACTS_URL")
    # Cost ratio against the best mid-tier model (Flash Lite, $102/M): 102 / 325.1.
    assert f"{102.0 / (57.6 + 267.5):.3g}×" in rep

    # Re-price: Haiku 100x cheaper ($10.70/M) makes the cascade ($60.28/M) dearer than Haiku alone.
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    for key in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
        data["models"][HAIKU][key] /= 100
    edited = tmp_path / "cheap_haiku.yaml"
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(edited))
    result = _materialise([pricing, *cost_assets, *routing], instance)
    md = result.asset_materializations_for_node("text2sql_routing")[0].metadata
    assert md["recommended_policy"].value == f"model:{HAIKU}"
    assert "frontier only" in md["recommendation"].value
    rep = json.dumps(_materialise([report], instance).asset_materializations_for_node("benchmark_report")[0]
                     .metadata["report"].value)
    assert f"frontier only ({HAIKU})" in rep
    assert _model_call_counter.n == 0 and len(store.select(llm_requests)) == n_requests


def test_routing_asset_without_confidence_or_frontier_says_so(tmp_path, _model_call_counter):  # noqa: F811
    # The local profile on a backend without logprobs: only the zero-shot base, no confidence.
    from cost_fixtures import DISTILLED, plant_task
    from distil_platform.assets.costs import build_task_cost_assets
    from distil_platform.assets.routing import compute_task_routing

    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage.store import ResultsStore

    store = ResultsStore()
    spec = get_task_text2sql()
    info = plant_task(store, spec, tmp_path, api_models={}, student_lineage=DISTILLED)
    _materialise([a for a in build_task_cost_assets(spec) if a.key.path[0].endswith("_cost_table")],
                 _published(spec, info))
    assert latest_cost_table(store, spec.name)
    out = compute_task_routing(spec, store, "r1")
    notes = " ".join(out["notes"])
    assert "only the zero-shot base" in notes and "no student confidence" in notes
    assert [p.kind for p in out["result"].policies] == ["student", "single"]
    assert out["result"].recommendation.name == "student"


def get_task_text2sql():
    from distil_platform.tasks.spec import get_task

    return get_task("text2sql")


def test_student_eval_wiring_requests_logprobs_and_stores_confidence():
    # client_answer_fn -> evaluate -> prediction_rows -> the store: the confidence of each answer
    # (here from recorded logprobs, as vLLM returns them) reaches predictions.confidence.
    from distil_platform.evaluation.confidence import confidence_fn
    from distil_platform.evaluation.evaluate import client_answer_fn, evaluate, prediction_rows
    from distil_platform.llm import ChatResult
    from distil_platform.storage.store import ResultsStore, predictions
    from distil_platform.tasks.spec import get_task

    spec = get_task("banking77")
    label = next(iter(spec.labels))
    rows = [{"id": "a", "question": "q1", "answer": label, "context": ""},
            {"id": "b", "question": "q2", "answer": label, "context": ""}]
    sent = []

    class RecordedClient:  # replays two recorded server replies; one without logprobs
        def chat_batch(self, requests):
            sent.extend(requests)
            common = {"text": label, "tool_calls": None, "prompt_tokens": 10, "completion_tokens": 2,
                      "tokens_counted": False, "latency_s": 0.1, "cost_usd": None, "cache_hit": False, "error": None}
            return [ChatResult(request=requests[0], logprobs=[_tok(label, 0.8)], **common),
                    ChatResult(request=requests[1], logprobs=None, **common)]

    results = evaluate(spec, rows, client_answer_fn(RecordedClient(), 0.0, 16, ["a", "b"], extra={"logprobs": True},
                                                    confidence=confidence_fn(spec.type)))
    assert all(r.extra == {"logprobs": True} for r in sent)
    assert [r.confidence for r in results] == [pytest.approx(0.8), None]
    store = ResultsStore()
    store.insert(predictions, prediction_rows(results, task="banking77", stage="student_eval", model="s", run_id="x"))
    stored = {r["item_id"]: r["confidence"] for r in store.select(predictions, run_id="x")}
    assert stored == {"a": pytest.approx(0.8), "b": None}


def test_unpriced_student_gives_no_recommendation_and_says_why():
    ids, student, conf = _calibrated()
    base = ModelItems("base (zero-shot)", "baseline", dict.fromkeys(ids, 0.0), Pricing(self_hosted=True))
    result = compute_routing(_inputs(student, conf, [base], student_pricing=Pricing(self_hosted=True,
                                                                                  note="no throughput profile")))
    assert result.recommendation is None and "no recommendation" in result.sentence
    assert any("no throughput profile" in n for n in result.notes)
    assert result.summary()["route"] is None
