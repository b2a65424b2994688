"""Cost formulas against hand-computed values, cost tables from a planted store, price sensitivity,
estimated rows for skipped frontier models, and a full re-pricing that makes zero model calls."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
import yaml
from cost_fixtures import (
    CACHED,
    COMPLETION,
    DISTILLED,
    PROMPT,
    plant_student_eval,
    plant_task,
    plant_throughput,
    publish_planted,
)
from cost_fixtures import test_rows as fixture_rows

from distil_platform.economics.cost_inputs import CostTableError, gather_cost_inputs
from distil_platform.economics.costs import (
    api_usd_per_request,
    break_even_requests_per_day,
    build_cost_table,
    latest_cost_table,
    self_hosted_usd_per_million_requests,
)
from distil_platform.economics.pricing import build_snapshot, store_snapshot
from distil_platform.economics.pricing_file import DEFAULT_PRICING_FILE, PricingError
from distil_platform.economics.stats import TEST_BINARY, wilson_interval
from distil_platform.storage.lineage import checkpoint_fingerprint, record_student_lineage
from distil_platform.storage.store import ResultsStore, predictions, student_lineage
from distil_platform.tasks.prompts import build_messages, format_answer
from distil_platform.tasks.spec import get_task

HAIKU = "anthropic/claude-haiku-4-5"
FLASH_LITE = "gemini/gemini-2.5-flash-lite"


def test_benchmark_self_hosted_figure():
    # The benchmark's own numbers: one H100 at $2.40/h serving 222 req/s sustained.
    assert round(self_hosted_usd_per_million_requests(2.40, 222), 2) == 3.00
    assert self_hosted_usd_per_million_requests(2.40, 222) == pytest.approx(2.40 / (3600 * 222) * 1e6)
    with pytest.raises(ValueError):
        self_hosted_usd_per_million_requests(2.40, 0)


def test_api_cost_hand_computed():
    # 800 uncached x $1/MTok + 200 cached x $0.10/MTok + 50 out x $5/MTok = $0.00107 per request.
    per_request = api_usd_per_request(1000, 50, 200, 1.00, 5.00, 0.10)
    assert per_request == pytest.approx(0.00107)
    assert per_request * 1e6 == pytest.approx(1070.0)
    assert api_usd_per_request(1000, 50, 0, 3.0, 15.0, 0.3) == pytest.approx(0.00375)


def test_break_even_volume():
    # A dedicated H100 costs 24 x 2.40 = $57.60/day; at $1070 per M requests the API costs that much
    # at 53,832 requests/day.
    assert break_even_requests_per_day(2.40, 1070.0, 3.0) == pytest.approx(57.6 / 0.00107)
    assert break_even_requests_per_day(2.40, 2.0, 3.0) is None  # API cheaper even at full load


@pytest.fixture
def planted(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    info = plant_task(store, spec, tmp_path)
    return store, spec, info


def _by_model(rows):
    return {r["model"]: r for r in rows}


def _count_tokens(model, messages=None, text=None):
    import litellm

    return litellm.token_counter(model=model, messages=messages) if messages else litellm.token_counter(
        model=model, text=text)


def test_cost_table_from_store(planted):
    store, spec, info = planted
    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    rows = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    by = _by_model(rows)
    student = by[info["student"]]
    assert student["role"] == "student" and student["cost_source"] == "measured"
    assert student["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 222) * 1e6)
    assert student["accuracy"] == pytest.approx(10 / 12)
    assert student["ci_low"] <= student["accuracy"] <= student["ci_high"]
    assert student["ci_method"] == "wilson"  # 0/1 item scores
    assert (student["ci_low"], student["ci_high"]) == pytest.approx(wilson_interval(10, 12))
    haiku = by[HAIKU]
    assert haiku["cost_source"] == "measured" and haiku["cost_basis"] == "api"
    assert (haiku["mean_prompt_tokens"], haiku["mean_completion_tokens"], haiku["mean_cached_prompt_tokens"]) == (
        PROMPT, COMPLETION, CACHED)  # the errored request is not a usage sample
    assert haiku["usd_per_million_requests"] == pytest.approx(1070.0)
    assert haiku["cost_ratio_vs_student"] == pytest.approx(1070.0 / student["usd_per_million_requests"])
    assert haiku["break_even_requests_per_day"] == pytest.approx(57.6 / 0.00107)
    # Same 10/12 on the same 12 items: 12 items cannot show the student within 2 points.
    assert haiku["student_result"] == "inconclusive" and haiku["accuracy_std"] == 0.0
    assert haiku["margin"] == spec.margin == 0.02 and haiku["verdict_test"] == TEST_BINARY
    flash = by[FLASH_LITE]
    # 800 x 0.10 + 200 x 0.01 + 50 x 0.40 = 102 USD per million requests.
    assert flash["usd_per_million_requests"] == pytest.approx(102.0)
    assert flash["student_result"] == "win"  # 10/12 vs 4/12 on the same items: McNemar 6:0, p = 1/32
    assert flash["mcnemar_p"] == pytest.approx(1 / 32) and flash["verdicts"]["bf16"]["verdict"] == "win"
    zero = by["smollm2-135m-instruct (zero-shot)"]
    assert zero["role"] == "baseline" and zero["cost_source"] == "estimated"
    assert zero["usd_per_million_requests"] == pytest.approx(student["usd_per_million_requests"])
    assert all(r["snapshot_hash"] == snapshot.hash for r in rows)


def test_skipped_frontier_models_get_estimated_rows(planted):
    store, spec, info = planted
    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    rows = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    by = _by_model(rows)
    skipped = {"anthropic/claude-sonnet-4-6", "openai/gpt-5-nano", "xai/grok-4"}  # in the YAML, not evaluated
    assert skipped <= set(by)
    sonnet = by["anthropic/claude-sonnet-4-6"]
    assert sonnet["cost_source"] == "estimated" and sonnet["accuracy"] is None and sonnet["n_items"] == 0
    prompts = [_count_tokens("anthropic/claude-sonnet-4-6", messages=build_messages(spec, r)) for r in info["rows"]]
    answers = [_count_tokens("anthropic/claude-sonnet-4-6", text=format_answer(spec, r["answer"])) for r in info["rows"]]
    assert sonnet["mean_prompt_tokens"] == pytest.approx(sum(prompts) / len(prompts))
    assert sonnet["mean_completion_tokens"] == pytest.approx(sum(answers) / len(answers))
    expected = (sum(prompts) / len(prompts) * 3.0 + sum(answers) / len(answers) * 15.0)
    assert sonnet["usd_per_million_requests"] == pytest.approx(expected)
    assert sonnet["student_result"] is None
    # A model the pricing file declares unpriced is shown as such, with the reason; never a silent gap.
    grok = by["xai/grok-4"]
    assert grok["usd_per_million_requests"] is None and grok["cost_note"].startswith("price unknown")
    assert "litellm" in grok["cost_note"]


def test_doubling_one_api_price_doubles_only_that_models_cost(planted, tmp_path):
    store, spec, _ = planted
    needed = [r.model for r in spec.comparison_models]
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    before = build_cost_table(gather_cost_inputs(store, spec), build_snapshot(models_needed=needed))
    for key in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
        data["models"][HAIKU][key] *= 2
    path = tmp_path / "doubled.yaml"
    path.write_text(yaml.safe_dump(data))
    after = build_cost_table(gather_cost_inputs(store, spec), build_snapshot(path, needed))
    b, a = _by_model(before), _by_model(after)
    assert a[HAIKU]["usd_per_million_requests"] == pytest.approx(2 * b[HAIKU]["usd_per_million_requests"])
    assert a[HAIKU]["cost_ratio_vs_student"] == pytest.approx(2 * b[HAIKU]["cost_ratio_vs_student"])
    assert a[HAIKU]["break_even_requests_per_day"] == pytest.approx(b[HAIKU]["break_even_requests_per_day"] / 2)
    changed_cols = {"usd_per_million_requests", "cost_ratio_vs_student", "break_even_requests_per_day",
                    "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "snapshot_hash"}
    for model, row in b.items():
        for col, value in row.items():
            if col == "snapshot_hash" or (model == HAIKU and col in changed_cols):
                continue
            assert a[model][col] == value, (model, col)


def test_cpu_student_without_sustained_rate_is_priced_at_max_throughput_as_estimate(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    plant_task(store, spec, tmp_path, sustained_rps=0.0, max_achieved_rps=0.5, hardware_key="cpu-2core")
    rows = build_cost_table(gather_cost_inputs(store, spec), build_snapshot())
    student = next(r for r in rows if r["role"] == "student")
    assert student["cost_source"] == "estimated" and "SLO" in student["cost_note"]
    # $0.10/h for a 2-core instance at 0.5 req/s.
    assert student["usd_per_million_requests"] == pytest.approx(0.10 / (3600 * 0.5) * 1e6)
    assert student["hardware_key"] == "cpu-2core"


# -- Dagster: full re-pricing makes zero model calls ------------------------------------------
class _Calls:
    def __init__(self):
        self.n = 0


@pytest.fixture
def model_call_counter(monkeypatch):
    """Counts (and refuses) every way this code base could reach a model."""
    import aiohttp
    import httpx
    import litellm

    from distil_platform.serving import server as serving

    calls = _Calls()

    def refuse(*args, **kwargs):
        calls.n += 1
        raise AssertionError("a model was called during re-pricing")

    for name in ("completion", "acompletion", "text_completion", "atext_completion"):
        monkeypatch.setattr(litellm, name, refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)
    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)
    monkeypatch.setattr(aiohttp.ClientSession, "_request", refuse)  # the LLM client's fast path
    monkeypatch.setattr(serving, "serve", refuse)
    return calls


def _no_value(output) -> bool:
    """A MaterializeResult's output: Dagster's no-value sentinel, nothing for an IO manager."""
    return output is None or getattr(output, "__name__", "") == "NoValueSentinel"


def test_full_repricing_of_materialised_tasks_makes_zero_model_calls(tmp_path, model_call_counter, monkeypatch):
    from distil_platform.assets.costs import build_shared_cost_assets, build_task_cost_assets
    from distil_platform.resources.store import ResultsStoreResource

    store = ResultsStore()
    specs = [get_task("text2sql"), get_task("banking77")]
    instance = dg.DagsterInstance.ephemeral()
    for spec in specs:
        info = plant_task(store, spec, tmp_path, api_models={r.model: 6 for r in spec.comparison_models[:2]},
                          student_lineage=DISTILLED)
        publish_planted(instance, spec.name, info["runs"])  # what the measuring runs leave in Dagster
    assets = []
    for spec in specs:
        assets += [a for a in build_task_cost_assets(spec) if a.key.path[0].endswith("_cost_table")]
    assets += build_shared_cost_assets([s.name for s in specs])
    result = dg.materialize(assets, resources={"results_store": ResultsStoreResource()}, instance=instance)
    assert result.success
    assert model_call_counter.n == 0
    for spec in specs:
        rows = latest_cost_table(store, spec.name)
        assert rows and all(r["snapshot_hash"] for r in rows)
        mats = result.asset_materializations_for_node(f"{spec.name}_cost_table")
        md = mats[0].metadata
        assert md["model_calls"].value == 0
        df = pl.read_parquet(md["parquet_path"].value)
        assert df.height == len(rows)
        assert pl.read_csv(md["csv_path"].value).height == len(rows)
        # A MaterializeResult: no asset loads the table's value, so nothing is pickled for it.
        assert _no_value(result.output_for_node(f"{spec.name}_cost_table"))
    assert _no_value(result.output_for_node("benchmark_report"))
    assert set(result.asset_materializations_for_node("benchmark_report")[0].metadata["tasks"].value) == {
        "text2sql", "banking77"}

    # Re-price after a price edit: only the store is read; the haiku rows change, nothing is called.
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    data["models"][HAIKU]["output_per_mtok"] = 50.0
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(edited))
    before = {r["model"]: r for r in latest_cost_table(store, "text2sql")}
    result = dg.materialize(assets, resources={"results_store": ResultsStoreResource()}, instance=instance)
    assert result.success and model_call_counter.n == 0
    after = {r["model"]: r for r in latest_cost_table(store, "text2sql")}
    assert after[HAIKU]["usd_per_million_requests"] > before[HAIKU]["usd_per_million_requests"]
    assert after[HAIKU]["snapshot_hash"] != before[HAIKU]["snapshot_hash"]
    report = result.asset_materializations_for_node("benchmark_report")[0].metadata["report"].value
    assert "text2sql" in report and "banking77" in report
    # Each task's plot inline (the UI cannot follow the file's relative links), never a broken link.
    assert report.count("](data:image/png;base64,") == 2 and "cost_vs_accuracy.png)" not in report


def test_invalid_pricing_fails_the_run_and_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    from distil_platform.assets.costs import build_shared_cost_assets
    from distil_platform.resources.store import ResultsStoreResource

    from distil_platform.economics.pricing import current_snapshot

    store = ResultsStore()
    good = build_snapshot()
    store_snapshot(store, good, "earlier")
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    data["models"][HAIKU]["input_per_mtok"] = "free"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(bad))
    pricing = build_shared_cost_assets([])[0]
    result = dg.materialize([pricing], resources={"results_store": ResultsStoreResource()}, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert f"models.{HAIKU}.input_per_mtok" in failure and str(bad) in failure
    assert current_snapshot(store).hash == good.hash


def test_cost_table_ci_is_the_student_eval_ci():
    """The report and cost table must show the interval `<task>_student_eval` showed for the
    same scores, whatever order the store returns items in."""
    from distil_platform.economics.cost_inputs import EvaluatedModel
    from distil_platform.economics.costs import _summary
    from distil_platform.evaluation.evaluate import ItemResult
    from distil_platform.evaluation.summary import summarize

    scores = {f"q{i:02d}": float(i % 3 == 0) for i in range(40)}
    results = [ItemResult(item_id=k, repeat=0, prediction="p", reference="r", score=v, score_strict=v, parse_ok=True)
               for k, v in reversed(scores.items())]
    model = EvaluatedModel(label="student", role="student", variant="bf16", run_id="r1",
                           scores={k: [v] for k, v in scores.items()})
    evaluated, tabled = summarize(results), _summary(model)
    assert evaluated.score == pytest.approx(tabled["accuracy"])
    assert (evaluated.ci_low, evaluated.ci_high) == (tabled["ci_low"], tabled["ci_high"])
    assert evaluated.ci_low < evaluated.score < evaluated.ci_high


# -- lineage: every student row is tied to the checkpoint it measured ---------------------------
T2S_STUDENT = "text2sql-student-abc"  # what plant_task plants (eval run "student-run", throughput "tp-run")


def _student(rows, variant: str = "bf16"):
    return next(r for r in rows if r["role"] == "student" and r["variant"] == variant)


def test_retrained_student_is_never_priced_with_the_old_checkpoints_throughput(planted):
    store, spec, _ = planted
    # A retrained student (another served name, i.e. another checkpoint) is evaluated; only the old
    # checkpoint has a throughput profile.
    plant_student_eval(store, spec, "student-run-2", "text2sql-student-new", 11)
    rows = build_cost_table(gather_cost_inputs(store, spec), build_snapshot())
    student = _student(rows)
    assert student["model"] == "text2sql-student-new" and student["accuracy"] == pytest.approx(11 / 12)
    assert student["usd_per_million_requests"] is None and student["cost_ratio_vs_student"] is None
    assert "refused" in student["cost_note"] and T2S_STUDENT in student["cost_note"]
    # Once the new checkpoint is profiled, it is priced with that profile (not the older, faster one).
    plant_throughput(store, spec, "tp-run-2", "text2sql-student-new", sustained_rps=100.0)
    plant_throughput(store, spec, "tp-run-3", T2S_STUDENT, sustained_rps=500.0)  # a later run of the OLD one
    student = _student(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))
    assert student["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 100) * 1e6)
    assert "tp-run-2" in student["lineage"] and "unrecorded" in student["lineage"]


def test_recorded_lineage_matches_by_checkpoint_not_by_name(planted):
    store, spec, _ = planted
    same = {"student_run_id": "train-1", "checkpoint_fingerprint": "f" * 64, "use_synthetic": True}
    plant_student_eval(store, spec, "student-run-2", "served", 9, lineage=same)
    # Same served name, another checkpoint (retrained in place): refused.
    plant_throughput(store, spec, "tp-run-2", "served", lineage={**same, "checkpoint_fingerprint": "0" * 64})
    student = _student(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))
    assert student["usd_per_million_requests"] is None and "refused" in student["cost_note"]
    assert student["student_run_id"] == "train-1" and student["checkpoint_fingerprint"] == "f" * 64
    plant_throughput(store, spec, "tp-run-3", "served", sustained_rps=50.0, lineage=same)
    student = _student(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))
    assert student["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 50) * 1e6)
    assert student["lineage"].startswith("student run train-1, checkpoint ffffffffffff")


def test_the_student_row_is_named_and_priced_after_the_precision_that_ran(planted):
    """On a CPU without native bf16 the eval and the load test ran in fp32: the student row says fp32
    and is priced with the fp32 profile, never with a profile of another precision."""
    store, spec, _ = planted
    same = {"student_run_id": "train-fp32", "checkpoint_fingerprint": "a" * 64, "use_synthetic": True}
    plant_student_eval(store, spec, "eval-fp32", "served-fp32", 9, lineage={**same, "variant": "fp32"})
    plant_throughput(store, spec, "tp-bf16", "served-fp32", variants=("bf16",), sustained_rps=80.0, lineage=same)
    student = _student(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()), "fp32")
    assert student["usd_per_million_requests"] is None  # only a bf16 profile: not this student's cost
    plant_throughput(store, spec, "tp-fp32", "served-fp32", variants=("fp32",), sustained_rps=20.0, lineage=same)
    rows = build_cost_table(gather_cost_inputs(store, spec), build_snapshot())
    student = _student(rows, "fp32")
    assert student["sustained_rps"] == 20.0
    assert student["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 20) * 1e6)
    # The zero-shot base, self-hosted like the student, is estimated with the student's own profile.
    zero = next(r for r in rows if r["variant"] == "zero_shot")
    assert zero["usd_per_million_requests"] == pytest.approx(student["usd_per_million_requests"])


def test_seed_only_ablation_never_becomes_the_student(planted):
    store, spec, _ = planted
    distilled = {"student_run_id": "train-1", "checkpoint_fingerprint": "a" * 64, "use_synthetic": True}
    plant_student_eval(store, spec, "eval-distilled", "t2s-student-train-1", 10, lineage=distilled)
    plant_throughput(store, spec, "tp-distilled", "t2s-student-train-1", lineage=distilled)
    # The ablation is evaluated last.
    seed_only = {"student_run_id": "train-2", "checkpoint_fingerprint": "b" * 64, "use_synthetic": False}
    plant_student_eval(store, spec, "eval-seed-only", "t2s-student-train-2", 5, lineage=seed_only)
    by = _by_model(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))
    student = _student(by.values())
    assert student["model"] == "t2s-student-train-1" and student["usd_per_million_requests"] is not None
    ablation = by["t2s-student-train-2 (seed-only)"]
    assert ablation["role"] == "baseline" and ablation["variant"] == "seed_only"
    assert ablation["accuracy"] == pytest.approx(5 / 12) and "seed-only ablation" in ablation["lineage"]
    assert ablation["diff_vs_student"] == pytest.approx(5 / 12) and ablation["mcnemar_p"] == pytest.approx(1 / 16)


def test_only_a_seed_only_eval_is_refused(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    plant_student_eval(store, spec, "eval-seed-only", "t2s-student-x", 5,
                       lineage={"student_run_id": "x", "use_synthetic": False})
    with pytest.raises(CostTableError, match="seed-only ablation"):
        gather_cost_inputs(store, spec, test_rows=fixture_rows(spec))


def test_every_student_variant_gets_its_verdict(planted):
    store, spec, _ = planted
    # fp8 of the same checkpoint (same throughput run), one item worse than bf16.
    plant_throughput(store, spec, "tp-run-2", T2S_STUDENT, variants=("bf16", "fp8"), rps={"bf16": 222.0, "fp8": 260.0})
    plant_student_eval(store, spec, "tp-run-2", T2S_STUDENT, 9, stage="throughput_fp8", variant="fp8")
    rows = build_cost_table(gather_cost_inputs(store, spec), build_snapshot())
    by_variant = {r["variant"]: r for r in rows if r["role"] == "student"}
    fp8, bf16 = by_variant["fp8"], by_variant["bf16"]
    assert fp8["accuracy"] == pytest.approx(9 / 12) and fp8["lineage"] and "tp-run-2" in fp8["lineage"]
    assert fp8["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 260) * 1e6)
    flash = _by_model(rows)[FLASH_LITE]
    assert set(flash["verdicts"]) == {"bf16", "fp8"}
    assert flash["verdicts"]["fp8"]["diff"] == pytest.approx(9 / 12 - 4 / 12)
    assert flash["verdicts"]["bf16"]["verdict"] == flash["student_result"] == "win"
    assert bf16["verdicts"]["fp8"]["diff"] == pytest.approx(-1 / 12)  # fp8 vs bf16, on bf16's row


def test_scores_of_different_metrics_are_never_paired(tmp_path):
    store = ResultsStore()
    spec = get_task("hotpotqa")
    plant_task(store, spec, tmp_path, api_models={FLASH_LITE: 4})
    # The student was scored by the token-F1 fallback (no judge reachable) on its latest eval, the
    # API model by the judge: no item pairs, no verdict.
    plant_student_eval(store, spec, "student-run-2", "hotpotqa-student-abc", 10, metric="fallback:token_f1")
    store.insert(predictions, [dict(run_id="baseline-run-2", task="hotpotqa", stage="baseline_evals", model=FLASH_LITE,
                                    variant="mid_tier", item_id=r["id"], repeat=0, score=float(k < 4),
                                    metric="llm_judge" if k < 6 else "fallback:token_f1", prompt_tokens=10,
                                    completion_tokens=2) for k, r in enumerate(fixture_rows(spec))])
    by = _by_model(build_cost_table(gather_cost_inputs(store, spec, test_rows=fixture_rows(spec)), build_snapshot()))
    flash = by[FLASH_LITE]
    # Only the 6 items both scored with token F1 pair.
    assert flash["n_paired"] == 6 and flash["verdicts"]["bf16"]["n_metric_mismatch"] == 6
    assert flash["metric"] == "llm_judge (6), fallback:token_f1 (6)"
    assert by["hotpotqa-student-abc"]["metric"] == "fallback:token_f1"
    assert by["hotpotqa-student-abc"]["judge"] == spec.judge.model == "mistral/mistral-large-2512"


def test_cached_prompt_tokens_from_predictions_are_priced_at_the_cached_price(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    plant_task(store, spec, tmp_path, api_models={})
    # No llm_requests rows: usage comes from the predictions, whose cached tokens are billed cached.
    store.insert(predictions, [dict(run_id="b2", task="text2sql", stage="baseline_evals", model=HAIKU,
                                    variant="frontier", item_id=r["id"], repeat=0, score=1.0, prompt_tokens=1000,
                                    completion_tokens=50, cached_prompt_tokens=800) for r in fixture_rows(spec)])
    haiku = _by_model(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))[HAIKU]
    # 200 x $1 + 800 x $0.10 + 50 x $5 per MTok = $530 per million requests (not $1250 at full input price).
    assert haiku["mean_cached_prompt_tokens"] == 800 and haiku["usd_per_million_requests"] == pytest.approx(530.0)
    assert "cached" in haiku["cost_note"]


def test_temperature_0_rows_are_priced_and_tiered_as_their_model(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    plant_task(store, spec, tmp_path, api_models={FLASH_LITE: 4})
    label = FLASH_LITE + " @ temperature 0"
    store.insert(predictions, [dict(run_id="baseline-run", task="text2sql", stage="baseline_evals", model=label,
                                    variant="mid_tier@t0", item_id=r["id"], repeat=0, score=float(k < 5),
                                    prompt_tokens=PROMPT, completion_tokens=COMPLETION)
                               for k, r in enumerate(fixture_rows(spec))])
    row = _by_model(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))[label]
    assert row["role"] == "mid_tier" and row["variant"] == "mid_tier@t0" and row["accuracy"] == pytest.approx(5 / 12)
    assert row["input_usd_per_mtok"] == 0.10 and row["usd_per_million_requests"] == pytest.approx(120.0)


def test_a_snapshot_without_a_needed_price_is_an_error_naming_the_model(planted, tmp_path):
    store, spec, _ = planted
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    del data["models"][HAIKU]
    path = tmp_path / "no-haiku.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PricingError, match="claude-haiku-4-5"):
        build_cost_table(gather_cost_inputs(store, spec), build_snapshot(path))


def test_checkpoint_fingerprint_and_lineage_record(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"\x00" * (3 << 20))
    first = checkpoint_fingerprint(ckpt, chunk=1 << 20)
    assert first == checkpoint_fingerprint(ckpt, chunk=1 << 20)
    with (ckpt / "model.safetensors").open("r+b") as fh:  # retrained: other weights at the end
        fh.seek((3 << 20) - 10)
        fh.write(b"\x01")
    assert checkpoint_fingerprint(ckpt, chunk=1 << 20) != first
    store = ResultsStore()
    row = record_student_lineage(store, task="t", stage="student_eval", run_id="r1", model="t-student-x",
                                 student={"checkpoint_path": str(ckpt), "run_id": "train-9", "use_synthetic": False},
                                 variant="fp32")
    stored = store.select(student_lineage, run_id="r1")[0]
    assert stored["variant"] == "fp32"  # the precision that ran, which prices it
    assert stored["checkpoint_fingerprint"] == row["checkpoint_fingerprint"] == checkpoint_fingerprint(ckpt)
    assert stored["student_run_id"] == "train-9" and stored["use_synthetic"] is False


def test_monthly_refresh_that_falls_back_says_so_in_metadata(monkeypatch):
    import httpx
    from distil_platform.assets.costs import build_shared_cost_assets
    from distil_platform.resources.store import ResultsStoreResource

    def offline(*args, **kwargs):
        raise httpx.ConnectError("network unreachable")

    monkeypatch.setattr(httpx, "get", offline)
    pricing = build_shared_cost_assets([])[0]
    result = dg.materialize([pricing], resources={"results_store": ResultsStoreResource()},
                            run_config={"ops": {"pricing": {"config": {"refresh_hosted": True}}}})
    md = result.asset_materializations_for_node("pricing")[0].metadata
    assert md["refresh_fell_back"].value is True
    assert any("network unreachable" in w and "fell back" in w for w in md["warnings"].value)
    assert set(md["unpriced_models"].value) == {"xai/grok-4", "xai/grok-4-1-fast-reasoning"}
    assert "litellm bundled map" in md["model_prices"].value


def _comparable(rows):
    drop = {"eval_run_id", "table_id", "snapshot_as_of"}
    return sorted(({k: v for k, v in r.items() if k not in drop} for r in rows), key=lambda r: (r["model"], r["variant"]))


def test_api_rows_from_frontier_evals_price_exactly_like_the_legacy_layout(tmp_path):
    """API models answer in <task>_frontier_evals (stage frontier_evals) today; stores written before
    that asset hold them under baseline_evals. The cost table is the same either way."""
    spec = get_task("text2sql")
    snapshot = build_snapshot()
    tables = {}
    for layout, kw in {"legacy": {}, "split": {"api_stage": "frontier_evals", "api_run": "frontier-run"}}.items():
        (tmp_path / layout).mkdir()
        store = ResultsStore(f"sqlite:///{tmp_path / layout / 'results.db'}")
        plant_task(store, spec, tmp_path / layout, **kw)
        tables[layout] = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    assert {r["model"] for r in tables["split"]} >= {HAIKU, FLASH_LITE}
    assert _by_model(tables["split"])[HAIKU]["eval_run_id"] == "frontier-run"
    assert _comparable(tables["split"]) == _comparable(tables["legacy"])


def test_a_later_zero_shot_run_keeps_the_frontier_models(tmp_path):
    """Re-running only <task>_baseline_evals (a new run of stage baseline_evals) must not drop the API
    models measured by an earlier <task>_frontier_evals run, nor the other way round."""
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    spec = get_task("text2sql")
    plant_task(store, spec, tmp_path, api_stage="frontier_evals", api_run="frontier-run")
    base = f"{spec.student_base('local')} (zero-shot)"
    store.insert(predictions, [dict(run_id="baseline-run-2", task="text2sql", stage="baseline_evals", model=base,
                                    variant="zero_shot", item_id=r["id"], repeat=0, score=1.0)
                               for r in fixture_rows(spec)])
    by = _by_model(build_cost_table(gather_cost_inputs(store, spec), build_snapshot()))
    assert by[base]["eval_run_id"] == "baseline-run-2" and by[base]["accuracy"] == 1.0
    assert by[HAIKU]["eval_run_id"] == "frontier-run" and by[HAIKU]["accuracy"] == pytest.approx(10 / 12)
    assert by[FLASH_LITE]["usd_per_million_requests"] is not None


def test_a_verdict_where_the_exact_test_and_the_interval_disagree_says_so_in_the_table(tmp_path):
    """10/12 vs 6/12 on the same items: 4 discordant pairs, all for the student. Exact McNemar
    p = 0.125 (no win), Newcombe's interval above 0 (non-inferior): the row and its markdown name both."""
    from distil_platform.economics.costs import cost_table_markdown

    store, spec = ResultsStore(), get_task("text2sql")
    plant_task(store, spec, tmp_path, api_models={HAIKU: 6})
    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    haiku = _by_model(build_cost_table(gather_cost_inputs(store, spec), snapshot))[HAIKU]
    assert haiku["student_result"] == "non_inferior" and haiku["mcnemar_p"] == pytest.approx(0.125)
    assert haiku["diff_ci_low"] > 0 and "lies above 0 but exact McNemar does not reject" in haiku["verdict_note"]
    assert haiku["verdicts"]["bf16"]["verdict_note"] == haiku["verdict_note"]
    assert haiku["verdict_note"] in cost_table_markdown([haiku])
